"""Time to result: whole runs, as a user waits for them, dlcore against the seed's PyTorch loop.

    python -m benchmarks.time_to_result                      # every case, the seeds' epochs
    python -m benchmarks.time_to_result --cases vae mlp --epochs 2   # a quick look

For each case, one after another on the same machine: the seed's training loop in PyTorch
(the originals in `dlcore.interop.originals`; the same data, epochs, batch size, optimizer,
shuffling each epoch, test evaluation after each epoch and the same per-epoch figures; torch
threads = cores), the dlcore experiment as a user runs it with an empty compilation cache
(its figures, evaluation and checkpoints included), and the same command again with the cache
warm. Each is a fresh process timed from its start to its exit. For dlcore the run's own
account of where the time went (summary.json's "timings") is kept; for PyTorch the loop's
sections are timed the same way (start-up, data, training steps, evaluation, figures).

`--repeats N` runs the three N times, alternating cases round by round (each cold run with
its own empty cache), and reports the medians: on a shared host the same run's steps varied
by 20-40 % from one process to the next, as much as the gaps being measured. The order of
the three rotates with the repeats (`ORDERS`: PyTorch first, last, in the middle; a single
repeat runs PyTorch, cold, warm), so N a multiple of 3 gives each position once per cycle.

Writes `benchmarks/results/time_to_result-<label>.{json,md}`.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"

# case -> (dlcore command after `python -m`, seed epochs, what the PyTorch loop trains)
CASES = {
    "vae": (["experiments.vae", "--dataset", "fashion_mnist", "--score-samples", "0"], 30,
            "2.8.1 VAE: Adam 1e-3, batch 128, BCE(sum) + KL; grids of reconstructions and "
            "samples each epoch"),
    "mlp": (["experiments.mnist_mlp", "--dataset", "fashion_mnist", "--no-compare"], 20,
            "2.3.1 MLP 784-300-100-10 + BN: SGD momentum 0.9, lr 0.01 x0.1 every 5 epochs, "
            "batch 64"),
    "cnn": (["experiments.cnn", "--dataset", "fashion_mnist"], 10,
            "2.6.2 CNN (2 conv + pool, dropout 0.5): Adam 1e-3, batch 128"),
    "lenet": (["experiments.model_building", "--dataset", "fashion_mnist"], 10,
              "4.5 LeNet on 32x32 (zero-padded): Adam 1e-3 with cosine decay, batch 128"),
    "gan": (["experiments.gan", "--dataset", "fashion_mnist", "--score-samples", "0"], 50,
            "2.8.2 FC GAN: Adam 2e-4 (b1 0.5), batch 100; a sample grid each epoch"),
}


# ---- the PyTorch side (a child process: torch, NumPy and PIL only, no JAX) ------------------
def _idx(path: str):
  import numpy as np
  with gzip.open(path, "rb") as f:
    raw = f.read()
  dims = raw[3]
  shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _grid_png(images, path: str, nrow: int) -> None:
  """torchvision's save_image (make_grid, padding 2), written with PIL."""
  import numpy as np
  from PIL import Image
  n, h, w = images.shape
  rows = -(-n // nrow)
  grid = np.ones((rows * (h + 2) + 2, nrow * (w + 2) + 2), np.float32)
  for i, img in enumerate(images):
    y, x = 2 + (i // nrow) * (h + 2), 2 + (i % nrow) * (w + 2)
    grid[y:y + h, x:x + w] = img
  Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(path)


def torch_run(case: str, epochs: int, data_dir: str, out: str, threads: int) -> dict:
  """The seed's loop for `case`; returns its sections' seconds (after the imports)."""
  sections = {"start-up": time.perf_counter()}  # (replaced below by the seconds)
  import numpy as np
  import torch
  import torch.nn.functional as F

  from dlcore.interop import originals
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  times = {k: 0.0 for k in ("data", "training steps", "evaluation", "figures")}
  start = time.perf_counter()
  times["start-up"] = start - sections["start-up"]
  names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
  xtr, ytr, xte, yte = (_idx(os.path.join(data_dir, n)) for n in names)
  unit = case in ("vae",)
  scale = (lambda x: x / 255.0) if unit else (lambda x: (x / 255.0 - 0.5) / 0.5)
  xtr = torch.tensor(scale(xtr.astype(np.float32)))[:, None]
  xte = torch.tensor(scale(xte.astype(np.float32)))[:, None]
  ytr, yte = torch.tensor(ytr.astype(np.int64)), torch.tensor(yte.astype(np.int64))
  if case == "lenet":  # the seed's 32x32 input: zero padding around the 28x28 images
    pad = -1.0  # zero in [0, 255] is -1 after Normalize(0.5, 0.5)
    xtr, xte = (F.pad(x, (2, 2, 2, 2), value=pad) for x in (xtr, xte))
  times["data"] += time.perf_counter() - start
  batch = {"vae": 128, "mlp": 64, "cnn": 128, "lenet": 128, "gan": 100}[case]
  steps_per_epoch = -(-len(xtr) // batch)

  if case == "gan":
    g, d = originals.gan_generator(), originals.gan_discriminator()
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    fixed = torch.randn(64, 64)
    steps_per_epoch = len(xtr) // batch  # the seed drops the last partial batch
  else:
    net = {"vae": originals.VAE, "mlp": originals.MnistNet, "cnn": originals.CNN,
           "lenet": originals.LeNet}[case]()
    if case == "mlp":
      opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9)
      sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.1)
    else:
      opt = torch.optim.Adam(net.parameters(), 1e-3)
      sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
               if case == "lenet" else None)
    fixed = torch.randn(64, 20)

  def vae_forward(x, sample=True):
    h = F.relu(net.fc1(x.view(len(x), -1)))
    mu, log_var = net.fc2(h), net.fc3(h)
    z = mu + torch.exp(log_var / 2) * torch.randn_like(mu) if sample else mu
    logits = net.fc5(F.relu(net.fc4(z)))
    bce = F.binary_cross_entropy_with_logits(logits, x.view(len(x), -1), reduction="sum")
    kl = -0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp())
    return bce + kl, logits

  history = []
  for epoch in range(epochs):
    t0 = time.perf_counter()
    order = torch.randperm(len(xtr))
    if case != "gan":
      net.train()
    total = 0.0
    for i in range(steps_per_epoch):
      idx = order[i * batch:(i + 1) * batch]
      x, y = xtr[idx], ytr[idx]
      if case == "gan":
        real = x.view(len(x), -1)
        ones, zeros = torch.ones(len(x), 1), torch.zeros(len(x), 1)
        fake = g(torch.randn(len(x), 64))
        d_loss = (F.binary_cross_entropy(d(real), ones)
                  + F.binary_cross_entropy(d(fake.detach()), zeros))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy(d(fake), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        total += d_loss.item()
        continue
      if case == "vae":
        loss = vae_forward(x)[0] / len(x)
      else:
        loss = F.cross_entropy(net(x), y)
      opt.zero_grad()
      loss.backward()
      opt.step()
      if case == "lenet":
        sched.step()
      total += loss.item()
    if case == "mlp":
      sched.step()
    t1 = time.perf_counter()
    times["training steps"] += t1 - t0
    record = {"epoch": epoch, "train_loss": total / steps_per_epoch}
    if case != "gan":
      net.eval()
      with torch.no_grad():
        test_loss, correct = 0.0, 0
        for i in range(0, len(xte), 1000):
          x, y = xte[i:i + 1000], yte[i:i + 1000]
          if case == "vae":
            test_loss += float(vae_forward(x)[0])
          else:
            logits = net(x)
            test_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
      record["test_loss"] = test_loss / len(xte)
      if case != "vae":
        record["test_accuracy"] = correct / len(xte)
    t2 = time.perf_counter()
    times["evaluation"] += t2 - t1
    with torch.no_grad():
      if case == "vae":
        rec = torch.sigmoid(vae_forward(xte[:32], sample=False)[1]).view(-1, 28, 28)
        pairs = torch.stack([xte[:32, 0], rec], 1).reshape(-1, 28, 28)
        _grid_png(pairs.numpy(), os.path.join(out, f"recon_{epoch + 1:03d}.png"), 16)
        samples = torch.sigmoid(net.fc5(F.relu(net.fc4(fixed)))).view(-1, 28, 28)
        _grid_png(samples.numpy(), os.path.join(out, f"sample_{epoch + 1:03d}.png"), 8)
      elif case == "gan":
        samples = (g(fixed).view(-1, 28, 28) + 1) / 2
        _grid_png(samples.numpy(), os.path.join(out, f"sample_{epoch + 1:03d}.png"), 8)
    times["figures"] += time.perf_counter() - t2
    history.append(record)
    print(json.dumps(record), flush=True)
  return {"timings": {k: round(v, 3) for k, v in times.items()}, "history": history}


# ---- the benchmark --------------------------------------------------------------------------
def _timed(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
  start = time.perf_counter()
  out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - start
  if out.returncode != 0:
    raise SystemExit(f"error: {' '.join(argv[2:4])} failed (exit {out.returncode}):\n"
                     + out.stderr[-3000:])
  return wall, out


# The order of a case's three runs, rotating with the repeats (PyTorch first, in the middle,
# last; the warm run needs the cold run's cache), so an effect of the order (the host after a
# long PyTorch run) does not favour one side in the medians. One repeat: the first.
ORDERS = (("torch", "cold", "warm"), ("cold", "warm", "torch"), ("cold", "torch", "warm"))


def measure(case: str, epochs: int, tmp: str, threads: int,
            order: Sequence[str] = ORDERS[0]) -> dict:
  if sorted(order) != ["cold", "torch", "warm"] or order.index("cold") > order.index("warm"):
    raise ValueError(f"order {order}: torch, cold and warm once each, cold before warm")
  cmd, _, _ = CASES[case]
  env = dict(os.environ)  # PyTorch's: as before, not pointed at the cache
  cache = dict(env, DLCORE_CACHE=os.path.join(tmp, f"{case}-cache"))  # empty at first
  result: dict = {"epochs": epochs, "order": list(order)}
  for which in order:
    if which == "torch":
      out = os.path.join(tmp, f"{case}-torch")
      os.makedirs(out)
      wall, proc = _timed([sys.executable, "-m", "benchmarks.time_to_result", "--torch", case,
                           "--epochs", str(epochs), "--out", out, "--threads", str(threads)],
                          env)
      last = json.loads(proc.stdout.strip().splitlines()[-1])
      result["torch"] = {"wall_s": round(wall, 2), **last}
      continue
    workdir = os.path.join(tmp, f"{case}-{which}")
    wall, _ = _timed([sys.executable, "-m", *cmd, "--epochs", str(epochs), "--workdir", workdir,
                      "--no-progress"], cache)
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
    timings = summary.pop("timings")
    result[f"dlcore_{which}"] = {"wall_s": round(wall, 2), "timings": timings,
                                 "summary": summary}
  return {k: result[k] for k in ("epochs", "order", "torch", "dlcore_cold", "dlcore_warm")}


def _torch_other(run: dict) -> float:
  """The PyTorch run's wall time outside its loop's timed sections."""
  return max(0.0, run["wall_s"] - sum(run["timings"].values()))


def median_result(repeats: list[dict]) -> dict:
  """One case's repeats as one result: each run's wall time and each timing the median over
  the repeats that have it (PyTorch's "other" too, per repeat); the summaries are the first
  repeat's, and the repeats themselves are kept."""
  if len(repeats) == 1:
    return repeats[0]
  out: dict = {"epochs": repeats[0]["epochs"], "repeats": repeats}
  for run in ("torch", "dlcore_cold", "dlcore_warm"):
    rs = [dict(r[run], timings=dict(r[run]["timings"])) for r in repeats]
    if run == "torch":
      for r in rs:
        r["timings"]["other"] = _torch_other(r)
    keys = list(dict.fromkeys(k for r in rs for k in r["timings"]))
    out[run] = {**{k: v for k, v in rs[0].items() if k not in ("wall_s", "timings")},
                "wall_s": round(statistics.median([r["wall_s"] for r in rs]), 2),
                "timings": {k: round(statistics.median(
                    [r["timings"][k] for r in rs if k in r["timings"]]), 3) for k in keys}}
  return out


def _outside(timings: dict) -> float:
  """The fraction of a run outside its training steps."""
  total = timings.get("total") or sum(v for k, v in timings.items() if k != "total")
  return 1.0 - timings.get("training steps", 0.0) / total if total else float("nan")


def table(results: dict) -> str:
  lines = ["| case | epochs | PyTorch s | dlcore cold s | dlcore warm s | PyTorch / dlcore "
           "cold | PyTorch / dlcore warm | dlcore outside the steps (warm) |",
           "|---|---|---|---|---|---|---|---|"]
  for case, r in results.items():
    t, c, w = r["torch"]["wall_s"], r["dlcore_cold"]["wall_s"], r["dlcore_warm"]["wall_s"]
    lines.append(f"| {case} | {r['epochs']} | {t:.1f} | {c:.1f} | {w:.1f} | {t / c:.2f}x | "
                 f"{t / w:.2f}x | {_outside(r['dlcore_warm']['timings']):.0%} |")
  for case, r in results.items():
    if "repeats" in r:
      walls = "; ".join(f"{name} " + ", ".join(f"{x[run]['wall_s']:.1f}" for x in r["repeats"])
                        for name, run in (("PyTorch", "torch"), ("cold", "dlcore_cold"),
                                          ("warm", "dlcore_warm")))
      orders = ", ".join("-".join(x["order"]) for x in r["repeats"] if "order" in x)
      lines.append(f"\n{case}: medians of {len(r['repeats'])} alternating repeats "
                   f"(wall s per repeat: {walls})"
                   + (f"; runs in the order {orders}" if orders else ""))
  lines += ["", "Where the time went (seconds; dlcore from summary.json's \"timings\", "
            "PyTorch from its loop's sections plus the wall time it leaves over):", ""]
  parts = ["start-up", "data", "compilation", "training steps", "evaluation", "figures",
           "checkpoints", "metrics", "epoch callbacks", "other"]
  lines += ["| run | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
  for case, r in results.items():
    torch_t = dict(r["torch"]["timings"])
    if "other" not in torch_t:  # a median over repeats has it already
      torch_t["other"] = _torch_other(r["torch"])
    for name, tm in (("PyTorch", torch_t), ("dlcore cold", r["dlcore_cold"]["timings"]),
                     ("dlcore warm", r["dlcore_warm"]["timings"])):
      lines.append(f"| {case} {name} | " + " | ".join(
          f"{tm[p]:.2f}" if p in tm else "-" for p in parts) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
  p.add_argument("--epochs", type=int, default=None,
                 help="epochs for every case (default: each seed's own)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  p.add_argument("--label", default=f"cpu-{os.cpu_count()}core")
  p.add_argument("--repeats", type=int, default=1,
                 help="runs of each (alternating cases, the order of PyTorch, cold and warm "
                      "rotating: a multiple of 3 balances it); the table gives the medians")
  p.add_argument("--torch", choices=list(CASES), help=argparse.SUPPRESS)  # the child
  p.add_argument("--out", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.torch:
    print(json.dumps(torch_run(args.torch, args.epochs, FASHION, args.out, args.threads)))
    return
  if not os.path.isdir(FASHION):
    raise SystemExit(f"error: no Fashion-MNIST in {FASHION}; run `make data` first")
  if args.repeats < 1:
    raise SystemExit(f"error: --repeats {args.repeats}: give 1 or more")
  runs: dict = {case: [] for case in args.cases}
  base = os.path.join(ROOT, "benchmarks", "results", f"time_to_result-{args.label}")
  meta = {"date": datetime.date.today().isoformat(), "threads": args.threads,
          "command": "python -m benchmarks.time_to_result " + " ".join(argv or sys.argv[1:])}
  with tempfile.TemporaryDirectory() as tmp:
    for rep in range(args.repeats):
      if rep:  # what the finished rounds measured, kept should a later round fail
        _write(base, dict(meta, repeats_done=rep),
               {c: median_result(rs) for c, rs in runs.items() if rs}, args.threads, echo=False)
      for case in args.cases:
        epochs = args.epochs or CASES[case][1]
        print(f"{case}: {epochs} epochs" + (f", repeat {rep + 1}/{args.repeats}"
                                            if args.repeats > 1 else "") + " ...", flush=True)
        where = os.path.join(tmp, f"repeat-{rep}")
        os.makedirs(where, exist_ok=True)
        r = measure(case, epochs, where, args.threads, ORDERS[rep % len(ORDERS)])
        runs[case].append(r)
        print(f"  PyTorch {r['torch']['wall_s']:.1f} s, dlcore cold "
              f"{r['dlcore_cold']['wall_s']:.1f} s, warm {r['dlcore_warm']['wall_s']:.1f} s",
              flush=True)
  _write(base, meta, {case: median_result(rs) for case, rs in runs.items()}, args.threads)


def _write(base: str, meta: dict, results: dict, threads: int, echo: bool = True) -> None:
  md = table(results)
  if echo:
    print(md)
  with open(base + ".json", "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)
  with open(base + ".md", "w") as f:
    f.write(f"{meta['command']} ({meta['date']}, torch threads {threads})\n\n{md}\n")


if __name__ == "__main__":
  main()
