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


def export_forward(model, variables, meta: dict, out: str) -> dict:
  """A loaded model folder (`load_model`'s model and variables, its model.json as `meta`) ->
  `out`, serialized `jax.export.Exported` of the forward pass in inference mode. Returns
  {"name", "inputs", "bytes", "path"}."""
  import jax
  from jax import export

  from dlcore import files
  from dlcore.models import registry

  dtype, labels, batched = registry._EXAMPLE_KINDS[meta["name"]]
  batch = export.symbolic_shape("b") if batched else ()
  specs = [jax.ShapeDtypeStruct((*batch, *meta["input_shape"]), np.dtype(dtype))]
  if labels:
    specs.append(jax.ShapeDtypeStruct(tuple(batch), np.int32))

  def forward(*inputs):
    return model.apply(variables, *inputs, train=False)

  exported = export.export(jax.jit(forward))(*specs)
  data = exported.serialize()
  with files.replacing(out) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
  return {"name": meta["name"], "inputs": [str(s.shape) for s in specs], "bytes": len(data),
          "path": os.path.abspath(out)}
