"""One benchmark case per registered model: the training step each chapter runs, at the
seed's batch size, in dlcore (a pure step for `dlcore.train.Runner`) and, when PyTorch is
installed, the same step on the seed's PyTorch original (`dlcore.interop.originals`), started
from the same weights (`dlcore.interop.torch.convert`) and fed the same batch.

`CASES` is built from the registry: `check_coverage()` fails when a registered model has no
case, so a new model cannot silently drop out of the benchmarks. The GAN players are timed as
the pair's training iteration (discriminator step, then generator step), as they train.

Both sides take a precision ("float32", "bfloat16", "float16"): dlcore builds the model in
that computation dtype (float32 master weights; float16 with loss scaling), PyTorch runs the
forward pass and loss under `torch.autocast` in the same dtype (float16 with a GradScaler).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dlcore import losses, models, optim, precision
from dlcore.data import synthetic
from dlcore.train import TrainState, create_train_state, make_train_step
from dlcore.train.gan import create_gan_state, make_gan_step


@dataclass(frozen=True)
class Case:
  """`build(precision="float32")` -> (state, pure step(state, batch), batch of numpy arrays);
  `torch(precision="float32", compiled=False)` -> a function running one PyTorch step, its
  modules under `torch.compile` when `compiled` (None without an original)."""
  id: str
  spec: str
  models: tuple[str, ...]
  batch: int                     # examples per step (0: the step takes one unbatched input)
  build: Callable[[], tuple[Any, Callable, dict]]
  torch: Callable[[], Callable[[], Any]] | None = None
  note: str = ""
  tags: tuple[str, ...] = field(default=())  # "tiny" (fused-loop candidates), "conv", ...


# ---- inputs ------------------------------------------------------------------------------
def _rng(seed=0):
  return np.random.default_rng(seed)


def _images(n, size=28, channels=1, seed=0):
  return _rng(seed).standard_normal((n, size, size, channels)).astype(np.float32)


def _labels(n, classes=10, seed=1):
  return _rng(seed).integers(0, classes, n).astype(np.int32)


def _planar():
  x, y = synthetic.planar_flower()
  return {"x": x, "y": y}


# ---- losses (dlcore side) ----------------------------------------------------------------
def _bce(out, b):
  return losses.bce_with_logits(out, b["y"]), {}


def _sse(out, b):
  return losses.mse(out, b["y"], "sum"), {}


def _mse(out, b):
  return losses.mse(out, b["y"]), {}


def _ce(out, b):
  return losses.cross_entropy(out, b["y"]), {}


def _nll(out, b):  # the tagger returns log-probabilities
  logp = out.reshape(-1, out.shape[-1])
  return -jnp.mean(logp[jnp.arange(logp.shape[0]), b["y"].reshape(-1)]), {}


def _weighted_ce(out, b):
  return losses.cross_entropy(out, b["y"], weight=b["w"]), {}


def _vae(out, b):
  logits, mu, log_var = out
  return losses.vae_loss(logits, b["x"], mu, log_var)[0], {}


# ---- the PyTorch side ----------------------------------------------------------------------
def torch_device() -> str:
  """PyTorch runs where JAX runs: CUDA when JAX's default backend is a GPU (with TF32
  matmuls allowed, as JAX's default precision allows them there), else the CPU."""
  import torch

  if jax.default_backend() == "gpu" and torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "cuda"
  return "cpu"


def _to_torch(a):
  import torch

  a = np.asarray(a)
  if a.ndim == 4:  # NHWC -> NCHW
    a = a.transpose(0, 3, 1, 2)
  if np.issubdtype(a.dtype, np.integer):  # indices and labels are int64 in PyTorch
    a = a.astype(np.int64)
  # clone: numpy gives size-1 axes odd strides, which PyTorch would read as channels-last.
  return torch.from_numpy(np.ascontiguousarray(a)).clone(
      memory_format=torch.contiguous_format).to(torch_device())


def autocast(prec: str):
  """PyTorch's mixed precision for `prec`: `torch.autocast` on the device (nothing for
  float32)."""
  import torch

  if prec == "float32":
    return contextlib.nullcontext()
  return torch.autocast(torch_device(), dtype=getattr(torch, prec))


class _Backward:
  """loss.backward() and opt.step(), through a GradScaler for float16 (PyTorch's recipe)."""

  def __init__(self, prec: str, *opts):
    import torch
    self.scaler = (torch.amp.GradScaler(torch_device()) if prec == "float16" else None)
    self.opts = opts

  def __call__(self, loss, opt=None):
    opts = self.opts if opt is None else (opt,)
    if self.scaler is None:
      loss.backward()
      for o in opts:
        o.step()
      return
    self.scaler.scale(loss).backward()
    for o in opts:
      self.scaler.step(o)
    self.scaler.update()


def _torch_opt(net, opt, lr):
  import torch

  make = {"sgd": lambda: torch.optim.SGD(net.parameters(), lr=lr),
          "momentum": lambda: torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9),
          "adam": lambda: torch.optim.Adam(net.parameters(), lr=lr)}
  return make[opt]()


def _fizzbuzz_net():  # seed 001's FizzBuzz net, 10-100-4
  import torch
  return torch.nn.Sequential(torch.nn.Linear(10, 100), torch.nn.ReLU(), torch.nn.Linear(100, 4))


def _torch_step(name, inputs, loss, opt, lr):
  """One PyTorch step of ORIGINALS[name] (or of `name()` when it is a constructor) on
  `inputs` (numpy), `loss(out, *targets)`."""

  def make(prec="float32", compiled=False):
    import torch

    from dlcore.interop.originals import ORIGINALS

    torch.manual_seed(0)
    net = (name if callable(name) else ORIGINALS[name])().train().to(torch_device())
    tx = _torch_opt(net, opt, lr)
    net = torch.compile(net) if compiled else net
    backward = _Backward(prec, tx)
    args = [_to_torch(a) if isinstance(a, np.ndarray) else a for a in inputs[0]]
    targets = [_to_torch(a) for a in inputs[1]]

    def step():
      tx.zero_grad(set_to_none=True)
      with autocast(prec):
        out = net(*args)
      value = loss(out.float(), *targets)  # in float32, as dlcore's losses
      backward(value)
      return value

    return step

  return make


def _t_bce(out, y):
  import torch.nn.functional as F
  return F.binary_cross_entropy_with_logits(out, y)


def _t_sse(out, y):
  return ((out - y) ** 2).sum()


def _t_mse(out, y):
  return ((out - y) ** 2).mean()


def _t_ce(out, y):
  import torch.nn.functional as F
  return F.cross_entropy(out, y.long())


def _t_weighted_ce(out, y, w):
  import torch.nn.functional as F
  return F.cross_entropy(out, y.long(), weight=w)


def _t_nll(out, y):
  import torch.nn.functional as F
  return F.nll_loss(out, y.long().view(-1))


# ---- dlcore side -------------------------------------------------------------------------
def _supervised(name, kwargs, batch, loss, opt, lr, rng_streams=("dropout",), batched=True):
  def build(prec="float32"):
    model = models.build(name, **kwargs, dtype=precision.compute_dtype(prec))
    example = batch["x"][:1] if batched else batch["x"]
    state = create_train_state(model, optim.make_optimizer(opt, lr), example,
                               loss_scale=precision.loss_scale(prec))
    return state, make_train_step(loss, rng_streams=rng_streams), batch
  return build


def _classifier_case(id_, spec, name, n, shape, classes, opt, lr, kwargs=None, tags=()):
  x = _rng().standard_normal((n, *shape)).astype(np.float32)
  y = _labels(n, classes)
  batch = {"x": x, "y": y}
  return Case(id_, spec, (name,), n, _supervised(name, kwargs or {}, batch, _ce, opt, lr),
              _torch_step(name, ((x,), (y,)), _t_ce, opt, lr), tags=tags)


def _vae_case():
  n = 128
  x = _rng().uniform(size=(n, 28, 28, 1)).astype(np.float32)

  def torch_make(prec="float32", compiled=False):
    import torch
    import torch.nn.functional as F

    from dlcore.interop.originals import VAE

    torch.manual_seed(0)
    net = VAE().train().to(torch_device())
    tx = torch.optim.Adam(net.parameters(), lr=1e-3)
    backward = _Backward(prec, tx)
    tx_in = _to_torch(x).reshape(n, -1)

    def forward(inp):
      with autocast(prec):
        h = F.relu(net.fc1(inp))
        mu, log_var = net.fc2(h).float(), net.fc3(h).float()
        z = mu + torch.exp(log_var / 2) * torch.randn_like(mu)
        return net.fc5(F.relu(net.fc4(z))).float(), mu, log_var

    forward = torch.compile(forward) if compiled else forward

    def step():  # the seed's training step: reparameterised z, BCE(sum) + KL
      tx.zero_grad(set_to_none=True)
      logits, mu, log_var = forward(tx_in)
      bce = F.binary_cross_entropy_with_logits(logits, tx_in, reduction="sum")
      kl = -0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp())
      loss = (bce + kl) / n
      backward(loss)
      return loss

    return step

  return Case("vae", "2.8.1", ("vae",), n,
              _supervised("vae", {}, {"x": x}, _vae, "adam", 1e-3, rng_streams=("noise",)),
              torch_make)


# GAN pairs: variant -> (generator, discriminator, latent, conditional, PyTorch builders)
def _gan_case(variant):
  g_name, d_name = f"{variant}_generator", f"{variant}_discriminator"
  latent = 100 if variant == "dcgan" else 64
  conditional = variant == "cgan"
  n = 100
  x = np.tanh(_images(n))
  y = _labels(n)

  def build(prec="float32"):
    if prec == "float16":
      raise ValueError("the GAN steps have no float16 loss scaling")
    dtype = precision.compute_dtype(prec)
    g, d = models.build(g_name, dtype=dtype), models.build(d_name, dtype=dtype)
    tx = lambda: optim.make_optimizer("adam", 2e-4, b1=0.5)  # noqa: E731
    state = create_gan_state(g, d, tx(), tx(), latent_size=latent, image_shape=(28, 28, 1),
                             conditional=conditional)
    step = make_gan_step(latent_size=latent, conditional=conditional)
    return state, step, ({"x": x, "y": y} if conditional else {"x": x})

  def torch_make(prec="float32", compiled=False):
    import torch
    import torch.nn.functional as F

    from dlcore.interop.originals import ORIGINALS

    torch.manual_seed(0)
    dev = torch_device()
    gen, disc = ORIGINALS[g_name]().train().to(dev), ORIGINALS[d_name]().train().to(dev)
    g_opt = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if compiled:
      gen, disc = torch.compile(gen), torch.compile(disc)
    real = _to_torch(x)
    labels = (torch.from_numpy(y).long().to(dev),) if conditional else ()
    if variant == "gan":  # the seed's FC GAN: flat images, D ends in a Sigmoid, BCELoss
      real = real.reshape(n, -1)
      crit = F.binary_cross_entropy
    else:
      crit = F.binary_cross_entropy_with_logits
    ones, zeros = torch.ones(n, 1, device=dev), torch.zeros(n, 1, device=dev)

    backward = _Backward(prec)

    def d_out(img):
      out = disc(img, *labels)
      return out.view(n, 1).float()

    def step():
      z = torch.randn(n, latent, device=dev)
      with autocast(prec):
        fake = gen(z, *labels)
        if variant == "gan":
          fake = fake.reshape(n, -1)
      d_opt.zero_grad(set_to_none=True)
      with autocast(prec):  # the losses outside: BCE on probabilities refuses autocast
        d_real, d_fake = d_out(real), d_out(fake.detach())
      d_loss = crit(d_real, ones) + crit(d_fake, zeros)
      backward(d_loss, d_opt)
      g_opt.zero_grad(set_to_none=True)
      with autocast(prec):
        g_fake = d_out(fake)
      g_loss = crit(g_fake, ones)
      backward(g_loss, g_opt)
      return g_loss

    return step

  spec = {"gan": "2.8.2", "cgan": "2.8.3", "dcgan": "2.8.4"}[variant]
  return Case(variant, spec, (g_name, d_name), n, build, torch_make,
              note="G+D: discriminator step then generator step")


def _centered_case():
  """4.2 has no parameters: its 'step' is the forward pass alone."""
  n = 128
  x = _rng().standard_normal((n, 5)).astype(np.float32)

  def build(prec="float32"):
    model = models.build("centered_layer", dtype=precision.compute_dtype(prec))
    state = TrainState.create(apply_fn=model.apply, params={}, tx=optim.make_optimizer("sgd", 0.1),
                              batch_stats=None, rng=jax.random.PRNGKey(0))

    def step(state, batch):
      return state, {"loss": jnp.sum(state.apply_fn({}, batch["x"]), dtype=jnp.float32)}
    return state, step, {"x": x}

  def torch_make(prec="float32", compiled=False):
    import torch

    from dlcore.interop.originals import MyLayer
    net, t = MyLayer(), _to_torch(x)
    net = torch.compile(net) if compiled else net

    def step():
      with autocast(prec):
        return net(t).sum()

    return step

  return Case("centered_layer", "4.2", ("centered_layer",), n, build, torch_make,
              note="forward only (no parameters)")


def _build_cases() -> dict[str, Case]:
  cases: list[Case] = []
  planar = _planar()
  planar_t = ((planar["x"],), (planar["y"],))
  for name, spec, lr in (("logistic_regression", "0.1", 0.1), ("raw_two_layer", "0.2", 1.0),
                         ("sequential_net", "0.3", 1.0), ("module_net", "0.4", 1.0),
                         ("mlp", "0.5", 0.1)):
    kwargs = {"widths": (10, 10, 10, 1), "activation": "tanh"} if name == "mlp" else {}
    cases.append(Case(name, spec, (name,), 400, _supervised(name, kwargs, planar, _bce, "sgd", lr),
                      _torch_step(name, planar_t, _t_bce, "sgd", lr), tags=("tiny",)))
  xr, yr = synthetic.random_regression()
  reg = {"x": xr, "y": yr}
  for name, spec, opt in (("two_layer_sequential", "1.4", "sgd"),
                          ("two_layer_sequential", "1.5", "adam"),
                          ("two_layer_net", "1.6", "sgd")):
    cases.append(Case(name + ("_adam" if opt == "adam" else ""), spec, (name,), 64,
                      _supervised(name, {}, reg, _sse, opt, 1e-4),
                      _torch_step(name, ((xr,), (yr,)), _t_sse, opt, 1e-4), tags=("tiny",)))
  xf, yf = synthetic.fizzbuzz(101, 229)  # one batch of 128
  fb_kwargs = {"widths": (100, 4), "activation": "relu"}

  cases.append(Case("fizzbuzz", "1.7", ("mlp",), 128,
                    _supervised("mlp", fb_kwargs, {"x": xf, "y": yf}, _ce, "sgd", 0.05),
                    _torch_step(_fizzbuzz_net, ((xf,), (yf,)), _t_ce, "sgd", 0.05),
                    tags=("tiny",)))
  xs, ys = synthetic.spiral()
  train = _rng().permutation(len(xs))[:1050]  # the 70% train split
  xs, ys = xs[train], ys[train]
  ws = np.full(3, 1.0, np.float32)
  cases.append(Case("spiral_mlp", "3.1", ("spiral_mlp",), len(xs),
                    _supervised("spiral_mlp", {}, {"x": xs, "y": ys, "w": ws}, _weighted_ce,
                                "adam", 1e-2),
                    _torch_step("spiral_mlp", ((xs,), (ys, ws)), _t_weighted_ce, "adam", 1e-2),
                    tags=("tiny",)))
  cases.append(_classifier_case("basic_mlp", "4.1", "basic_mlp", 128, (784,), 10, "sgd", 0.1))
  cases.append(_classifier_case("mnist_mlp", "2.3.1", "mnist_mlp", 64, (28, 28, 1), 10,
                                "momentum", 0.01))
  cases.append(_centered_case())
  x4 = _rng().standard_normal((128, 4)).astype(np.float32)
  for name, out in (("list_dense", 1), ("dict_dense", 4)):
    y4 = _rng(2).standard_normal((128, out)).astype(np.float32)
    cases.append(Case(name, "4.3", (name,), 128,
                      _supervised(name, {}, {"x": x4, "y": y4}, _mse, "sgd", 0.01),
                      _torch_step(name, ((x4,), (y4,)), _t_mse, "sgd", 0.01), tags=("tiny",)))
  # 4.4: the seed learns the edge kernel [1, -1] from a 6x8 image with its Python-loop corr2d.
  xc = np.ones((6, 8), np.float32)
  xc[:, 2:6] = 0
  yc = np.zeros((6, 7), np.float32)
  yc[:, 1], yc[:, 5] = 1, -1
  cases.append(Case("corr2d_conv", "4.4", ("corr2d_conv",), 0,
                    _supervised("corr2d_conv", {"kernel_size": (1, 2)}, {"x": xc, "y": yc},
                                _sse, "sgd", 3e-2, batched=False),
                    _torch_step("corr2d_conv", ((xc,), (yc,)), _t_sse, "sgd", 3e-2),
                    note="one 6x8 image; PyTorch runs the seed's Python loops"))
  cases.append(_classifier_case("lenet", "4.5", "lenet", 128, (32, 32, 1), 10, "momentum", 0.01,
                                tags=("conv",)))
  cases.append(_classifier_case("alexnet", "4.6", "alexnet", 128, (224, 224, 1), 10,
                                "momentum", 0.01, tags=("conv", "heavy")))
  cases.append(_classifier_case("cnn", "2.6.2", "cnn", 128, (28, 28, 1), 10, "adam", 1e-3,
                                tags=("conv",)))
  # 2.7.1: one sentence of five words per step, as the tutorial trains.
  sent, tags_ = np.array([[0, 3, 2, 9, 1]], np.int32), np.array([[0, 1, 2, 0, 1]], np.int32)
  cases.append(Case("lstm_tagger", "2.7.1", ("lstm_tagger",), 1,
                    _supervised("lstm_tagger", {}, {"x": sent, "y": tags_}, _nll, "sgd", 0.1),
                    _torch_step("lstm_tagger", ((sent[0],), (tags_[0],)), _t_nll, "sgd", 0.1),
                    note="one 5-word sentence per step"))
  seq = _rng().standard_normal((20, 30, 1)).astype(np.float32)
  target = _rng(2).standard_normal((20, 1)).astype(np.float32)
  cases.append(Case("lstm_regressor", "2.7.2", ("lstm_regressor",), 20,
                    _supervised("lstm_regressor", {"hidden_dim": 32, "num_layers": 2},
                                {"x": seq, "y": target}, _mse, "adam", 1e-3),
                    _torch_step("lstm_regressor", ((seq,), (target,)), _t_mse, "adam", 1e-3)))
  cases.append(_vae_case())
  for variant in ("gan", "cgan", "dcgan"):
    cases.append(_gan_case(variant))
  return {c.id: c for c in cases}


CASES = _build_cases()


def check_coverage(cases: dict[str, Case] = CASES) -> None:
  covered = {m for c in cases.values() for m in c.models}
  missing = sorted(set(models.names()) - covered)
  if missing:
    raise AssertionError(f"registered models without a benchmark case: {missing}; add one "
                         "to benchmarks/cases.py")
