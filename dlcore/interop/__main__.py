"""Weights in and out of dlcore model folders, in PyTorch's key names.

    python -m dlcore.interop export runs/cnn/model cnn.safetensors     # or cnn.pt
    python -m dlcore.interop export runs/cnn/model cnn.jaxexport       # for serving
    python -m dlcore.interop import cnn.safetensors cnn runs/cnn_from_torch [--kwargs JSON]

`export` reads a model folder (`save_model`; every classifier experiment writes
`<run>/model`) and writes its weights as a PyTorch `state_dict`: `.safetensors` through the
safetensors package's NumPy API (no torch needed), or `.pt`, tensors only, which
`torch.load(path, weights_only=True)` reads (needs torch to write), or `.jaxexport`: the
forward pass with its weights as serialized StableHLO (`dlcore.interop.serving`), which
`jax.export.deserialize` loads in any JAX program and calls on any batch size. `import` turns a
safetensors file or a `.pt`/`.pth` state_dict (read with `weights_only=True`: no code is
unpickled) into a model folder that `load_model` reads. A file that does not fit the model
or cannot be read ends in one line naming the key, the shapes or the problem.

Exit codes (as the experiments'): 0 done; 2 a bad argument (unknown model, bad --kwargs, a
missing file); 4 a weights file or model folder that is damaged or does not fit, or an output
that cannot be written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

EXIT_USAGE, EXIT_WEIGHTS = 2, 4
SUFFIXES_IN = (".safetensors", ".pt", ".pth")
SUFFIXES_OUT = (".safetensors", ".pt", ".jaxexport")


class WeightsFileError(ValueError):
  """A weights file that cannot be read, written or used; the message says which and why."""


class UsageError(ValueError):
  """A bad argument; the message names it."""


def _suffix(path: str, allowed: tuple[str, ...]) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in allowed:
    raise UsageError(f"{path}: unknown file type {ext or '(none)'}; use one of "
                     f"{', '.join(allowed)}")
  return ext


def _torch(why: str):
  try:
    import torch
  except ImportError:
    raise WeightsFileError(f"{why} needs PyTorch (pip install -e '.[torch]'); .safetensors "
                           "needs no torch") from None
  return torch


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state_dict from `.safetensors` (NumPy, no torch) or `.pt`/`.pth` (torch.load with
  weights_only=True): key -> NumPy array. Never unpickles code."""
  ext = _suffix(path, SUFFIXES_IN)
  if not os.path.isfile(path):
    raise UsageError(f"{path}: no such file")
  import ml_dtypes  # noqa: F401 - registers bfloat16 with NumPy, for safetensors' reader
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a damaged file
      raise WeightsFileError(f"{path}: not a readable safetensors file ({_first_line(e)})") \
          from None
  torch = _torch(f"reading {ext}")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - damaged, or holds objects weights_only refuses
    raise WeightsFileError(f"{path}: not a readable tensors-only PyTorch file "
                           f"({_first_line(e)})") from None
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]  # a common checkpoint layout: {"state_dict": ..., ...}
  if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                          for k, v in obj.items()):
    raise WeightsFileError(f"{path}: holds no state_dict (a dict of tensors)")
  return {k: _numpy(torch, k, v, path) for k, v in obj.items()}


def _numpy(torch, key: str, tensor, path: str) -> np.ndarray:
  """A tensor as a NumPy array; bfloat16 (which NumPy lacks) as ml_dtypes' bfloat16, the
  dtype safetensors gives for the same weights."""
  import ml_dtypes
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  try:
    return tensor.numpy()
  except TypeError as e:  # a dtype NumPy cannot hold (float8, ...)
    raise WeightsFileError(f"{path}: {key} has dtype {tensor.dtype}, which cannot be "
                           f"imported ({_first_line(e)})") from None


def write_state_dict(state_dict: dict[str, np.ndarray], path: str) -> str:
  ext = _suffix(path, SUFFIXES_OUT)
  try:
    if os.path.dirname(os.path.abspath(path)):
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".safetensors":
      from safetensors.numpy import save_file
      # np.array, not ascontiguousarray: that makes num_batches_tracked's 0-d array 1-d.
      save_file({k: np.array(v, order="C") for k, v in state_dict.items()}, path,
                metadata={"format": "pt", "written_by": "dlcore"})
    else:
      torch = _torch("writing .pt")
      # clone: NumPy may give size-1 axes odd strides, which PyTorch would read as
      # channels-last; a state_dict of plain contiguous tensors loads like any other.
      torch.save({k: torch.from_numpy(np.array(v, copy=True)).clone(
          memory_format=torch.contiguous_format) for k, v in state_dict.items()}, path)
  except OSError as e:
    raise WeightsFileError(f"cannot write {path}: {e.strerror or e}") from None
  return path


def _is_float(arr: np.ndarray) -> bool:
  """NumPy's floats and ml_dtypes' (bfloat16, ...), which np.issubdtype does not know."""
  import ml_dtypes
  return np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return (text.splitlines()[0][:160] if text else type(e).__name__)


def export(model_dir: str, out: str, *, vae_names: str = "seed") -> dict:
  """Model folder -> PyTorch state_dict file (or, for `.jaxexport`, the forward pass for
  serving: `dlcore.interop.serving`); returns {"name", "keys" or "bytes", "path"}."""
  from dlcore.checkpoint import ModelFolderError, load_model
  from dlcore.interop.torch import ConversionError, to_state_dict

  _suffix(out, SUFFIXES_OUT)
  if not os.path.isfile(os.path.join(model_dir, "model.json")):
    raise UsageError(f"{model_dir}: no model.json; pass a folder written by save_model "
                     "(an experiment's <run>/model)")
  try:
    model, variables = load_model(model_dir)
  except ModelFolderError as e:
    raise WeightsFileError(str(e)) from None
  with open(os.path.join(model_dir, "model.json")) as f:
    meta = json.load(f)
  if out.lower().endswith(".jaxexport"):
    from dlcore.interop import serving
    try:
      return serving.export_forward(model, variables, meta, out)
    except OSError as e:
      raise WeightsFileError(f"cannot write {out}: {e.strerror or e}") from None
  try:
    sd = to_state_dict(meta["name"], variables, vae_names=vae_names, **meta["kwargs"])
  except ConversionError as e:
    raise WeightsFileError(f"{model_dir}: {e}") from None
  write_state_dict(sd, out)
  return {"name": meta["name"], "keys": len(sd), "path": out}


def import_(path: str, name: str, model_dir: str, *, kwargs: dict | None = None,
            input_shape: tuple[int, ...] | None = None) -> dict:
  """PyTorch state_dict file -> model folder; returns {"name", "path"}."""
  from dlcore import models
  from dlcore.checkpoint import save_model
  from dlcore.interop.torch import ConversionError, check_state_dict, convert

  kwargs = dict(kwargs or {})
  if os.path.exists(os.path.join(model_dir, "model.json")):
    raise UsageError(f"{model_dir} already holds a model; choose another folder")
  if name not in models.names():
    raise UsageError(f"unknown model {name!r}; registered models are: "
                     f"{', '.join(models.names())}")
  try:
    models.build(name, **kwargs)
  except (TypeError, ValueError) as e:
    raise UsageError(f"--kwargs do not fit {name}: {e}") from None
  sd = read_state_dict(path)
  for key, arr in sd.items():
    if _is_float(arr) and arr.dtype.itemsize < 4:
      # float16 / bfloat16 weights: parameters are stored as float32 (exact).
      sd[key] = arr = arr.astype(np.float32)
    if _is_float(arr) and not np.isfinite(arr).all():
      raise WeightsFileError(f"{path}: {key} holds NaN or infinite values")
  try:
    check_state_dict(name, sd, **kwargs)  # in PyTorch's key names
    variables = convert(name, sd, **kwargs)
  except ConversionError as e:
    raise WeightsFileError(f"{path} does not fit {name}: {e}") from None
  shape = tuple(input_shape) if input_shape else models.example_shape(name)
  try:
    save_model(model_dir, name, variables, input_shape=shape, kwargs=kwargs)
  except OSError as e:
    raise WeightsFileError(f"cannot write {model_dir}: {e.strerror or e}") from None
  return {"name": name, "path": os.path.abspath(model_dir)}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m dlcore.interop",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
  sub = p.add_subparsers(dest="command", required=True)
  e = sub.add_parser("export", help="model folder -> .safetensors / .pt (PyTorch key names), "
                     "or .jaxexport (the forward pass for serving)")
  e.add_argument("model_dir", help="a folder written by save_model (e.g. runs/cnn/model)")
  e.add_argument("out", help="output file: .safetensors or .pt (weights), .jaxexport "
                             "(serialized StableHLO: jax.export.deserialize loads it)")
  e.add_argument("--vae-names", choices=("seed", "examples"), default="seed",
                 help="the VAE's key names: the seed's fc1..fc5 or pytorch/examples' "
                      "fc1/fc21/fc22/fc3/fc4")
  i = sub.add_parser("import", help=".safetensors / .pt / .pth -> model folder")
  i.add_argument("file", help="a state_dict: .safetensors, .pt or .pth")
  i.add_argument("name", help="registered dlcore model name (e.g. cnn, lenet, vae)")
  i.add_argument("model_dir", help="new model folder to write (load_model reads it)")
  i.add_argument("--kwargs", default="{}", help="the model's constructor arguments, as JSON")
  i.add_argument("--input-shape", type=int, nargs="+", default=None,
                 help="one example's shape (default: the model's registered example)")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "export":
      r = export(args.model_dir, args.out, vae_names=args.vae_names)
      if "bytes" in r:
        print(f"wrote {r['name']}'s forward pass ({r['bytes']} bytes, inputs "
              f"{', '.join(r['inputs'])}) to {r['path']}; load it with "
              "jax.export.deserialize")
      else:
        print(f"wrote {r['keys']} tensors of {r['name']} to {r['path']}")
    else:
      try:
        kwargs = json.loads(args.kwargs)
      except ValueError as e:
        raise UsageError(f"--kwargs is not valid JSON ({e})") from None
      if not isinstance(kwargs, dict):
        raise UsageError("--kwargs must be a JSON object of constructor arguments")
      r = import_(args.file, args.name, args.model_dir, kwargs=kwargs,
                  input_shape=args.input_shape)
      print(f"wrote model folder {r['path']} ({r['name']}); load it with "
            "dlcore.checkpoint.load_model")
  except UsageError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_USAGE
  except WeightsFileError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_WEIGHTS
  return 0


if __name__ == "__main__":
  sys.exit(main())
