"""Seed 004 (SPEC 4.1-4.6): building models, custom layers, LeNet and AlexNet.

    python -m experiments.model_building                                 # demos + LeNet on MNIST
    python -m experiments.model_building --dataset fashion_mnist         # offline
    python -m experiments.model_building --train alexnet --dataset fashion_mnist  # GPU job

Prints each of the seed's examples next to the value the seed printed: the MLP's forward
pass (4.1), the centering layer (4.2), the list- and dict-of-parameters layers (4.3),
corr2d, a Conv2D layer built on it (trained to recover an edge kernel, as d2l does), the
conv output shapes and pool2d (4.4), LeNet's 10 parameter arrays and AlexNet's layer
shapes (4.5, 4.6). Then trains `--train lenet` (default; 28x28 images zero-padded to 32x32,
Adam 1e-3, batch 128, 20 epochs) or `--train alexnet` (images resized to 224x224, SGD
0.01 as d2l's AlexNet chapter, batch 128, 10 epochs: hours on a CPU, minutes on a GPU;
`--train-limit` makes a short CPU run) or nothing (`--train none`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlcore import models, optim
from dlcore.data.transforms import ImagePipeline
from dlcore.harness import cli
from dlcore.harness.classify import classifier_experiment
from dlcore.harness.rundir import start_run
from dlcore.harness.writers import say
from dlcore.models.custom import corr2d, pool2d
from dlcore.models.layers import Conv2d
from dlcore.models.summary import count_params, param_table
from dlcore.train.state import RUN_ONCE

# model -> (pipeline size, resize, optimizer, lr, epochs, cosine decay, test forward chunk).
# LeNet's test batches of 1000 run 100 examples at a time in float32 on CPU: the same bits
# (test_image_models), 4x faster, where a whole batch's conv1 patches (78 MB) overflow the
# cache. Not in bfloat16 / float16 (their logits' last bits move) nor off the CPU (no gain
# measured there).
TRAINING = {
    "lenet": (32, "pad", "adam", 1e-3, 20, True, 100),
    "alexnet": (224, "bilinear", "sgd", 0.01, 10, False, None),
}


def eval_chunk(cfg) -> int | None:
  """The test forward's chunk for `cfg` (TRAINING's), only where it keeps the bits."""
  if cfg.common.precision != "float32" or jax.default_backend() != "cpu":
    return None
  return TRAINING[cfg.train][-1]


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr",)  # --sweep: numbers in the step
  SWEEP_SHAPES: ClassVar = ("batch_size",)  # --sweep: one program per value
  common: cli.Shared = cli.shared()
  data: cli.ImageOptions = cli.image_data()
  train: Literal["lenet", "alexnet", "none"] = "lenet"
  """Which network to train after the seed 004 demos (none: demos only)."""
  epochs: cli.Positive[int] | None = None
  """Training epochs; None: the model's (LeNet 20, AlexNet 10)."""
  batch_size: cli.Positive[int] = 128
  """Training batch size."""
  optimizer: Literal["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"] | None = None
  """Optimizer; None: the model's (LeNet adam, AlexNet sgd)."""
  cosine: bool | None = None
  """Cosine learning-rate decay to 0; None: the model's (on for LeNet, off for AlexNet)."""
  lr: Annotated[float | None, cli.Between(0.0)] = None
  """Learning rate; None: the model's (LeNet 1e-3, AlexNet 0.01)."""
  image_size: cli.Positive[int] | None = None
  """Input side length; None: the model's (LeNet 32, AlexNet 224)."""
  resize: Literal["pad", "bilinear"] | None = None
  """How 28x28 images reach --image-size; None: the model's (LeNet pad, AlexNet bilinear)."""

  def check(self):
    if self.common.sweep and self.train == "none":
      raise cli.ConfigError("--sweep trains --train lenet or alexnet, not none")


def _variables(model, x, key):
  return model.init({"params": key, "dropout": key}, x)


def _shapes(model, x, key):
  """`model`'s variables as shapes (what the parameter tables print): no initializer runs."""
  return jax.eval_shape(functools.partial(_variables, model), x, key)


# The demos' numbers come from one compiled program: op by op, each initializer, random draw
# and slice is a program of its own (58 compiled programs, 6.8 s of a cold run's 9.6 s);
# the values printed are the same.
@functools.partial(jax.jit, compiler_options=RUN_ONCE)
def _demo_values(key):
  mlp = models.build("basic_mlp")
  x = jax.random.uniform(key, (2, 784))
  y = mlp.apply(_variables(mlp, x, key), x)
  centered = models.build("centered_layer").apply({}, jnp.array([1.0, 2, 3, 4, 5]))
  net = nn.Sequential([nn.Dense(128), models.build("centered_layer")])
  xs = jax.random.uniform(key, (4, 8))
  X, K = jnp.arange(9.0).reshape(3, 3), jnp.array([[0.0, 1.0], [2.0, 3.0]])
  return {"mlp_output": y, "centered": centered,
          "mean_after_dense": net.apply(net.init(key, xs), xs).mean(),
          "corr2d": corr2d(X, K), "pool_max": pool2d(X, (2, 2)),
          "pool_avg": pool2d(X, (2, 2), "avg")}


def demos(seed: int) -> dict:
  key = jax.random.PRNGKey(seed)
  values = jax.tree.map(np.asarray, _demo_values(key))
  out = {}
  # 4.1 MLP subclassing Module
  mlp = models.build("basic_mlp")
  y = values["mlp_output"]
  say("4.1 BasicMLP(hidden=Linear(784, 256), act=ReLU, output=Linear(256, 10))")
  v = _shapes(mlp, jax.ShapeDtypeStruct((2, 784), jnp.float32), key)
  say(param_table(v["params"]))
  say(f"  forward of a (2, 784) batch -> {y.shape}: {np.round(y[0, :4], 4)} ...")
  out["4.1"] = {"output_shape": list(y.shape), "parameters": count_params(v["params"]),
                "seed_parameters": 203530}
  # 4.2 a layer without parameters
  centered, mean = values["centered"].tolist(), float(values["mean_after_dense"])
  say(f"4.2 CenteredLayer([1, 2, 3, 4, 5]) -> {centered} (seed: [-2, -1, 0, 1, 2])")
  say(f"  Dense(128) then CenteredLayer: output mean {mean:.2e} (0 up to rounding)")
  out["4.2"] = {"output": centered, "mean_after_dense": mean}
  # 4.3 list and dict of parameters
  ld, dd = models.build("list_dense"), models.build("dict_dense")
  ones = jax.ShapeDtypeStruct((1, 4), jnp.float32)
  vl, vd = _shapes(ld, ones, key), _shapes(dd, ones, key)
  say("4.3 ListDense (ParameterList):\n" + param_table(vl["params"]))
  say("    DictDense (ParameterDict):\n" + param_table(vd["params"]))
  shapes = {c: list(jax.eval_shape(lambda v, x: dd.apply(v, x, c), vd, ones).shape)
            for c in ("linear1", "linear2", "linear3")}
  list_shape = jax.eval_shape(ld.apply, vl, ones).shape
  say(f"  ListDense(ones(1, 4)) -> {list_shape}; DictDense by choice: {shapes}")
  out["4.3"] = {"list_dense": {k: list(s.shape) for k, s in vl["params"].items()},
                "dict_dense_output_shapes": shapes}
  # 4.4 corr2d, Conv2D, conv shapes, pool2d
  corr = values["corr2d"].tolist()
  say(f"4.4 corr2d([[0,1,2],[3,4,5],[6,7,8]], [[0,1],[2,3]]) -> {corr}")
  learned = learn_edge_kernel()
  say(f"  Conv2D((1, 2)) trained to find vertical edges: weight {learned['weight']} "
        f"(true [[1, -1]]), loss {learned['loss_first']:.3f} -> {learned['loss_last']:.2e}")
  x8 = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
  conv_shapes = {}
  for name, conv in (("k3 p1", Conv2d(1, 1, 3, padding=1)),
                     ("k(5,3) p(2,1)", Conv2d(1, 1, (5, 3), padding=(2, 1))),
                     ("k(3,5) p(0,1) s(3,4)", Conv2d(1, 1, (3, 5), stride=(3, 4),
                                                     padding=(0, 1)))):
    conv_shapes[name] = list(jax.eval_shape(
        lambda x: conv.apply(conv.init(key, x), x), x8).shape[1:3])
  say(f"  Conv2d output shapes on 8x8 (seed: 8x8, 8x8, 2x2): {conv_shapes}")
  pmax, pavg = values["pool_max"].tolist(), values["pool_avg"].tolist()
  say(f"  pool2d max -> {pmax} (seed [[4, 5], [7, 8]]); avg -> {pavg} "
        f"(seed [[2, 3], [5, 6]])")
  out["4.4"] = {"corr2d": corr, "conv2d_learned": learned,
                "conv_output_shapes_8x8": conv_shapes, "pool2d_max": pmax,
                "pool2d_avg": pavg}
  # 4.5 LeNet
  lenet = models.build("lenet")
  x32 = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  v = _shapes(lenet, x32, key)
  say("4.5 LeNet:\n" + param_table(v["params"]))
  logits = jax.eval_shape(lenet.apply, v, x32)
  say(f"  {len(jax.tree.leaves(v['params']))} parameter arrays (seed: 10); conv1 kernel "
        f"{v['params']['conv1']['kernel'].shape} (HWIO; PyTorch's (6, 1, 5, 5) is OIHW); "
        f"forward of a random 32x32 image -> {logits.shape}")
  out["4.5"] = {"parameter_arrays": len(jax.tree.leaves(v["params"])),
                "parameters": count_params(v["params"]), "seed_parameters": 61706}
  # 4.6 AlexNet: layer output shapes (shape inference only; no 46.7M-parameter init needed)
  alex = models.build("alexnet")
  x224 = jax.ShapeDtypeStruct((1, 224, 224, 1), jnp.float32)
  shapes = jax.eval_shape(lambda x: alex.apply(_variables(alex, x, key), x,
                                               capture_intermediates=True,
                                               mutable=["intermediates"]), x224)[1]
  order = lambda k: (k.split("_")[0], int(k.split("_")[1]))  # noqa: E731
  layers = sorted((k for k in shapes["intermediates"] if k.startswith(("conv_", "fc_"))),
                  key=order)
  layer_shapes = {k: list(shapes["intermediates"][k]["__call__"][0].shape) for k in layers}
  params = _shapes(alex, x224, key)["params"]
  say("4.6 AlexNet output shapes: " + ", ".join(f"{k} {s}" for k, s in layer_shapes.items()))
  say(f"  {count_params(params):,} parameters (PyTorch: 46,764,746)")
  out["4.6"] = {"layer_output_shapes": layer_shapes, "parameters": count_params(params),
                "seed_parameters": 46764746}
  return out


def learn_edge_kernel(steps: int = 60, lr: float = 0.01) -> dict:
  """d2l's exercise for the seed's Conv2D: X is a 6x8 image, ones with a black band in
  columns 2-5; Y = corr2d(X, [[1, -1]]) marks its edges. Gradient descent on the squared
  error should recover the kernel. (d2l's layer has no bias and uses lr 0.03; with the
  seed's bias the summed loss is steeper, and 0.03 diverges.)"""
  params, losses_, last = jax.tree.map(np.asarray, _descend(steps, lr))
  return {"weight": np.round(params["weight"], 3).tolist(),
          "bias": round(float(params["bias"][0]), 3), "loss_first": float(losses_[0]),
          "loss_last": float(last)}


@functools.partial(jax.jit, static_argnums=0, compiler_options=RUN_ONCE)
def _descend(steps: int, lr):
  """learn_edge_kernel's descent as one program (a loop of compiled steps and op-by-op
  updates compiled 8 programs; the numbers are the same)."""
  X = jnp.ones((6, 8)).at[:, 2:6].set(0.0)
  Y = corr2d(X, jnp.array([[1.0, -1.0]]))
  conv = models.build("corr2d_conv", kernel_size=(1, 2))
  loss = jax.value_and_grad(lambda p: jnp.sum((conv.apply({"params": p}, X) - Y) ** 2))

  def step(params, _):
    value, grads = loss(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), value

  params, losses_ = jax.lax.scan(step, conv.init(jax.random.PRNGKey(0), X)["params"], None,
                                 length=steps)
  return params, losses_, loss(params)[0]


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  data = cli.load_image_data(cfg.data) if cfg.train != "none" else None  # fail fast
  run, runner = start_run(cfg, "model_building")
  summary = demos(cfg.common.seed)
  if cfg.train != "none":
    size, resize, opt, lr, epochs, cosine, _ = TRAINING[cfg.train]
    cfg = dataclasses.replace(cfg, epochs=cfg.epochs or epochs)
    cosine = cosine if cfg.cosine is None else cfg.cosine
    lr = cfg.lr if cfg.lr is not None else lr
    cfg = dataclasses.replace(cfg, lr=lr)  # --sweep lr: the base value is a number
    pipeline = ImagePipeline("pm1", size=cfg.image_size or size, resize=cfg.resize or resize)
    kwargs = dict(in_channels=data.image_shape[2], num_classes=data.num_classes)

    def setup(c):  # again for each value of a swept shape option (--sweep batch_size=...)
      steps = c.epochs * -(-len(data.train_x) // c.batch_size)

      def make_tx(lr):  # --sweep lr: the (cosine schedule's base) rate as an array
        return optim.make_optimizer(c.optimizer or opt,
                                    optax.cosine_decay_schedule(lr, steps) if cosine else lr)
      return kwargs, make_tx
    _, make_tx = setup(cfg)
    entry, _ = classifier_experiment(
        cfg, run, runner, spec_id="4.5" if cfg.train == "lenet" else "4.6",
        model_name=cfg.train, model_kwargs=kwargs, data=data, pipeline=pipeline,
        tx=make_tx(lr), title="LeNet" if cfg.train == "lenet" else "AlexNet",
        extra={"input": f"{pipeline.size}x{pipeline.size} ({pipeline.resize})",
               "optimizer": cfg.optimizer or opt, "lr": lr,
               "lr_schedule": "cosine" if cosine else "constant"}, eval_chunk=eval_chunk(cfg),
        tx_factory=make_tx, setup=setup)
    for k, v in entry.items():
      summary[k] = summary.get(k, {}) | v
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
