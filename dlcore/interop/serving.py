"""A trained model's forward pass for serving: `jax.export` of `apply(variables, x,
train=False)` with the weights inside, serialized StableHLO that any JAX (no dlcore, no
Flax) loads with `jax.export.deserialize` and calls on any batch size.

    python -m dlcore.interop export runs/cnn/model cnn.jaxexport

    exported = jax.export.deserialize(open("cnn.jaxexport", "rb").read())
    logits = exported.call(images)          # images: (any batch, 28, 28, 1) float32

The batch dimension is symbolic (`b`); the other dimensions are the model folder's
`input_shape`. Conditional generators take the integer labels second, as their `__call__`.
Serialization needs the `flatbuffers` package (a dlcore dependency)."""
from __future__ import annotations

import os

import numpy as np

SUFFIX = ".jaxexport"


def export_forward(model_dir: str, out: str) -> dict:
  """Model folder (`save_model`) -> `out`, serialized `jax.export.Exported` of the forward
  pass in inference mode. Returns {"name", "inputs", "bytes", "path"}."""
  import jax
  from jax import export

  from dlcore import files
  from dlcore.checkpoint import load_model
  from dlcore.models import registry

  model, variables = load_model(model_dir)
  name = _name(model_dir)
  dtype, labels, batched = registry._EXAMPLE_KINDS[name]
  shape = tuple(_input_shape(model_dir))
  batch = export.symbolic_shape("b") if batched else ()
  specs = [jax.ShapeDtypeStruct((*batch, *shape), np.dtype(dtype))]
  if labels:
    specs.append(jax.ShapeDtypeStruct(tuple(batch), np.int32))

  def forward(*inputs):
    return model.apply(variables, *inputs, train=False)

  exported = export.export(jax.jit(forward))(*specs)
  data = exported.serialize()
  with files.replacing(out) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
  return {"name": name, "inputs": [str(s.shape) for s in specs], "bytes": len(data),
          "path": os.path.abspath(out)}


def load(path: str):
  """The `jax.export.Exported` in `path` (data only: StableHLO and constants, no Python)."""
  from jax import export
  with open(path, "rb") as f:
    return export.deserialize(bytearray(f.read()))


def _meta(model_dir: str) -> dict:
  import json
  with open(os.path.join(model_dir, "model.json")) as f:
    return json.load(f)


def _name(model_dir: str) -> str:
  return _meta(model_dir)["name"]


def _input_shape(model_dir: str) -> list[int]:
  return _meta(model_dir)["input_shape"]
