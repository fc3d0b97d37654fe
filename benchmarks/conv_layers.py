"""Where the convolution models' CPU time goes, and what faster convolutions could buy.

    python -m benchmarks.conv_layers                      # lenet cnn dcgan alexnet
    python -m benchmarks.conv_layers --cases cnn

For every convolution of a model's forward pass (recorded as the model runs: dlcore's
`nn.Conv`/`UpConv2x` modules, and the PyTorch original's `Conv2d`/`ConvTranspose2d` modules,
paired in call order), times that layer alone, forward + backward (the kernel's gradient, and
the input's where the step needs it) at the step's shapes: dlcore's layer jitted, PyTorch's
eager (oneDNN, the library PyTorch's CPU convolutions call). In the same process it times the
whole training step both ways. Then `bound` = dlcore step - dlcore convolutions + PyTorch
convolutions: the step dlcore would take if every convolution ran at PyTorch's speed, which
is the most an oneDNN kernel called through `jax.ffi` could give (it is the same library,
plus a call's overhead). Layer sums are estimates: inside a step XLA fuses around them.
Results: benchmarks/results/conv-layers-<machine>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import cases as bcases
from benchmarks.jit_vs_eager import Contestant, calibrate
from dlcore import models, xlaflags
from dlcore.models.layers import UpConv2x

CASES = ("lenet", "cnn", "dcgan", "alexnet")


def _median_ms(fn, min_time: float, rounds: int) -> float:
  fn()
  t0 = time.perf_counter()
  fn()
  n = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(n):
      fn()
    times.append(1e3 * (time.perf_counter() - t0) / n)
  return statistics.median(times)


def dlcore_convs(name: str, batch: int) -> list[tuple[nn.Module, tuple]]:
  """(module, input shape) of every convolution in `name`'s training forward pass."""
  model = models.build(name)
  xs = tuple(np.zeros((batch,) + a.shape[1:], a.dtype) for a in models.example_inputs(name))
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1),
          "noise": jax.random.PRNGKey(2)}
  variables = model.init(rngs, *xs, train=False)
  found = []

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__" and isinstance(m, (nn.Conv, UpConv2x)):
      found.append((m.clone(parent=None), tuple(args[0].shape)))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, *xs, train=True, rngs=rngs,
                                         mutable=["batch_stats"]), variables)
  return found


def torch_convs(name: str, batch: int) -> list[tuple[object, tuple]]:
  import torch

  from dlcore.interop.originals import ORIGINALS

  net = ORIGINALS[name]().train()
  found, hooks = [], []
  for m in net.modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
      hooks.append(m.register_forward_hook(
          lambda mod, inp, out: found.append((mod, tuple(inp[0].shape)))))
  xs = [torch.from_numpy(np.transpose(a, (0, 3, 1, 2)).copy()) if a.ndim == 4
        else torch.from_numpy(a) for a in
        (np.zeros((batch,) + s.shape[1:], s.dtype) for s in models.example_inputs(name))]
  with torch.no_grad():
    net(*xs)
  for h in hooks:
    h.remove()
  return found


def xla_layer(module, shape, input_grad: bool):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  params = module.init(jax.random.PRNGKey(0), x)
  g = jnp.ones(jax.eval_shape(module.apply, params, x).shape, jnp.float32)

  @jax.jit
  def fwd_bwd(p, x):
    if input_grad:
      _, vjp = jax.vjp(module.apply, p, x)
      return vjp(g)
    _, vjp = jax.vjp(lambda p: module.apply(p, x), p)
    return vjp(g)

  return lambda: jax.block_until_ready(fwd_bwd(params, x))


def torch_layer(module, shape, input_grad: bool):
  import torch

  x = torch.randn(shape, requires_grad=input_grad)

  def run():
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(torch.ones_like(y))

  return run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--cases", nargs="+", default=list(CASES))
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--min-time", type=float, default=0.5)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  import torch

  out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                 f"conv-layers-cpu-{os.cpu_count()}core")
  result = {"machine": f"{platform.machine()} {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"), "xla": xlaflags.describe(),
            "torch_threads": torch.get_num_threads(),
            "command": "python -m benchmarks.conv_layers " + " ".join(argv or []), "cases": {}}
  lines = [f"# Convolution layers vs the whole step ({result['machine']}, {result['date']})",
           "", f"{result['xla']}; PyTorch eager, {result['torch_threads']} threads.", "",
           "| model | layer (input shape) | dlcore ms | PyTorch ms |", "|---|---|---|---|"]
  summary = ["", "| model | dlcore step ms | its convolutions ms | PyTorch step ms | its "
             "convolutions ms | bound: dlcore step with PyTorch's convolutions ms | PyTorch / "
             "dlcore now | PyTorch / bound |", "|---|---|---|---|---|---|---|---|"]
  for case_id in args.cases:
    case = bcases.CASES[case_id]
    layers = []
    for name in case.models:
      mine, theirs = dlcore_convs(name, case.batch), torch_convs(name, case.batch)
      assert len(mine) == len(theirs), (name, len(mine), len(theirs))
      for i, ((m, shape), (t, tshape)) in enumerate(zip(mine, theirs)):
        # The first layer of a classifier sees the data: no input gradient in its step.
        need = not (i == 0 and name in ("lenet", "cnn", "alexnet"))
        layers.append((name, i, shape, xla_layer(m, shape, need), torch_layer(t, tshape, need)))
    steps = {mode: Contestant(case, mode, None) for mode in ("jit", "torch")}
    n = {mode: calibrate(c, args.min_time, 1000) for mode, c in steps.items()}
    step_ms = {mode: [] for mode in steps}
    layer_ms = [([], []) for _ in layers]
    for _ in range(args.rounds):  # interleaved, so both see the same machine
      for mode, c in steps.items():
        t0 = time.perf_counter()
        c.run(n[mode])
        step_ms[mode].append(1e3 * (time.perf_counter() - t0) / n[mode])
      for (_, _, _, xf, tf), (xs, ts) in zip(layers, layer_ms):
        xs.append(_median_ms(xf, args.min_time / 4, 1))
        ts.append(_median_ms(tf, args.min_time / 4, 1))
    entry = {"step_jit_ms": statistics.median(step_ms["jit"]),
             "step_torch_ms": statistics.median(step_ms["torch"]), "layers": []}
    for (name, i, shape, _, _), (xs, ts) in zip(layers, layer_ms):
      row = {"model": name, "index": i, "input": list(shape),
             "dlcore_ms": statistics.median(xs), "torch_ms": statistics.median(ts)}
      entry["layers"].append(row)
      lines.append(f"| {case_id} | {name} #{i} {tuple(shape)} | {row['dlcore_ms']:.2f} | "
                   f"{row['torch_ms']:.2f} |")
    conv_x = sum(r["dlcore_ms"] for r in entry["layers"])
    conv_t = sum(r["torch_ms"] for r in entry["layers"])
    # Layer sums count each convolution once; a GAN iteration runs D three times and G twice,
    # so for the DCGAN both sums (and so the bound) undercount its convolutions alike.
    entry |= {"convs_dlcore_ms": conv_x, "convs_torch_ms": conv_t,
              "bound_ms": entry["step_jit_ms"] - conv_x + conv_t}
    result["cases"][case_id] = entry
    summary.append(f"| {case_id} | {entry['step_jit_ms']:.1f} | {conv_x:.1f} | "
                   f"{entry['step_torch_ms']:.1f} | {conv_t:.1f} | {entry['bound_ms']:.1f} | "
                   f"{entry['step_torch_ms'] / entry['step_jit_ms']:.2f}x | "
                   f"{entry['step_torch_ms'] / entry['bound_ms']:.2f}x |")
    print(summary[-1], flush=True)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines + summary) + "\n")
  print("\n".join(lines + summary))


if __name__ == "__main__":
  main()
