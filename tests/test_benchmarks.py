"""The benchmark harness: every registered model has a case, every case's step runs (and its
PyTorch twin when torch is installed), FLOP counting by formula, and the outputs of a tiny
run. Timing itself is not tested (benchmarks measure it)."""
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import jit_vs_eager as bench
from benchmarks.cases import CASES, check_coverage
from dlcore import models


def test_every_registered_model_has_a_case():
  check_coverage()
  with pytest.raises(AssertionError, match="without a benchmark case"):
    check_coverage({k: v for k, v in CASES.items() if "lenet" not in v.models})


@pytest.mark.parametrize("cid", list(CASES))
def test_case_step_is_well_formed(cid):
  """Every case's step traces to a scalar loss and a state of the same structure (abstract
  evaluation: no compile, so AlexNet's 224x224 batch of 128 costs nothing here)."""
  state, step, batch = CASES[cid].build()
  new, metrics = jax.eval_shape(step, state, batch)
  assert metrics["loss"].shape == ()
  assert jax.tree.structure(new) == jax.tree.structure(state)


@pytest.mark.parametrize("cid", [c for c, case in CASES.items() if "tiny" in case.tags])
def test_tiny_case_step_updates_parameters(cid):
  state, step, batch = CASES[cid].build()
  new, metrics = jax.jit(step)(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  moved = [float(jnp.abs(a - b).max())
           for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params))]
  assert max(moved) > 0, f"{cid}: the step did not update any parameter"


@pytest.mark.parametrize("cid", [c for c, case in CASES.items() if "heavy" not in case.tags])
def test_torch_twin_runs(cid):
  pytest.importorskip("torch", reason="PyTorch not installed: pip install -e '.[torch]'")
  loss = CASES[cid].torch()()
  assert np.isfinite(float(loss.detach() if hasattr(loss, 'detach') else loss))


def test_matmul_flops_by_formula():
  x, w = jnp.ones((8, 5)), jnp.ones((5, 3))
  assert bench.matmul_flops(lambda x, w: x @ w, x, w) == 2 * 8 * 5 * 3
  # The gradient of a matmul w.r.t. both inputs: two more matmuls of the same size.
  g = jax.grad(lambda x, w: jnp.sum(x @ w), argnums=(0, 1))
  assert bench.matmul_flops(g, x, w) == 3 * 2 * 8 * 5 * 3
  img, k = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
  conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "VALID",  # noqa: E731
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert bench.matmul_flops(conv, img, k) == 2 * (2 * 4 * 4 * 4) * 3 * 9
  # Loops count their trip count times.
  w5 = jnp.ones((5, 5))
  looped = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=4)[0]  # noqa
  assert bench.matmul_flops(looped, x, w5) == 4 * 2 * 8 * 5 * 5


def test_tiny_run_writes_json_table_and_chart(tmp_path):
  stem = str(tmp_path / "bench")
  out = bench.main(["--cases", "sequential_net", "corr2d_conv", "--rounds", "1",
                    "--min-time", "0.001", "--fused-steps", "10", "--modes", "python", "jit",
                    "pmap", "--matmul-size", "128", "--out", stem])
  data = json.loads(open(stem + ".json").read())
  assert set(data["cases"]) == {"sequential_net", "corr2d_conv"}
  row = data["cases"]["sequential_net"]
  assert row["modes"]["jit"]["median_ms"] > 0 and row["matmul_flops"] > 0
  # corr2d_conv takes one unbatched image: nothing to split over devices.
  assert "skipped" in data["cases"]["corr2d_conv"]["modes"]["pmap"]
  assert data["fused"]["sequential_net"]["steps"] == 10
  assert "| sequential_net (0.3, 400) |" in open(stem + ".md").read()
  assert open(stem + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert out["matmul_peak_gflops"] > 0
  assert len(models.names()) <= sum(len(c.models) for c in CASES.values())
  # --render rewrites the table and chart from the JSON alone.
  os.remove(stem + ".md")
  os.remove(stem + ".png")
  bench.main(["--render", stem + ".json"])
  assert "| sequential_net (0.3, 400) |" in open(stem + ".md").read()
  assert open(stem + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_gpu_check_small_mode_runs_end_to_end(tmp_path):
  """The GPU check's every step, tiny, on this machine's CPU: its device tests pass, every
  precision has a timed step on both sides, and both training runs finish."""
  from benchmarks import gpu_check
  report = gpu_check.main(["--small", "--out", str(tmp_path)])
  assert report["tests"]["returncode"] == 0 and "1 passed" in report["tests"]["summary"]
  row = report["benchmark"]["precision_table"]["mlp"]
  assert all(row["jit"][p] > 0 for p in gpu_check.PRECISIONS)
  if any(row["torch"].values()):  # PyTorch installed
    assert all(row["torch"][p] > 0 for p in gpu_check.PRECISIONS)
  assert set(report["training"]) == {"float32", "bfloat16"}
  assert all(0 <= r["test_accuracy"] <= 1 and r["seconds_per_epoch"] > 0
             for r in report["training"].values())
  md = [f for f in os.listdir(tmp_path) if f.startswith("gpu-") and f.endswith(".md")]
  text = open(tmp_path / [f for f in md if "steps" not in f][0]).read()
  assert "bfloat16" in text and "One training run" in text


@pytest.mark.parametrize("case_id", ["lenet", "cnn", "dcgan", "alexnet"])
def test_conv_layers_pairs_each_convolution_with_the_originals(case_id):
  """benchmarks.conv_layers times dlcore's and PyTorch's convolutions in pairs: the same
  number of layers, in the same order, on the same input (NHWC vs NCHW)."""
  pytest.importorskip("torch")
  from benchmarks import conv_layers

  for name in CASES[case_id].models:
    mine, theirs = conv_layers.dlcore_convs(name, 2), conv_layers.torch_convs(name, 2)
    assert mine and len(mine) == len(theirs), name
    for (_, shape), (_, tshape) in zip(mine, theirs):
      n, h, w, c = shape
      assert tshape == (n, c, h, w), (name, shape, tshape)


@pytest.mark.parametrize("case", ["vae", "gan"])
def test_time_to_result_pytorch_loop_trains_evaluates_and_draws(tmp_path, case):
  """The PyTorch side of `benchmarks.time_to_result` on a tiny Fashion-MNIST-shaped set."""
  pytest.importorskip("torch")
  from benchmarks import time_to_result
  from dlcore.data.images import write_idx
  rng = np.random.default_rng(0)
  for split, n in (("train", 300), ("t10k", 100)):
    write_idx(str(tmp_path / f"{split}-images-idx3-ubyte.gz"),
              rng.integers(0, 256, (n, 28, 28)))
    write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte.gz"), rng.integers(0, 10, n))
  out = tmp_path / "out"
  out.mkdir()
  got = time_to_result.torch_run(case, 2, str(tmp_path), str(out), 1)
  assert [h["epoch"] for h in got["history"]] == [0, 1]
  assert all(np.isfinite(h["train_loss"]) for h in got["history"])
  if case == "vae":  # a per-sample negative ELBO on noise images: hundreds of nats
    assert 100 < got["history"][-1]["test_loss"] < 1000
  assert len(os.listdir(out)) == (4 if case == "vae" else 2)  # the per-epoch grids
  assert set(got["timings"]) == {"start-up", "data", "training steps", "evaluation", "figures"}
  row = time_to_result.table({case: {
      "epochs": 2, "torch": {"wall_s": 10.0, "timings": got["timings"]},
      "dlcore_cold": {"wall_s": 5.0, "timings": {"total": 5.0, "training steps": 4.0}},
      "dlcore_warm": {"wall_s": 4.0, "timings": {"total": 4.0, "training steps": 3.0}}}})
  assert f"| {case} | 2 | 10.0 | 5.0 | 4.0 | 2.00x | 2.50x | 25% |" in row


def test_time_to_result_repeats_report_medians():
  """`--repeats`: each run's wall time and timings are the medians over the repeats, the
  table's ratios come from them, and every repeat's walls are listed."""
  from benchmarks import time_to_result

  def rep(torch, cold, warm, steps):
    return {"epochs": 2, "torch": {"wall_s": torch, "timings": {"training steps": torch - 1}},
            "dlcore_cold": {"wall_s": cold, "timings": {"total": cold, "training steps": steps},
                            "summary": {"n": cold}},
            "dlcore_warm": {"wall_s": warm, "timings": {"total": warm, "training steps": steps}}}
  reps = [rep(30.0, 9.0, 8.0, 6.0), rep(10.0, 5.0, 4.0, 3.0), rep(20.0, 7.0, 6.0, 3.0)]
  got = time_to_result.median_result(reps)
  assert got["repeats"] == reps
  assert [got[r]["wall_s"] for r in ("torch", "dlcore_cold", "dlcore_warm")] == [20.0, 7.0, 6.0]
  assert got["dlcore_warm"]["timings"] == {"total": 6.0, "training steps": 3.0}
  assert got["dlcore_cold"]["summary"] == {"n": 9.0}  # the first repeat's
  row = time_to_result.table({"lenet": got})
  assert "| lenet | 2 | 20.0 | 7.0 | 6.0 | 2.86x | 3.33x | 50% |" in row
  assert "medians of 3 alternating repeats (wall s per repeat: PyTorch 30.0, 10.0, 20.0" in row
  assert got["torch"]["timings"]["other"] == 1.0  # wall minus the loop's sections, per repeat
  assert f"| lenet PyTorch | - | - | - | 19.00 | - | - | - | - | - | 1.00 |" in row
  even = time_to_result.median_result(reps[:2])
  assert even["torch"]["wall_s"] == 20.0 and even["dlcore_warm"]["timings"]["total"] == 6.0
  four = time_to_result.median_result(reps + [rep(40.0, 11.0, 10.0, 9.0)])
  assert four["torch"]["wall_s"] == 25.0 and four["dlcore_cold"]["timings"]["training steps"] == 4.5
  assert time_to_result.median_result(reps[:1]) is reps[0]
  reps[1]["dlcore_warm"]["timings"]["figures"] = 0.5  # a section only one repeat timed
  assert time_to_result.median_result(reps)["dlcore_warm"]["timings"]["figures"] == 0.5
  for r, order in zip(reps, time_to_result.ORDERS):
    r["order"] = list(order)
  assert ("PyTorch 30.0, 10.0, 20.0; cold 9.0, 5.0, 7.0; warm 8.0, 4.0, 6.0); runs in the "
          "order torch-cold-warm, cold-warm-torch, cold-torch-warm") in time_to_result.table(
              {"lenet": time_to_result.median_result(reps)})


def test_time_to_result_repeats_alternate_in_their_own_folders(tmp_path, monkeypatch):
  """`main --repeats 2`: the cases alternate round by round, each repeat measures in its own
  folder (so each cold run has an empty cache), the medians are written, a failing round
  keeps what the rounds before it measured, and `--repeats 0` stops with one line."""
  from benchmarks import time_to_result
  (tmp_path / "benchmarks" / "results").mkdir(parents=True)
  monkeypatch.setattr(time_to_result, "ROOT", str(tmp_path))
  monkeypatch.setattr(time_to_result, "FASHION", str(tmp_path))
  calls, orders = [], []

  def measure(case, epochs, where, threads, order):
    calls.append((case, os.path.basename(where)))
    orders.append(order)
    if len(calls) > 4:
      raise RuntimeError("round 3 fails")
    wall = float(len(calls))
    t = {"wall_s": wall, "timings": {"total": wall, "training steps": wall / 2}}
    return {"epochs": epochs, "torch": {"wall_s": 2 * wall, "timings": {"training steps": wall}},
            "dlcore_cold": t, "dlcore_warm": t}
  monkeypatch.setattr(time_to_result, "measure", measure)
  time_to_result.main(["--cases", "vae", "mlp", "--epochs", "1", "--repeats", "2",
                       "--label", "t"])
  assert calls == [("vae", "repeat-0"), ("mlp", "repeat-0"), ("vae", "repeat-1"),
                   ("mlp", "repeat-1")]
  o = time_to_result.ORDERS  # the order of the three runs rotates with the repeats
  assert orders == [o[0], o[0], o[1], o[1]] and len(set(o)) == 3
  with open(tmp_path / "benchmarks" / "results" / "time_to_result-t.json") as f:
    got = json.load(f)["results"]
  assert got["vae"]["dlcore_cold"]["wall_s"] == 2.0 and got["mlp"]["torch"]["wall_s"] == 6.0
  calls.clear()
  with pytest.raises(RuntimeError):
    time_to_result.main(["--cases", "vae", "mlp", "--epochs", "1", "--repeats", "3",
                         "--label", "u"])
  with open(tmp_path / "benchmarks" / "results" / "time_to_result-u.json") as f:
    kept = json.load(f)
  assert kept["meta"]["repeats_done"] == 2 and kept["results"]["mlp"]["dlcore_warm"]["wall_s"] == 3.0
  with pytest.raises(SystemExit, match="--repeats 0"):
    time_to_result.main(["--cases", "vae", "--repeats", "0"])


def test_time_to_result_runs_a_case_in_the_order_given(tmp_path, monkeypatch):
  """`measure` runs PyTorch, the cold and the warm run in the order asked, the dlcore runs
  on the case's own compilation cache (PyTorch's environment as it was), and refuses an
  order with the warm run before the cold one."""
  from benchmarks import time_to_result
  seen = []

  def timed(argv, env):
    if "--torch" in argv:
      seen.append(("torch", env.get("DLCORE_CACHE")))
      return 3.0, types.SimpleNamespace(stdout=json.dumps({"timings": {"training steps": 2.0}}))
    workdir = argv[argv.index("--workdir") + 1]
    which = workdir.rsplit("-", 1)[1]
    seen.append((which, env.get("DLCORE_CACHE")))
    os.makedirs(workdir)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump({"timings": {"total": 1.0}, "which": which}, f)
    return 1.0, None
  monkeypatch.setattr(time_to_result, "_timed", timed)
  monkeypatch.setenv("DLCORE_CACHE", "/the/users/cache")
  for order in time_to_result.ORDERS:
    where = tmp_path / "-".join(order)
    where.mkdir()
    got = time_to_result.measure("lenet", 1, str(where), 2, order)
    cache = str(where / "lenet-cache")
    assert seen == [(w, "/the/users/cache" if w == "torch" else cache) for w in order]
    assert got["order"] == list(order) and got["torch"]["wall_s"] == 3.0
    assert got["dlcore_warm"]["summary"] == {"which": "warm"}
    assert got["dlcore_cold"]["summary"] == {"which": "cold"}
    seen.clear()
  with pytest.raises(ValueError, match="cold before warm"):
    time_to_result.measure("lenet", 1, str(tmp_path), 2, ("warm", "cold", "torch"))
  assert not seen
  (tmp_path / "default").mkdir()  # no order given: PyTorch, cold, warm, as before the option
  assert time_to_result.measure("lenet", 1, str(tmp_path / "default"), 2)["order"] == [
      "torch", "cold", "warm"]
  assert [w for w, _ in seen] == ["torch", "cold", "warm"]


def test_col2im_taps_reference_is_the_same_gradient():
  """`benchmarks.col2im_taps` times dlcore's tap-major col2im against its position-major
  predecessor: the two give the same input gradient up to float32 rounding, the kernel
  gradient bit for bit, and the benchmark restores dlcore's backward pass afterwards."""
  from benchmarks import col2im_taps
  from dlcore.models import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 2, 3, 5)), jnp.float32)
  pad = ((1, 0), (2, 1))
  y, vjp = jax.vjp(lambda x, k: layers._xla_conv(x, k, pad), x, k)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  ours = layers._scatter_grad_conv_bwd(pad, (x, k), g)
  before = col2im_taps.position_major_bwd(pad, (x, k), g)
  np.testing.assert_array_equal(before[1], ours[1])
  np.testing.assert_allclose(before[0], ours[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(before[0], vjp(g)[0], rtol=1e-5, atol=1e-5)
  col2im_taps._compiled(col2im_taps.position_major_bwd)
  got = jax.grad(lambda x: jnp.sum(layers.scatter_grad_conv(x, k, (1, 1), pad) * g))(x)
  np.testing.assert_array_equal(got, ours[0])
