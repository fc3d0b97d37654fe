"""PyTorch `state_dict`s of the seed networks <-> dlcore (Flax) variables.

    import torch
    from dlcore.interop.torch import convert
    variables = convert("lenet", torch_model.state_dict())       # {"params": ..., ...}
    logits = models.build("lenet").apply(variables, x_nhwc)
    state_dict = to_state_dict("lenet", variables)                # and back: NumPy arrays

PyTorch is optional: this module takes anything with `.detach().cpu().numpy()` or plain
arrays, and never imports torch itself. Conventions applied (README, "PyTorch weights"):

- Linear: weight (out, in) -> kernel (in, out).
- Conv2d: weight OIHW -> kernel HWIO; inputs are NHWC in dlcore.
- Flatten before the first Linear: PyTorch flattens (C, H, W), dlcore (H, W, C): that
  Linear's input rows are permuted (and a Linear feeding a `view(-1, C, H, W)` has its
  output columns permuted).
- BatchNorm: weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var;
  `num_batches_tracked` is dropped. PyTorch's momentum 0.1 is Flax's momentum 0.9 (the
  models set it), eps 1e-5 in both.
- LSTM: PyTorch packs the gates (i, f, g, o) as rows of weight_ih / weight_hh and keeps two
  biases; Flax's LSTMCell has one Dense per gate (input kernels ii/if/ig/io without bias,
  hidden kernels hi/hf/hg/ho with bias = b_ih + b_hh).
- Embedding: weight -> embedding.
- ConvTranspose2d: weight (in, out, kh, kw) -> Flax `ConvTranspose` kernel (kh, kw, in, out),
  spatially flipped (PyTorch's transposed convolution is the convolution's gradient, Flax's
  default `transpose_kernel=False` correlates the zero-stuffed input with the kernel as is);
  PyTorch's padding p with kernel 4, stride 2, p = 1 is Flax's "SAME".

Every key of the state_dict must be used and every variable of the model filled, with the
right shape: otherwise `ConversionError` names the key.
"""
from __future__ import annotations

import re
from typing import Callable

import jax
import numpy as np


class ConversionError(KeyError):
  """A state_dict that does not fit the model: unknown, missing or mis-shaped keys."""

  def __str__(self):
    return str(self.args[0]) if self.args else ""


def _np(x) -> np.ndarray:
  # A copy: `.numpy()` shares memory with the tensor, and a later in-place PyTorch update
  # (optimizer.step) would otherwise change the converted arrays too.
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.array(x, np.float32, copy=True)


class StateDict:
  """A state_dict being consumed: `take(key)` marks keys used; `finish()` rejects leftovers."""

  def __init__(self, state_dict: dict):
    self.arrays = {k: v for k, v in state_dict.items()}
    self.used: set[str] = set()

  def has(self, key: str) -> bool:
    return key in self.arrays

  def shape(self, key: str) -> tuple[int, ...]:
    """Shape of a key without marking it used."""
    if key not in self.arrays:
      raise ConversionError(f"missing key {key!r} in the state_dict")
    return tuple(self.arrays[key].shape)

  def take(self, key: str) -> np.ndarray:
    if key not in self.arrays:
      near = [k for k in self.arrays if k.split(".")[0] == key.split(".")[0]]
      raise ConversionError(f"missing key {key!r} in the state_dict"
                            + (f" (keys with that prefix: {near})" if near else ""))
    self.used.add(key)
    return _np(self.arrays[key])

  def finish(self) -> None:
    left = [k for k in self.arrays if k not in self.used and
            not k.endswith("num_batches_tracked")]
    if left:
      raise ConversionError(f"unexpected keys in the state_dict, not used by the model: {left}")


# ---- layers ------------------------------------------------------------------------------
def linear(sd: StateDict, prefix: str) -> dict:
  out = {"kernel": sd.take(f"{prefix}.weight").T}
  if sd.has(f"{prefix}.bias"):
    out["bias"] = sd.take(f"{prefix}.bias")
  return out


def linear_after_flatten(sd: StateDict, prefix: str, chw: tuple[int, int, int]) -> dict:
  """A Linear whose input PyTorch flattened as (C, H, W); dlcore flattens (H, W, C)."""
  c, h, w = chw
  weight = sd.take(f"{prefix}.weight")
  kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
  return {"kernel": kernel, "bias": sd.take(f"{prefix}.bias")}


def linear_before_unflatten(sd: StateDict, prefix: str, chw: tuple[int, int, int]) -> dict:
  """A Linear whose output PyTorch views as (C, H, W); dlcore reshapes it as (H, W, C)."""
  c, h, w = chw
  weight, bias = sd.take(f"{prefix}.weight"), sd.take(f"{prefix}.bias")
  kernel = weight.T.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[1], -1)
  return {"kernel": kernel, "bias": bias.reshape(c, h, w).transpose(1, 2, 0).reshape(-1)}


def conv(sd: StateDict, prefix: str) -> dict:
  out = {"kernel": sd.take(f"{prefix}.weight").transpose(2, 3, 1, 0)}
  if sd.has(f"{prefix}.bias"):
    out["bias"] = sd.take(f"{prefix}.bias")
  return out


def conv_transpose(sd: StateDict, prefix: str) -> dict:
  out = {"kernel": sd.take(f"{prefix}.weight")[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).copy()}
  if sd.has(f"{prefix}.bias"):
    out["bias"] = sd.take(f"{prefix}.bias")
  return out


def batchnorm(sd: StateDict, prefix: str) -> tuple[dict, dict]:
  """(params, batch_stats) of one BatchNorm layer."""
  return ({"scale": sd.take(f"{prefix}.weight"), "bias": sd.take(f"{prefix}.bias")},
          {"mean": sd.take(f"{prefix}.running_mean"), "var": sd.take(f"{prefix}.running_var")})


def embedding(sd: StateDict, prefix: str) -> dict:
  return {"embedding": sd.take(f"{prefix}.weight")}


def lstm_cell(sd: StateDict, prefix: str, layer: int = 0) -> dict:
  """One layer of `nn.LSTM` -> Flax `LSTMCell` params."""
  w_ih, w_hh = sd.take(f"{prefix}.weight_ih_l{layer}"), sd.take(f"{prefix}.weight_hh_l{layer}")
  bias = sd.take(f"{prefix}.bias_ih_l{layer}") + sd.take(f"{prefix}.bias_hh_l{layer}")
  hidden = w_hh.shape[1]
  out = {}
  for g, name in enumerate("ifgo"):
    rows = slice(g * hidden, (g + 1) * hidden)
    out[f"i{name}"] = {"kernel": w_ih[rows].T}
    out[f"h{name}"] = {"kernel": w_hh[rows].T, "bias": bias[rows]}
  return out


def sequential_layers(sd: StateDict, prefix: str = "") -> tuple[dict, dict]:
  """The Linear and BatchNorm layers of a PyTorch module, in state_dict order, as fc1, fc2,
  ... and bn1, bn2, ... (the naming of dlcore's MLPs)."""
  params, stats = {}, {}
  modules = []
  for key in sd.arrays:
    if not key.startswith(prefix):
      continue
    module = key.rsplit(".", 1)[0]
    if module not in modules:
      modules.append(module)
  n_fc = n_bn = 0
  for module in modules:
    if sd.has(f"{module}.running_mean"):
      n_bn += 1
      params[f"bn{n_bn}"], stats[f"bn{n_bn}"] = batchnorm(sd, module)
    elif sd.has(f"{module}.weight"):
      n_fc += 1
      params[f"fc{n_fc}"] = linear(sd, module)
  return params, stats


# ---- models ------------------------------------------------------------------------------
def _raw(*names):
  return lambda sd, kw: {"params": {n: sd.take(n) for n in names}}


def _named(mapping: dict[str, str]):
  return lambda sd, kw: {"params": {dst: linear(sd, src) for dst, src in mapping.items()}}


def _mlp(sd, kw):
  params, stats = sequential_layers(sd)
  return {"params": params, **({"batch_stats": stats} if stats else {})}


# pytorch/examples' VAE (vae/main.py) names its layers fc1, fc21 (mu), fc22 (log_var), fc3,
# fc4; the seed's (and dlcore's) are fc1..fc5 in the same order.
_VAE_EXAMPLES_NAMES = {"fc1": "fc1", "fc2": "fc21", "fc3": "fc22", "fc4": "fc3", "fc5": "fc4"}


def _vae(sd, kw):
  names = _VAE_EXAMPLES_NAMES if "fc21.weight" in sd.arrays else {f"fc{i}": f"fc{i}"
                                                                    for i in range(1, 6)}
  return _named(names)(sd, kw)


def _lenet(sd, kw):
  return {"params": {"conv1": conv(sd, "conv1"), "conv2": conv(sd, "conv2"),
                     "fc1": linear_after_flatten(sd, "fc1", (16, 5, 5)),
                     "fc2": linear(sd, "fc2"), "fc3": linear(sd, "fc3")}}


def _alexnet(sd, kw):
  p = {f"conv_{i}": conv(sd, f"conv.{i}") for i in (0, 3, 6, 8, 10)}
  p["fc_0"] = linear_after_flatten(sd, "fc.0", (256, 5, 5))
  p["fc_3"], p["fc_6"] = linear(sd, "fc.3"), linear(sd, "fc.6")
  return {"params": p}


def _cnn(sd, kw):
  c2 = sd.shape("conv2.weight")[0]
  return {"params": {"conv1": conv(sd, "conv1"), "conv2": conv(sd, "conv2"),
                     "fc1": linear_after_flatten(sd, "fc1", (c2, 7, 7)),
                     "fc2": linear(sd, "fc2")}}


def _lstm_tagger(sd, kw):
  return {"params": {"word_embeddings": embedding(sd, "word_embeddings"),
                     "lstm": {"cell": lstm_cell(sd, "lstm")},
                     "hidden2tag": linear(sd, "hidden2tag")}}


def _lstm_regressor(sd, kw):
  layers = sorted({int(m.group(1)) for k in sd.arrays if (m := re.search(r"_l(\d+)$", k))})
  p = {f"lstm{i + 1}": lstm_cell(sd, "lstm", i) for i in layers}
  return {"params": p | {"fc": linear(sd, "fc")}}


def _gan_player(sd, kw, prefix=""):
  """The seed's players are bare nn.Sequential: keys "0.weight", "2.weight", "4.weight"."""
  return {"params": {f"layers_{i}": linear(sd, f"{prefix}{i}") for i in (0, 2, 4)}}


def _cgan_discriminator(sd, kw):
  p = _gan_player(sd, kw, "model.")["params"] | {"label_embed": embedding(sd, "label_embed")}
  if sd.has("projection.weight"):
    p["projection"] = embedding(sd, "projection")
  return {"params": p}


def _cgan_generator(sd, kw):
  return {"params": _gan_player(sd, kw, "model.")["params"]
          | {"label_embed": embedding(sd, "label_embed")}}


def _dcgan_generator(sd, kw):
  c2 = sd.shape("bn0.weight")[0]
  bn0, s0 = batchnorm(sd, "bn0")
  bn1, s1 = batchnorm(sd, "bn1")
  return {"params": {"fc": linear_before_unflatten(sd, "fc", (c2, 7, 7)), "bn0": bn0,
                     "deconv1": conv_transpose(sd, "deconv1"), "bn1": bn1,
                     "deconv2": conv_transpose(sd, "deconv2")},
          "batch_stats": {"bn0": s0, "bn1": s1}}


def _dcgan_discriminator(sd, kw):
  c2 = sd.shape("conv2.weight")[0]
  bn2, s2 = batchnorm(sd, "bn2")
  return {"params": {"conv1": conv(sd, "conv1"), "conv2": conv(sd, "conv2"), "bn2": bn2,
                     "fc": linear_after_flatten(sd, "fc", (c2, 7, 7))},
          "batch_stats": {"bn2": s2}}


# Models made of named Linear layers alone (dlcore submodule -> PyTorch module), and models
# of raw parameters (the same names on both sides): both directions use these tables.
_LINEAR_NAMES = {
    "sequential_net": {"layers_0": "0", "layers_2": "2"},
    "module_net": {"layer1": "layer1", "layer3": "layer3"},
    "two_layer_net": {"linear1": "linear1", "linear2": "linear2"},
    "two_layer_sequential": {"layers_0": "0", "layers_2": "2"},
    "spiral_mlp": {"fc1": "fc1", "fc2": "fc2"},
    "basic_mlp": {"hidden": "hidden", "output": "output"},
}
_RAW_NAMES = {"logistic_regression": ("w", "b"), "raw_two_layer": ("w1", "b1", "w2", "b2"),
              "corr2d_conv": ("weight", "bias")}

CONVERTERS: dict[str, Callable[[StateDict, dict], dict]] = {
    **{name: _named(mapping) for name, mapping in _LINEAR_NAMES.items()},
    **{name: _raw(*keys) for name, keys in _RAW_NAMES.items()},
    "mlp": _mlp,
    "mnist_mlp": _mlp,
    "centered_layer": lambda sd, kw: {},
    "list_dense": lambda sd, kw: {"params": {f"params_{i}": sd.take(f"params.{i}")
                                             for i in range(4)}},
    "dict_dense": lambda sd, kw: {"params": {n: sd.take(f"params.{n}")
                                             for n in ("linear1", "linear2", "linear3")}},
    "lenet": _lenet,
    "alexnet": _alexnet,
    "cnn": _cnn,
    "lstm_tagger": _lstm_tagger,
    "lstm_regressor": _lstm_regressor,
    "vae": _vae,
    "gan_discriminator": _gan_player,
    "gan_generator": _gan_player,
    "cgan_discriminator": _cgan_discriminator,
    "cgan_generator": _cgan_generator,
    "dcgan_generator": _dcgan_generator,
    "dcgan_discriminator": _dcgan_discriminator,
}


# ---- the other way: dlcore variables -> PyTorch state_dict --------------------------------
# Each function is the exact inverse of its converter above (convert(to_state_dict(v)) == v).
def _a(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def linear_out(p: dict, prefix: str) -> dict:
  out = {f"{prefix}.weight": _a(p["kernel"]).T}
  if "bias" in p:
    out[f"{prefix}.bias"] = _a(p["bias"])
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def linear_after_flatten_out(p: dict, prefix: str, chw: tuple[int, int, int]) -> dict:
  c, h, w = chw
  kernel = _a(p["kernel"])
  weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
  return {f"{prefix}.weight": np.ascontiguousarray(weight), f"{prefix}.bias": _a(p["bias"])}


def linear_before_unflatten_out(p: dict, prefix: str, chw: tuple[int, int, int]) -> dict:
  c, h, w = chw
  kernel = _a(p["kernel"])
  weight = kernel.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(kernel.shape[0], -1).T
  bias = _a(p["bias"]).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
  return {f"{prefix}.weight": np.ascontiguousarray(weight),
          f"{prefix}.bias": np.ascontiguousarray(bias)}


def conv_out(p: dict, prefix: str) -> dict:
  out = {f"{prefix}.weight": np.ascontiguousarray(_a(p["kernel"]).transpose(3, 2, 0, 1))}
  if "bias" in p:
    out[f"{prefix}.bias"] = _a(p["bias"])
  return out


def conv_transpose_out(p: dict, prefix: str) -> dict:
  weight = _a(p["kernel"]).transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]
  out = {f"{prefix}.weight": np.ascontiguousarray(weight)}
  if "bias" in p:
    out[f"{prefix}.bias"] = _a(p["bias"])
  return out


def batchnorm_out(p: dict, stats: dict, prefix: str, num_batches_tracked: int = 0) -> dict:
  """PyTorch keeps a count of training batches; dlcore does not (its momentum is fixed), so
  `num_batches_tracked` is whatever the caller says (0 by default)."""
  return {f"{prefix}.weight": _a(p["scale"]), f"{prefix}.bias": _a(p["bias"]),
          f"{prefix}.running_mean": _a(stats["mean"]), f"{prefix}.running_var": _a(stats["var"]),
          f"{prefix}.num_batches_tracked": np.asarray(num_batches_tracked, np.int64)}


def embedding_out(p: dict, prefix: str) -> dict:
  return {f"{prefix}.weight": _a(p["embedding"])}


def lstm_cell_out(p: dict, prefix: str, layer: int = 0) -> dict:
  """Flax's one bias per gate is PyTorch's b_ih + b_hh: it goes to bias_ih, bias_hh is 0."""
  gates = "ifgo"
  w_ih = np.concatenate([_a(p[f"i{g}"]["kernel"]).T for g in gates])
  w_hh = np.concatenate([_a(p[f"h{g}"]["kernel"]).T for g in gates])
  b = np.concatenate([_a(p[f"h{g}"]["bias"]) for g in gates])
  return {f"{prefix}.weight_ih_l{layer}": w_ih, f"{prefix}.weight_hh_l{layer}": w_hh,
          f"{prefix}.bias_ih_l{layer}": b, f"{prefix}.bias_hh_l{layer}": np.zeros_like(b)}


def _raw_out(*names):
  return lambda v, kw, o: {n: _a(v["params"][n]) for n in names}


def _named_out(mapping: dict[str, str]):
  return lambda v, kw, o: {k: a for dst, src in mapping.items()
                           for k, a in linear_out(v["params"][dst], src).items()}


def _mlp_out(v, kw, o):
  """dlcore's MLP as the PyTorch `nn.Sequential` it mirrors: per hidden layer Linear,
  [BatchNorm1d], activation, [Dropout]; then the last Linear."""
  p, stats = v["params"], v.get("batch_stats", {})
  n = len([k for k in p if k.startswith("fc")])
  out, index = {}, 0
  for i in range(1, n + 1):
    out |= linear_out(p[f"fc{i}"], str(index))
    index += 1
    if i == n:
      break
    if f"bn{i}" in p:
      out |= batchnorm_out(p[f"bn{i}"], stats[f"bn{i}"], str(index), o["num_batches_tracked"])
      index += 1
    index += 1 + (kw.get("dropout", 0.0) > 0)  # activation, dropout
  return out


def _mnist_mlp_out(v, kw, o):
  """The book's `Net`: layer1 = Sequential(Linear, BatchNorm1d), layer2 likewise, layer3 =
  Sequential(Linear)."""
  p, stats = v["params"], v.get("batch_stats", {})
  out = {}
  for i in (1, 2, 3):
    out |= linear_out(p[f"fc{i}"], f"layer{i}.0")
    if f"bn{i}" in p:
      out |= batchnorm_out(p[f"bn{i}"], stats[f"bn{i}"], f"layer{i}.1", o["num_batches_tracked"])
  return out


def _vae_out(v, kw, o):
  names = (_VAE_EXAMPLES_NAMES if o["vae_names"] == "examples"
           else {f"fc{i}": f"fc{i}" for i in range(1, 6)})
  return _named_out(names)(v, kw, o)


def _lenet_out(v, kw, o):
  p = v["params"]
  return (conv_out(p["conv1"], "conv1") | conv_out(p["conv2"], "conv2")
          | linear_after_flatten_out(p["fc1"], "fc1", (16, 5, 5))
          | linear_out(p["fc2"], "fc2") | linear_out(p["fc3"], "fc3"))


def _alexnet_out(v, kw, o):
  p = v["params"]
  out = {}
  for i in (0, 3, 6, 8, 10):
    out |= conv_out(p[f"conv_{i}"], f"conv.{i}")
  return (out | linear_after_flatten_out(p["fc_0"], "fc.0", (256, 5, 5))
          | linear_out(p["fc_3"], "fc.3") | linear_out(p["fc_6"], "fc.6"))


def _cnn_out(v, kw, o):
  p = v["params"]
  c2 = np.shape(p["conv2"]["kernel"])[3]
  return (conv_out(p["conv1"], "conv1") | conv_out(p["conv2"], "conv2")
          | linear_after_flatten_out(p["fc1"], "fc1", (c2, 7, 7)) | linear_out(p["fc2"], "fc2"))


def _lstm_tagger_out(v, kw, o):
  p = v["params"]
  return (embedding_out(p["word_embeddings"], "word_embeddings")
          | lstm_cell_out(p["lstm"]["cell"], "lstm") | linear_out(p["hidden2tag"], "hidden2tag"))


def _lstm_regressor_out(v, kw, o):
  p = v["params"]
  layers = sorted(int(k[4:]) for k in p if k.startswith("lstm"))
  out = {}
  for i in layers:
    out |= lstm_cell_out(p[f"lstm{i}"], "lstm", i - 1)
  return out | linear_out(p["fc"], "fc")


def _gan_player_out(v, kw, o, prefix=""):
  return {k: a for i in (0, 2, 4) for k, a in linear_out(v["params"][f"layers_{i}"],
                                                         f"{prefix}{i}").items()}


def _cgan_discriminator_out(v, kw, o):
  p = v["params"]
  out = _gan_player_out(v, kw, o, "model.") | embedding_out(p["label_embed"], "label_embed")
  if "projection" in p:
    out |= embedding_out(p["projection"], "projection")
  return out


def _cgan_generator_out(v, kw, o):
  return (_gan_player_out(v, kw, o, "model.")
          | embedding_out(v["params"]["label_embed"], "label_embed"))


def _dcgan_generator_out(v, kw, o):
  p, s, n = v["params"], v["batch_stats"], o["num_batches_tracked"]
  c2 = np.shape(p["bn0"]["scale"])[0]
  return (linear_before_unflatten_out(p["fc"], "fc", (c2, 7, 7))
          | batchnorm_out(p["bn0"], s["bn0"], "bn0", n) | conv_transpose_out(p["deconv1"], "deconv1")
          | batchnorm_out(p["bn1"], s["bn1"], "bn1", n) | conv_transpose_out(p["deconv2"], "deconv2"))


def _dcgan_discriminator_out(v, kw, o):
  p, s = v["params"], v["batch_stats"]
  c2 = np.shape(p["conv2"]["kernel"])[3]
  return (conv_out(p["conv1"], "conv1") | conv_out(p["conv2"], "conv2")
          | batchnorm_out(p["bn2"], s["bn2"], "bn2", o["num_batches_tracked"])
          | linear_after_flatten_out(p["fc"], "fc", (c2, 7, 7)))


EXPORTERS: dict[str, Callable[[dict, dict, dict], dict]] = {
    **{name: _named_out(mapping) for name, mapping in _LINEAR_NAMES.items()},
    **{name: _raw_out(*keys) for name, keys in _RAW_NAMES.items()},
    "mlp": _mlp_out,
    "mnist_mlp": _mnist_mlp_out,
    "centered_layer": lambda v, kw, o: {},
    "list_dense": lambda v, kw, o: {f"params.{i}": _a(v["params"][f"params_{i}"])
                                    for i in range(4)},
    "dict_dense": lambda v, kw, o: {f"params.{n}": _a(v["params"][n])
                                    for n in ("linear1", "linear2", "linear3")},
    "lenet": _lenet_out,
    "alexnet": _alexnet_out,
    "cnn": _cnn_out,
    "lstm_tagger": _lstm_tagger_out,
    "lstm_regressor": _lstm_regressor_out,
    "vae": _vae_out,
    "gan_discriminator": _gan_player_out,
    "gan_generator": _gan_player_out,
    "cgan_discriminator": _cgan_discriminator_out,
    "cgan_generator": _cgan_generator_out,
    "dcgan_generator": _dcgan_generator_out,
    "dcgan_discriminator": _dcgan_discriminator_out,
}


def to_state_dict(name: str, variables: dict, *, vae_names: str = "seed",
                  num_batches_tracked: int = 0, example_input=None,
                  **model_kwargs) -> dict[str, np.ndarray]:
  """The PyTorch `state_dict` (key -> float32 NumPy array; `num_batches_tracked` int64) of
  registered model `name`'s `variables`, under the seed's key names: the exact inverse of
  `convert` (Linear and Conv layouts, NHWC->NCHW flattening, transposed convolutions,
  BatchNorm running statistics, embeddings, LSTM gates). `vae_names="examples"` names the
  VAE's layers as pytorch/examples does (fc1, fc21, fc22, fc3, fc4). Needs no torch; load
  the result with `net.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)`.
  `variables` are first checked against the model built with `model_kwargs`."""
  from dlcore import models

  if name not in EXPORTERS:
    raise ConversionError(f"no PyTorch exporter for model {name!r}; exporters exist for "
                          f"{sorted(EXPORTERS)}")
  if vae_names not in ("seed", "examples"):
    raise ValueError(f"vae_names must be 'seed' or 'examples', got {vae_names!r}")
  model = models.build(name, **model_kwargs)
  inputs = models.example_inputs(name) if example_input is None else (example_input,)
  want = jax.eval_shape(lambda args: model.init(jax.random.PRNGKey(0), *args), inputs)
  variables = jax.tree.map(np.asarray, dict(variables))
  _check(want, variables)
  return EXPORTERS[name](variables, model_kwargs, {"vae_names": vae_names,
                                                   "num_batches_tracked": num_batches_tracked})


def expected_state_dict(name: str, example_input=None, vae_names: str = "seed",
                        **model_kwargs) -> dict[str, tuple[int, ...]]:
  """The keys and shapes of the PyTorch state_dict that fits registered model `name`."""
  from dlcore import models

  model = models.build(name, **model_kwargs)
  inputs = models.example_inputs(name) if example_input is None else (example_input,)
  want = jax.eval_shape(lambda args: model.init(jax.random.PRNGKey(0), *args), inputs)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), dict(want))
  sd = EXPORTERS[name](zeros, model_kwargs, {"vae_names": vae_names, "num_batches_tracked": 0})
  return {k: tuple(v.shape) for k, v in sd.items()}


def check_state_dict(name: str, state_dict: dict, example_input=None, **model_kwargs) -> None:
  """Raises `ConversionError` naming, in PyTorch's key names, every key of `state_dict` that
  is missing, unexpected or mis-shaped for model `name` (`num_batches_tracked` optional)."""
  if name not in EXPORTERS:
    raise ConversionError(f"no PyTorch converter for model {name!r}")
  if name in ("mlp", "mnist_mlp"):  # their converter takes the layers in order, by any names
    return
  names = "examples" if name == "vae" and "fc21.weight" in state_dict else "seed"
  want = expected_state_dict(name, example_input, names, **model_kwargs)
  got = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
  problems = [f"missing key {k} {s}" for k, s in want.items()
              if k not in got and not k.endswith("num_batches_tracked")]
  problems += [f"unexpected key {k} {s}" for k, s in got.items() if k not in want]
  problems += [f"{k}: file {got[k]} vs model {s}" for k, s in want.items()
               if k in got and got[k] != s]
  if problems:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6
                                       else "")
    raise ConversionError(shown)


def convert(name: str, state_dict: dict, example_input=None, **model_kwargs) -> dict:
  """Flax variables for registered model `name` (built with `model_kwargs`) from a PyTorch
  `state_dict`. The result is checked against the model's own variables: structure and
  shapes must match (`example_input`, default `models.example_inputs(name)`, is used for
  that check only). The VAE takes the seed's layer names (fc1..fc5) or pytorch/examples'
  (fc1, fc21, fc22, fc3, fc4)."""
  from dlcore import models

  if name not in CONVERTERS:
    raise ConversionError(f"no PyTorch converter for model {name!r}; converters exist for "
                          f"{sorted(CONVERTERS)}")
  sd = StateDict(state_dict)
  variables = CONVERTERS[name](sd, model_kwargs)
  sd.finish()
  model = models.build(name, **model_kwargs)
  inputs = models.example_inputs(name) if example_input is None else (example_input,)
  want = jax.eval_shape(lambda args: model.init(jax.random.PRNGKey(0), *args), inputs)
  _check(want, variables)
  return jax.tree.map(np.asarray, variables)


def _check(want, got) -> None:
  flat_w = {jax.tree_util.keystr(p): v.shape
            for p, v in jax.tree_util.tree_flatten_with_path(dict(want))[0]}
  flat_g = {jax.tree_util.keystr(p): np.shape(v)
            for p, v in jax.tree_util.tree_flatten_with_path(got)[0]}
  problems = [f"missing {k} {s} (no PyTorch key filled it)" for k, s in flat_w.items()
              if k not in flat_g]
  problems += [f"unexpected {k}" for k in flat_g if k not in flat_w]
  problems += [f"{k}: converted {flat_g[k]} vs model {s}" for k, s in flat_w.items()
               if k in flat_g and tuple(flat_g[k]) != tuple(s)]
  if problems:
    raise ConversionError("converted variables do not fit the model: " + "; ".join(problems))
