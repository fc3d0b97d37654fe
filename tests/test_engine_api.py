"""fit's keyed evaluators and writers, random streams found by the step, the cached and
hashed scoring classifier."""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import data as dldata
from dlcore import losses, models
from dlcore.data import images
from dlcore.harness import scoring
from dlcore.harness.writers import ConsoleWriter, JsonlWriter
from dlcore.train import (Runner, batch_evaluator, create_train_state, fit, make_eval_step,
                          make_train_step)
from tests.helpers import bce_loss, planar_batch, small_state


class Recorder:
  def __init__(self):
    self.rows = []

  def write(self, split, step, metrics, **extra):
    self.rows.append((split, step, dict(metrics), extra))


def _fit(evaluators, num_epochs=3, writer=None):
  runner = Runner("jit")
  data = planar_batch(64)
  return fit(small_state(), runner.compile(make_train_step(bce_loss)), lambda e: [data],
             runner=runner, num_epochs=num_epochs, evaluators=evaluators, eval_seed=7,
             writer=writer, progress=False)


def test_evaluators_get_a_fixed_key_and_run_when_due():
  seen = []

  def sampled(state, key):
    seen.append(np.asarray(key))
    return {"noise": float(jax.random.normal(key))}

  def at_end(state, key):
    return {"final_only": 1.0}

  at_end.every = None
  writer = Recorder()
  _, history = _fit([sampled, at_end], writer=writer)
  assert [sorted(h["eval"]) for h in history] == [["noise"], ["noise"], ["final_only", "noise"]]
  assert all(np.array_equal(k, seen[0]) for k in seen)  # the same key every epoch
  assert history[0]["eval"]["noise"] == history[2]["eval"]["noise"]
  _, again = _fit([sampled, at_end])
  assert again[-1]["eval"] == history[-1]["eval"]  # deterministic across runs
  evals = [r for r in writer.rows if r[0] == "eval"]
  assert [r[1] for r in evals] == [1, 2, 3] and evals[-1][3] == {"epoch": 2}


def test_batch_evaluator_weights_by_count_and_folds_the_key_per_batch():
  runner = Runner("jit")
  state = small_state()
  x = planar_batch(10)
  metrics = lambda out, b: {"accuracy": losses.accuracy(out, b["y"]),  # noqa: E731
                            "count": jnp.asarray(b["y"].shape[0], jnp.float32)}
  ev = batch_evaluator(runner.compile_eval(make_eval_step(metrics)),
                       lambda: dldata.batches(x, 3))
  whole = float(losses.accuracy(state.apply_fn({"params": state.params}, x["x"], train=False),
                                x["y"]))
  assert ev(state, jax.random.PRNGKey(0))["accuracy"] == pytest.approx(whole, abs=1e-6)
  keys = []
  keyed = batch_evaluator(lambda s, b, k: keys.append(np.asarray(k)) or {"n": 1.0},
                          lambda: dldata.batches(x, 5), uses_key=True)
  keyed(state, jax.random.PRNGKey(0))
  assert len(keys) == 2 and not np.array_equal(keys[0], keys[1])


class Noisy(nn.Module):
  """Draws from two streams in training: dropout and its own "jitter"."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Dense(1)(x)
    if train:
      x = x + 0.1 * jax.random.normal(self.make_rng("jitter"), x.shape)
    return nn.Dropout(0.5, deterministic=not train)(x)


def test_the_step_finds_the_random_streams_a_model_needs():
  batch = planar_batch(32)
  state = create_train_state(Noisy(), optax.sgd(0.1), batch["x"][:2])
  learned = jax.jit(make_train_step(bce_loss))
  explicit = jax.jit(make_train_step(bce_loss, rng_streams=("dropout", "jitter")))
  a, ma = learned(state, batch)
  b, mb = explicit(state, batch)
  assert float(ma["loss"]) == float(mb["loss"])
  with pytest.raises(Exception, match='needs PRNG for "jitter"'):
    jax.jit(make_train_step(bce_loss, rng_streams=("dropout",)))(state, batch)


def test_the_vae_trains_without_naming_its_noise_stream():
  model = models.build("vae")
  x = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
  state = create_train_state(model, optax.adam(1e-3), x[:2])

  def loss_fn(out, batch):
    logits, mu, log_var = out
    return losses.vae_loss(logits, batch["x"], mu, log_var)

  state, metrics = jax.jit(make_train_step(loss_fn))(state, {"x": x})
  assert set(metrics) == {"loss", "bce", "kl"} and np.isfinite(float(metrics["loss"]))


def test_console_writer_prints_one_line_per_row(capsys):
  ConsoleWriter(("eval",)).write("eval", 120, {"loss": 0.123456, "acc": 0.5}, epoch=2)
  ConsoleWriter(("eval",)).write("train", 120, {"loss": 1.0})
  assert capsys.readouterr().out == "[eval] step 120 (epoch 3): loss 0.1235, acc 0.5\n"


def test_jsonl_writer_rows(tmp_path):
  w = JsonlWriter(str(tmp_path / "m.jsonl"))
  w.write("train", 3, {"loss": np.float32(0.5)}, epoch=0)
  row = (tmp_path / "m.jsonl").read_text()
  assert '"split": "train", "step": 3, "epoch": 0, "loss": 0.5' in row


def test_the_scorer_is_trained_once_cached_and_identified(tmp_path, monkeypatch):
  from dlcore.models import layers
  monkeypatch.setenv("DLCORE_CACHE", str(tmp_path))
  data = images.load("digits").subset(300, 200)
  # The scorer keeps the convolutions its published numbers came from: patches for conv1,
  # never shift_conv (a chapter 6 CNN outside it does use shift_conv: the spy works).
  shifted, real = [], layers.shift_conv
  monkeypatch.setattr(layers, "shift_conv", lambda *a: shifted.append(1) or real(*a))
  first = scoring.load_or_train_scorer(data, epochs=1, progress=False)
  first.features(data.test_x[:10])
  assert shifted == []
  cnn = models.build("cnn")
  cnn.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert shifted  # and the settings are restored after the scorer
  assert (layers.SHIFT_CONV_MIN_FEATURES, layers.SCATTER_GRAD_MAX_CHANNELS,
          layers.TILE_POOL_VJP) == (16, 8, True)
  assert first.trained_here and first.path.startswith(str(tmp_path / "scorers" / "cnn-digits-"))
  second = scoring.load_or_train_scorer(data, epochs=1, progress=False)
  assert not second.trained_here and second.sha256 == first.sha256
  assert second.test_accuracy == first.test_accuracy
  # Trained again from scratch elsewhere: the same weights (deterministic training).
  other = scoring.load_or_train_scorer(data, str(tmp_path / "again"), epochs=1, progress=False)
  assert other.trained_here and other.sha256 == first.sha256
  changed = jax.tree.map(lambda a: a, first.variables)
  changed["params"]["fc2"]["bias"] = np.asarray(changed["params"]["fc2"]["bias"]) + 1e-3
  assert scoring.weights_hash(changed) != first.sha256
  assert first.describe()["weights_sha256"] == first.sha256


def _fit_batches(tmp_path, *, log_every=50, save_every_steps=None, writer=None, epochs=1):
  """fit over 7 different batches an epoch, checkpointing into tmp_path when asked."""
  from dlcore.checkpoint import Checkpointer
  runner = Runner("jit")
  batches = [planar_batch(16 * (i + 1)) for i in range(7)]
  ckpt = (Checkpointer(str(tmp_path), save_every_steps=save_every_steps, max_to_keep=10)
          if save_every_steps else None)
  try:
    _, history = fit(small_state(), runner.compile(make_train_step(bce_loss)),
                     lambda e: batches, runner=runner, num_epochs=epochs, log_every=log_every,
                     writer=writer, checkpointer=ckpt, progress=False)
  finally:
    if ckpt is not None:
      ckpt.close()
  return history


def test_train_metrics_are_written_every_log_every_calls_and_at_the_epoch_end(tmp_path):
  writer = Recorder()
  history = _fit_batches(tmp_path, log_every=3, writer=writer)
  assert [r[1] for r in writer.rows if r[0] == "train"] == [3, 6, 7]
  assert history[0]["step"] == 7
  # the log interval never changes the epoch's numbers
  assert _fit_batches(tmp_path, log_every=1)[0]["train"] == history[0]["train"]
  assert _fit_batches(tmp_path, log_every=50)[0]["train"] == history[0]["train"]


def test_a_mid_epoch_checkpoint_keeps_the_epoch_rows_so_far(tmp_path):
  from dlcore.checkpoint import Checkpointer
  writer = Recorder()
  _fit_batches(tmp_path, save_every_steps=3, log_every=1, writer=writer)
  ckpt = Checkpointer(str(tmp_path))
  assert {3, 6, 7} <= set(ckpt.all_steps())
  extra = ckpt.extra(6)
  ckpt.close()
  assert extra["epoch"] == 0
  written = [r[2]["loss"] for r in writer.rows if r[0] == "train"]  # one row a step
  # steps 1..6 of the epoch, as the steps gave them (a resume averages them with the rest)
  assert [r["loss"] for r in extra["epoch_rows"]] == pytest.approx(written[:6], rel=1e-6)


def test_a_checkpoint_never_runs_ahead_of_the_epoch_record(tmp_path):
  from dlcore.checkpoint import Checkpointer
  seen = []

  class Epochs(Recorder):
    def write_epoch(self, record):  # the epoch's save comes after its record
      with contextlib.closing(Checkpointer(str(tmp_path))) as ckpt:
        seen.append((record["step"], ckpt.latest_step()))

  _fit_batches(tmp_path, save_every_steps=7, writer=Epochs(), epochs=2)
  assert [s for s, _ in seen] == [7, 14] and seen[1][1] == 7
  assert all(latest is None or latest < step for step, latest in seen)


def test_a_classifiers_final_test_numbers_are_its_last_evaluation_and_a_fresh_one(
    monkeypatch):
  """train_classifier takes the last epoch's evaluation as the final numbers (no second pass
  over the test set); they equal a fresh evaluate_classifier of the returned state, bit for
  bit, and differ from the epoch before (so the last one was taken)."""
  from dlcore.data.transforms import ImagePipeline
  from dlcore.train import Runner
  from dlcore.train import classify
  data = images.load("digits", progress=False)
  pipe = ImagePipeline("unit")
  evaluate_classifier = classify.evaluate_classifier
  passes = []
  monkeypatch.setattr(classify, "evaluate_classifier",
                      lambda *a, **k: passes.append(1) or evaluate_classifier(*a, **k))
  run = classify.train_classifier(models.build("mlp", widths=(32, 10)), data,
                                  optax.sgd(0.05), pipeline=pipe, batch_size=64, epochs=2,
                                  runner=Runner("jit"), progress=False)
  assert not passes  # no second pass over the test set
  fresh = evaluate_classifier(run.state, data.test(), pipe)
  assert (run.test_loss, run.test_accuracy) == (fresh["loss"], fresh["accuracy"])
  assert run.history[-2]["eval"]["loss"] != run.test_loss
