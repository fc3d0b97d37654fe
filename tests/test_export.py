"""Weights out of dlcore: `to_state_dict` is the exact inverse of `convert` for every model,
and `python -m dlcore.interop` moves model folders to .safetensors / .pt and back. Needs no
torch (the strict loads into the PyTorch originals are in tests/test_torch_parity.py)."""
import json
import os

import jax
import numpy as np
import pytest

from dlcore import models
from dlcore.checkpoint import load_model, save_model
from dlcore.interop import __main__ as cli
from dlcore.interop.torch import EXPORTERS, ConversionError, convert, to_state_dict

CASES = [(n, {}) for n in sorted(EXPORTERS)] + [
    ("mlp", {"widths": (8, 6, 3), "batchnorm": True, "dropout": 0.2, "activation": "relu"}),
    ("lstm_regressor", {"num_layers": 2, "hidden_dim": 5}),
    ("mnist_mlp", {"batchnorm": False}), ("cnn", {"channels": (4, 8), "hidden": 16})]


def random_variables(name, seed=0, **kwargs):
  """The model's variables with non-trivial values everywhere (batch statistics included:
  variances positive)."""
  model = models.build(name, **kwargs)
  v = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                        *models.example_inputs(name), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    # Kernels scaled by their fan-in (activations stay O(1)), vectors N(0, 0.1).
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
    x = rng.normal(0, fan_in ** -0.5, leaf.shape).astype(np.float32)
    return np.abs(x) + 0.5 if jax.tree_util.keystr(path).endswith("['var']") else x

  return jax.tree_util.tree_map_with_path(fill, dict(v))


def test_every_model_with_a_converter_has_an_exporter():
  from dlcore.interop.torch import CONVERTERS
  assert set(EXPORTERS) == set(CONVERTERS) == set(models.names())


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}{'-' if k else ''}{len(k) or ''}"
                                                    for n, k in CASES])
def test_convert_inverts_to_state_dict_bit_for_bit(name, kwargs):
  v = random_variables(name, **kwargs)
  for names in (("seed", "examples") if name == "vae" else ("seed",)):
    sd = to_state_dict(name, v, vae_names=names, **kwargs)
    assert all(isinstance(a, np.ndarray) for a in sd.values())
    back = convert(name, sd, **kwargs)
    assert jax.tree.structure(back) == jax.tree.structure(v)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(v)):
      assert a.dtype == b.dtype and np.array_equal(a, b)


def test_batchnorm_keys_carry_running_statistics_and_the_batch_count():
  v = random_variables("dcgan_discriminator")
  sd = to_state_dict("dcgan_discriminator", v, num_batches_tracked=7)
  np.testing.assert_array_equal(sd["bn2.running_var"], v["batch_stats"]["bn2"]["var"])
  assert sd["bn2.num_batches_tracked"].dtype == np.int64 and int(sd["bn2.num_batches_tracked"]) == 7


def test_variables_that_do_not_fit_are_refused():
  v = random_variables("lenet")
  v["params"]["fc3"]["bias"] = np.zeros(5, np.float32)
  with pytest.raises(ConversionError, match=r"fc3.*bias.*\(5,\).*\(10,\)"):
    to_state_dict("lenet", v)


def _folder(tmp_path, name="lenet", **kwargs):
  v = random_variables(name, **kwargs)
  shape = models.example_shape(name)
  return save_model(str(tmp_path / "model"), name, v, input_shape=shape, kwargs=kwargs), v


@pytest.mark.parametrize("name,kwargs", [("lenet", {}), ("dcgan_generator", {"base": 8}),
                                         ("lstm_tagger", {"vocab_size": 12})])
def test_export_then_import_gives_identical_outputs(tmp_path, name, kwargs, capsys):
  folder, v = _folder(tmp_path, name, **kwargs)
  out = str(tmp_path / "w.safetensors")
  assert cli.main(["export", folder, out]) == 0
  from safetensors.numpy import load_file
  assert set(load_file(out)) == set(to_state_dict(name, v, **kwargs))
  assert cli.main(["import", out, name, str(tmp_path / "back"),
                   "--kwargs", json.dumps(kwargs)]) == 0
  model, loaded = load_model(str(tmp_path / "back"))
  (x, *rest) = models.example_inputs(name, 3)
  x = np.random.default_rng(1).integers(0, 3, x.shape).astype(x.dtype) if x.dtype.kind == "i" \
      else np.random.default_rng(1).normal(size=x.shape).astype(x.dtype)
  want = models.build(name, **kwargs).apply(v, x, *rest)
  got = model.apply(loaded, x, *rest)
  assert np.array_equal(np.asarray(want), np.asarray(got))
  assert "wrote" in capsys.readouterr().out


def _one_error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  return err[0]


def test_a_file_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys):
  from safetensors.numpy import load_file, save_file
  folder, _ = _folder(tmp_path)
  good = str(tmp_path / "w.safetensors")
  assert cli.main(["export", folder, good]) == 0
  capsys.readouterr()
  sd = load_file(good)
  sd["fc3.weight"] = np.zeros((7, 84), np.float32)
  save_file(sd, str(tmp_path / "shape.safetensors"))
  assert cli.main(["import", str(tmp_path / "shape.safetensors"), "lenet",
                   str(tmp_path / "a")]) == cli.EXIT_WEIGHTS
  line = _one_error_line(capsys)
  assert "fc3.weight" in line and "(7, 84)" in line and "(10, 84)" in line
  del sd["fc3.weight"]
  save_file(sd, str(tmp_path / "missing.safetensors"))
  assert cli.main(["import", str(tmp_path / "missing.safetensors"), "lenet",
                   str(tmp_path / "b")]) == cli.EXIT_WEIGHTS
  assert "missing key fc3.weight" in _one_error_line(capsys)
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_a_damaged_file_is_refused_in_one_line(tmp_path, capsys):
  folder, _ = _folder(tmp_path)
  good = str(tmp_path / "w.safetensors")
  cli.main(["export", folder, good])
  capsys.readouterr()
  with open(good, "rb") as f:
    data = f.read()
  with open(tmp_path / "cut.safetensors", "wb") as f:
    f.write(data[:len(data) // 2])
  assert cli.main(["import", str(tmp_path / "cut.safetensors"), "lenet",
                   str(tmp_path / "c")]) == cli.EXIT_WEIGHTS
  assert "not a readable safetensors file" in _one_error_line(capsys)


@pytest.mark.parametrize("argv,message", [
    (["import", "nope.safetensors", "lenet", "x"], "no such file"),
    (["import", "w.npz", "lenet", "x"], "unknown file type"),
    (["export", "no_folder", "w.safetensors"], "no model.json"),
])
def test_bad_arguments_exit_2_in_one_line(tmp_path, argv, message, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv) == cli.EXIT_USAGE
  assert message in _one_error_line(capsys)


def test_unknown_model_and_bad_kwargs_exit_2(tmp_path, capsys):
  folder, _ = _folder(tmp_path)
  cli.main(["export", folder, str(tmp_path / "w.safetensors")])
  capsys.readouterr()
  w = str(tmp_path / "w.safetensors")
  assert cli.main(["import", w, "resnet", str(tmp_path / "d")]) == cli.EXIT_USAGE
  assert "unknown model 'resnet'" in _one_error_line(capsys)
  assert cli.main(["import", w, "lenet", str(tmp_path / "d"), "--kwargs", "{x"]) == 2
  assert "not valid JSON" in _one_error_line(capsys)


def test_bfloat16_weights_import_alike_from_pt_and_safetensors(tmp_path):
  """A bfloat16 state_dict imports from .pt as from .safetensors, as float32 parameters
  equal to the bfloat16 values; in a fresh process (no JAX imported before the read)."""
  import subprocess
  import sys
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file
  v = random_variables("lenet")
  sd = {k: torch.from_numpy(np.array(a)).to(torch.bfloat16) if a.dtype.kind == "f"
        else torch.from_numpy(np.array(a)) for k, a in to_state_dict("lenet", v).items()}
  torch.save(sd, tmp_path / "w.pt")
  save_file(sd, str(tmp_path / "w.safetensors"))
  for ext in ("pt", "safetensors"):
    out = subprocess.run([sys.executable, "-m", "dlcore.interop", "import", f"w.{ext}", "lenet",
                          f"m_{ext}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
  # read_state_dict alone (nothing imported JAX, which registers bfloat16 with NumPy).
  code = ("from dlcore.interop.__main__ import read_state_dict as r; import sys; "
          "print(r(sys.argv[1])['fc1.weight'].dtype)")
  for ext in ("pt", "safetensors"):
    out = subprocess.run([sys.executable, "-c", code, f"w.{ext}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "bfloat16", out.stderr[-1000:]
  (_, a), (_, b) = load_model(str(tmp_path / "m_pt")), load_model(str(tmp_path / "m_safetensors"))
  rounded = jax.tree.map(lambda x: np.asarray(x, np.float32).astype(jax.numpy.bfloat16)
                         .astype(np.float32), v)
  for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(rounded)):
    assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y) and np.array_equal(x, z)


_SERVE = """
import sys, numpy as np, jax
from jax import export
exported = export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
inputs = np.load(sys.argv[2])
out = exported.call(*[inputs[k] for k in sorted(inputs.files)])
np.savez(sys.argv[3], *[np.asarray(o) for o in jax.tree.leaves(out)])
assert "dlcore" not in sys.modules and "flax" not in sys.modules
"""


@pytest.mark.parametrize("name,kwargs", [("lenet", {}), ("cgan_generator", {}), ("vae", {})])
def test_a_serving_export_runs_in_a_fresh_process_on_another_batch_size(tmp_path, name, kwargs,
                                                                          capsys):
  """`export ... model.jaxexport`: serialized StableHLO with the weights, loaded with
  `jax.export.deserialize` by a program that imports neither dlcore nor Flax, called on a
  batch size the export never saw: the outputs of `apply(train=False)` to 1e-6."""
  import subprocess
  import sys
  folder, v = _folder(tmp_path, name, **kwargs)
  out = str(tmp_path / f"{name}.jaxexport")
  assert cli.main(["export", folder, out]) == 0
  assert "jax.export.deserialize" in capsys.readouterr().out
  rng = np.random.default_rng(3)
  inputs = [rng.normal(size=(5, *models.example_shape(name))).astype(np.float32)]
  if name.startswith("cgan"):
    inputs.append(rng.integers(0, 10, 5).astype(np.int32))
  np.savez(tmp_path / "in.npz", **{f"a{i}": x for i, x in enumerate(inputs)})
  subprocess.run([sys.executable, "-c", _SERVE, out, str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, timeout=120)
  got = np.load(tmp_path / "out.npz")
  want = jax.tree.leaves(models.build(name, **kwargs).apply(v, *inputs, train=False))
  assert len(got.files) == len(want)
  for i, w in enumerate(want):
    np.testing.assert_allclose(got[f"arr_{i}"], np.asarray(w), rtol=1e-6, atol=1e-6)
