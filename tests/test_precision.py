"""Mixed precision: every model in bfloat16, float32 by default, float16 loss scaling."""
import json
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import models, precision
from dlcore.harness import cli
from dlcore.train import NonFiniteLossError, Runner, create_train_state, fit, make_train_step
from dlcore.train.loop import host_mean
from tests.helpers import bce_loss, max_abs_diff, planar_batch

RNGS = {"dropout": jax.random.PRNGKey(3), "noise": jax.random.PRNGKey(4)}
LOSS_OUTPUTS = {"lstm_tagger"}  # models whose output is log-probabilities for the loss


def _inputs(name, batch=4):
  rng = np.random.default_rng(0)
  return tuple(rng.integers(0, 3, a.shape).astype(a.dtype) if a.dtype.kind == "i"
               else rng.normal(size=a.shape).astype(a.dtype)
               for a in models.example_inputs(name, batch))


def _init(model, xs):
  return model.init({"params": jax.random.PRNGKey(0), **RNGS}, *xs, train=False)


def _apply(model, variables, xs, train):
  out, _ = model.apply(variables, *xs, train=train, rngs=RNGS, mutable=["batch_stats"])
  return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "alexnet" else n
                                  for n in models.names()])  # AlexNet: make test-all (25 s)
def test_bfloat16_model_has_float32_params_bfloat16_outputs_and_trains(name):
  model = models.build(name, dtype=jnp.bfloat16)
  xs = _inputs(name, 2 if name == "alexnet" else 4)
  variables = _init(model, xs)
  assert {l.dtype for l in jax.tree.leaves(variables)} <= {jnp.dtype(jnp.float32)}
  out = model.apply(variables, *xs, train=False)
  # The tagger's output is its loss's input, log-probabilities: float32 (losses are).
  want = jnp.float32 if name in LOSS_OUTPUTS else jnp.bfloat16
  assert {l.dtype for l in jax.tree.leaves(out)} == {jnp.dtype(want)}
  if "params" not in variables:  # the parameter-free centering layer: nothing to train
    return
  targets = jax.tree.map(lambda o: jnp.asarray(
      np.random.default_rng(1).normal(size=o.shape), jnp.float32), out)

  def loss(params):
    o = precision.to_float32(_apply(model, {**variables, "params": params}, xs, True))
    return sum(jnp.mean((a - b) ** 2) for a, b in zip(jax.tree.leaves(o),
                                                     jax.tree.leaves(targets)))

  tx = optax.adam(1e-4 if name == "alexnet" else 1e-3)  # AlexNet: 46M weights
  params, opt = variables["params"], tx.init(variables["params"])

  @jax.jit
  def step(params, opt):
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  first = None
  for _ in range(1 if name == "alexnet" else 8):
    params, opt, value = step(params, opt)
    first = value if first is None else first
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert float(loss(params)) < float(first), name


@pytest.mark.parametrize("name", [n for n in models.names() if n != "alexnet"])  # lenet's layers
def test_float32_is_the_default_bit_for_bit(name):
  xs = _inputs(name)
  default, explicit = models.build(name), models.build(name, dtype="float32",
                                                        param_dtype="float32")
  v = _init(default, xs)
  assert max_abs_diff(v, _init(explicit, xs)) == 0.0
  a, b = _apply(default, v, xs, True), _apply(explicit, v, xs, True)
  assert all(np.array_equal(x, y) and x.dtype == y.dtype
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_precision_choices_match_the_engine():
  assert typing.get_args(cli.Precision) == precision.PRECISIONS
  assert precision.loss_scale("float32") is None and precision.loss_scale("bfloat16") is None
  with pytest.raises(ValueError, match="unknown precision"):
    precision.compute_dtype("float8")


def test_batch_statistics_stay_float32_in_bfloat16():
  model = models.build("mnist_mlp", dtype="bfloat16")
  x = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype(np.float32)
  v = _init(model, (x,))
  _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
  assert {l.dtype for l in jax.tree.leaves(upd)} == {jnp.dtype(jnp.float32)}


def _f16_state(scale=None, **kw):
  model = models.build("mlp", widths=(16, 1), activation="relu", dtype=jnp.float16, **kw)
  ls = precision.loss_scale("float16")
  if scale is not None:
    ls = ls.replace(scale=jnp.asarray(scale, jnp.float32))
  return create_train_state(model, optax.sgd(0.1), planar_batch(8)["x"], 0, loss_scale=ls)


def test_float16_overflowing_steps_are_skipped_counted_and_the_scale_lowered():
  # 2**100 overflows float16 gradients: steps are skipped, halving the scale each time,
  # until it fits (2**15 or so); then the steps apply.
  state = _f16_state(scale=2.0 ** 100)
  step = jax.jit(make_train_step(bce_loss))
  batch = planar_batch(64)
  rows, params0 = [], state.params
  for i in range(100):
    before = state
    state, m = step(state, batch)
    rows.append(m)
    if m["skipped"] == 1.0:  # nothing changed but the step counter and the scale
      assert max_abs_diff(before.params, state.params) == 0.0
      assert max_abs_diff(before.opt_state, state.opt_state) == 0.0
      assert float(state.dynamic_scale.scale) == float(before.dynamic_scale.scale) / 2
      assert float(m["loss"]) == 0.0  # left out of the means (see host_mean below)
  skipped = precision.skipped_steps(state)
  assert 50 < skipped < 100 and int(state.step) == 100
  assert skipped == sum(int(m["skipped"]) for m in rows)
  assert max_abs_diff(params0, state.params) > 0  # the later steps trained
  means = host_mean(rows)  # the loss mean is over the applied steps only
  applied = [float(m["loss"]) for m in rows if m["skipped"] == 0.0]
  assert means["loss"] == pytest.approx(np.mean(applied), rel=1e-5)
  assert means["skipped"] == pytest.approx(skipped / 100)


def test_float16_matches_float32_closely_when_nothing_overflows():
  batch = planar_batch(64)
  f32 = create_train_state(models.build("mlp", widths=(16, 1), activation="relu"),
                           optax.sgd(0.1), batch["x"][:8], 0)
  f16 = _f16_state()
  step = jax.jit(make_train_step(bce_loss))
  for _ in range(20):
    f32, m32 = step(f32, batch)
    f16, m16 = step(f16, batch)
  assert precision.skipped_steps(f16) == 0
  assert abs(float(m32["loss"]) - float(m16["loss"])) < 1e-2
  assert max_abs_diff(f32.params, f16.params) < 2e-2


class _Rows:
  def __init__(self, batches):
    self.batches = batches

  def __call__(self, epoch):
    return self.batches


def test_nan_guard_ignores_skipped_steps_but_stops_at_the_scale_floor():
  batch = planar_batch(64)
  huge = {"x": batch["x"] * 1e5, "y": batch["y"]}  # float16 activations overflow: inf loss
  runner = Runner("jit")
  step = runner.compile(make_train_step(bce_loss))
  # Above the floor, an overflowing step is skipped and the run goes on.
  state, history = fit(_f16_state(), step, _Rows([huge, batch, batch]), runner=runner,
                       num_epochs=1, progress=False)
  assert precision.skipped_steps(state) == 1 and np.isfinite(history[0]["train"]["loss"])
  # A window in which every step was skipped has no loss to report, and is no divergence.
  state, history = fit(_f16_state(scale=2.0 ** 100), step, _Rows([batch, batch]),
                       runner=runner, num_epochs=1, progress=False, log_every=1)
  assert precision.skipped_steps(state) == 2 and history[0]["train"]["skipped"] == 1.0
  assert np.isnan(history[0]["train"]["loss"])
  # At the floor (scale 1) float16 cannot do better: the guard stops the run.
  with pytest.raises(NonFiniteLossError):
    fit(_f16_state(scale=precision.FLOOR), step, _Rows([huge, batch, batch]), runner=runner,
        num_epochs=1, progress=False, log_every=1)


@pytest.mark.parametrize("mode", ["pmap", "sharded"])
def test_float16_loss_scaling_gives_the_same_steps_in_every_mode(mode):
  batch = planar_batch(64)
  out = {}
  for m, devices in (("jit", None), (mode, 2)):
    runner = Runner(m, devices=devices)
    step = runner.compile(make_train_step(bce_loss))
    state = runner.put_state(_f16_state(scale=2.0 ** 20))
    for _ in range(12):
      state, _ = step(state, runner.put_batch(batch))
    out[m] = runner.get_state(state)
  a, b = out["jit"], out[mode]
  assert precision.skipped_steps(a) == precision.skipped_steps(b) > 0
  assert max_abs_diff(a.params, b.params) < 1e-3  # float16 rounding of the device sums


def _planar(workdir, *extra):
  from experiments import planar
  return planar.main(["--workdir", str(workdir), "--no-progress", "--nets", "0.3",
                      "--steps-scale", "0.1", *extra])


def _records(path):
  return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in open(path)]


def test_precision_switch_default_is_float32_bit_for_bit(tmp_path):
  a = _planar(tmp_path / "a")
  b = _planar(tmp_path / "b", "--precision", "float32")
  assert a["0.3"]["loss"] == b["0.3"]["loss"]
  assert _records(tmp_path / "a" / "metrics.jsonl") == _records(tmp_path / "b" / "metrics.jsonl")
  # bfloat16 runs the same experiment to a close loss (not the same bits).
  c = _planar(tmp_path / "c", "--precision", "bfloat16")
  assert abs(c["0.3"]["loss"] - a["0.3"]["loss"]) < 0.05
  for run, want in (("a", "float32"), ("c", "bfloat16")):  # summaries record it
    assert json.load(open(tmp_path / run / "summary.json"))["0.3"]["precision"] == want


def test_resume_with_another_precision_is_refused_by_name(tmp_path, capsys, monkeypatch):
  from experiments import vae
  args = ["--dataset", "digits", "--epochs", "1", "--score-samples", "0", "--no-progress",
          "--train-limit", "256", "--test-limit", "128", "--workdir", str(tmp_path)]
  # A scale that overflows: both steps of the epoch (256 / 128) are skipped, and the summary
  # counts them as the step metrics do.
  monkeypatch.setattr(precision, "INITIAL_SCALE", 2.0 ** 100)
  summary = vae.main(args + ["--precision", "float16"])
  monkeypatch.undo()
  history = [json.loads(line) for line in open(tmp_path / "history.jsonl")]
  assert history[0]["train"]["skipped"] == 1.0
  assert summary["2.8.1"]["precision"] == "float16" and summary["2.8.1"]["skipped_steps"] == 2
  with pytest.raises(SystemExit) as e:
    cli.entry(lambda: vae.main(args + ["--epochs", "2", "--resume", "--precision", "bfloat16"]))
  assert e.value.code == cli.EXIT_USAGE
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--precision" in err and "allow-change precision" in err
  # The same precision resumes (the loss scale is part of the checkpoint).
  summary = vae.main(args + ["--epochs", "2", "--resume", "--precision", "float16"])
  assert summary["2.8.1"]["epochs"] == 2 and np.isfinite(summary["2.8.1"]["test_loss"])
  # On purpose: the loss scale is dropped from the restored state.
  summary = vae.main(args + ["--epochs", "3", "--resume", "--precision", "float32",
                             "--allow-change", "precision"])
  assert summary["2.8.1"]["precision"] == "float32" and "skipped_steps" not in summary["2.8.1"]


def test_gan_refuses_float16_in_one_line(capsys):
  from experiments import gan
  with pytest.raises(SystemExit) as e:
    gan.main(["--precision", "float16"])
  assert e.value.code == 2 and "bfloat16" in capsys.readouterr().err


def test_float16_means_of_counted_metrics_leave_skipped_steps_out():
  """Metrics with a "count" (per-example weights) under loss scaling: the means are over the
  applied steps, "skipped" is the fraction of steps skipped, and a window in which every
  step was skipped is no divergence."""
  scale = precision.loss_scale("float16")

  def row(loss, count, applied):
    return precision.step_metrics({"loss": jnp.float32(loss), "count": jnp.float32(count)},
                                  scale, jnp.asarray(applied))

  means = host_mean([row(1.0, 2, True), row(50.0, 2, False), row(4.0, 6, True)])
  assert means["loss"] == pytest.approx((1.0 * 2 + 4.0 * 6) / 8)
  assert means["skipped"] == pytest.approx(1 / 3) and means["count"] == 8
  assert means["loss_scale"] == float(scale.scale)
  skipped = host_mean([row(50.0, 2, False), row(7.0, 2, False)])
  assert skipped["skipped"] == 1.0 and np.isnan(skipped["loss"]) and skipped["count"] == 0
  # fit treats such a window as skipped, not diverged.
  counted = lambda out, b: (bce_loss(out, b)[0], {"count": jnp.float32(b["y"].shape[0])})
  runner = Runner("jit")
  state, history = fit(_f16_state(scale=2.0 ** 100), runner.compile(make_train_step(counted)),
                       _Rows([planar_batch(64)] * 2), runner=runner, num_epochs=1,
                       progress=False, log_every=1)
  assert history[0]["train"]["skipped"] == 1.0 and precision.skipped_steps(state) == 2


def test_the_tagger_gives_float32_log_probabilities_in_bfloat16():
  """The NLL reads the tagger's log-softmax: computed and returned in float32, so each
  word's probabilities sum to 1 to float32 rounding (bfloat16 would be off by ~1e-2)."""
  model = models.build("lstm_tagger", dtype=jnp.bfloat16)
  xs = _inputs("lstm_tagger")
  logp = model.apply(_init(model, xs), *xs, train=False)
  assert logp.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(jax.nn.logsumexp(logp, axis=-1)))) < 1e-6


# Flax's LSTMCell keeps its carry (c, h) in param_dtype, so an RNN layer's output is float32;
# its gates (Dense layers) compute in bfloat16. The tagger returns float32 log-probabilities.
FLOAT32_OUTPUTS = {"lstm_regressor": {"['RNN_0']['__call__'][0]"},
                   "lstm_tagger": {"['__call__'][0]", "['lstm']['__call__'][0]"}}


def test_every_layer_computes_in_the_model_dtype():
  """Each submodule's output (Dense, Conv, ConvTranspose, BatchNorm, Embed, custom layers) is
  bfloat16 in a bfloat16 model: a layer that forgot `dtype` would compute in float32 and
  still hand the next layer a value, so the model's output alone would not show it."""
  for name in models.names():
    if name == "alexnet":  # its layers are LeNet's kinds at 224x224 (make test-all)
      continue
    model = models.build(name, dtype=jnp.bfloat16)
    xs = _inputs(name, 2)
    # Shapes and dtypes only (traced, not computed).
    _, state = jax.eval_shape(lambda: model.apply(
        _init(model, xs), *xs, train=True, rngs=RNGS, mutable=["batch_stats", "intermediates"],
        capture_intermediates=True))
    outputs = {jax.tree_util.keystr(p): leaf.dtype
               for p, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}
    assert outputs, name
    other = {k for k, d in outputs.items() if jnp.issubdtype(d, jnp.floating)
             and d != jnp.bfloat16}
    assert other == FLOAT32_OUTPUTS.get(name, set()), (name, other)
