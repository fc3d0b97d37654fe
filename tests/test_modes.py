"""eager == jit == pmap == sharded: the same pure step under every mode."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import data as dldata
from dlcore import models
from dlcore.train import Runner, create_train_state, make_train_step
from dlcore.train.state import variables_of
from dlcore.train.steps import fused_epoch, repeat_step, scan_steps
from tests.helpers import bce_loss, max_abs_diff, planar_batch, small_state


def run_steps(mode, n_steps=5, devices=None, batch=None, **state_kw):
  runner = Runner(mode, devices=devices)
  step = runner.compile(make_train_step(bce_loss))
  state = runner.put_state(small_state(**state_kw))
  batch = batch or planar_batch(64)
  losses = []
  for _ in range(n_steps):
    state, metrics = step(state, runner.put_batch(batch))
    losses.append(float(runner.get_output(metrics)["loss"]))
  return runner.get_state(state), losses


def test_eager_equals_jit():
  eager, l_eager = run_steps("eager")
  jitted, l_jit = run_steps("jit")
  assert max_abs_diff(eager.params, jitted.params) < 1e-5
  np.testing.assert_allclose(l_eager, l_jit, atol=1e-5)
  assert l_jit[-1] < l_jit[0]  # it trains


def test_dropout_draws_depend_only_on_step_so_modes_agree():
  kw = dict(widths=(32, 1), activation="relu", dropout=0.3)
  a, _ = run_steps("eager", **kw)
  b, _ = run_steps("jit", **kw)
  assert max_abs_diff(a.params, b.params) < 1e-5


@pytest.mark.parametrize("mode", ["pmap", "sharded"])
def test_data_parallel_equals_single_device_on_the_full_batch(mode):
  """Four host devices each take 16 of the 64 examples; averaging gradients over devices
  gives the full-batch gradient, so parameters match one device to float32 rounding."""
  assert jax.local_device_count() >= 4
  single, l1 = run_steps("jit")
  multi, l4 = run_steps(mode, devices=4)
  assert max_abs_diff(single.params, multi.params) < 1e-5
  assert max_abs_diff(single.opt_state, multi.opt_state) < 1e-5
  np.testing.assert_allclose(l1, l4, atol=1e-5)


@pytest.mark.parametrize("mode", ["pmap", "sharded"])
def test_batchnorm_statistics_are_the_whole_batchs(mode):
  """MLP(batchnorm=True) built without any axis name: 2 devices equal one device."""
  kw = dict(widths=(8, 1), activation="relu", batchnorm=True)
  ref, l_ref = run_steps("jit", **kw)
  state, l_par = run_steps(mode, devices=2, **kw)
  assert np.abs(np.asarray(ref.batch_stats["bn1"]["mean"])).max() > 0  # stats did move
  assert max_abs_diff(ref.batch_stats, state.batch_stats) < 1e-5
  assert max_abs_diff(ref.params, state.params) < 1e-5
  np.testing.assert_allclose(l_ref, l_par, atol=1e-5)


@pytest.mark.parametrize("mode", ["pmap", "sharded"])
def test_dropout_masks_are_the_same_in_data_parallel_modes(mode):
  """Each device takes its slice of the whole batch's dropout mask, so pmap and sharded
  drop the units one device drops."""
  kw = dict(widths=(32, 1), activation="relu", dropout=0.3)
  ref, _ = run_steps("jit", **kw)
  other, _ = run_steps(mode, devices=4, **kw)
  assert max_abs_diff(ref.params, other.params) < 1e-5


@pytest.mark.parametrize("mode,devices", [("pmap", 4), ("sharded", 4), ("sharded", 3)])
def test_a_batch_that_does_not_divide_runs_whole(mode, devices):
  """30 examples over 4 (or 3 over 4...) devices: the batch is neither dropped nor padded;
  it runs whole with the replicated state, so the step is jit's step on the same 30."""
  kw = dict(widths=(8, 1), activation="relu", batchnorm=True)
  batch = planar_batch(30 if devices == 4 else 31)
  ref, l_ref = run_steps("jit", n_steps=3, batch=batch, **kw)
  other, l_other = run_steps(mode, n_steps=3, devices=devices, batch=batch, **kw)
  assert max_abs_diff(ref.params, other.params) < 1e-5
  assert max_abs_diff(ref.batch_stats, other.batch_stats) < 1e-5
  np.testing.assert_allclose(l_ref, l_other, atol=1e-5)


def _stateful_models():
  """Every registry model that keeps batch statistics, found by initialising it."""
  out = []
  for name in models.names():
    inputs = models.example_inputs(name)
    shapes = jax.eval_shape(lambda: models.build(name).init(jax.random.PRNGKey(0), *inputs))
    if "batch_stats" in shapes:
      out.append(name)
  return out


STATEFUL = _stateful_models()


def test_the_registry_has_models_with_batch_statistics():
  assert {"mnist_mlp", "dcgan_generator", "dcgan_discriminator"} <= set(STATEFUL)


@pytest.mark.parametrize("name", STATEFUL)
def test_every_model_with_batch_statistics_trains_alike_in_every_mode(name):
  """models.build(name) only, 3 SGD steps on one global batch of 8: jit == pmap == sharded
  (2 host devices) on params and batch_stats."""
  inputs = models.example_inputs(name, batch=8)
  assert len(inputs) == 1, f"{name} takes labels; extend this test"
  rng = np.random.default_rng(0)
  x = rng.normal(size=inputs[0].shape).astype(inputs[0].dtype)
  loss = lambda out, b: (jnp.mean(jnp.square(out - b["t"])), {})  # noqa: E731
  results = {}
  for mode in ("jit", "pmap", "sharded"):
    runner = Runner(mode, devices=None if mode == "jit" else 2)
    state = create_train_state(models.build(name), optax.sgd(0.01), x[:2], 0)
    step = runner.compile(make_train_step(loss))
    out = jax.eval_shape(lambda: state.apply_fn(variables_of(state), x, train=False))
    batch = {"x": x, "t": rng.normal(size=out.shape).astype(np.float32)} if not results \
        else results["batch"]
    results.setdefault("batch", batch)
    state = runner.put_state(state)
    for _ in range(3):
      state, _ = step(state, runner.put_batch(batch))
    results[mode] = runner.get_state(state)
  ref = results["jit"]
  assert max_abs_diff(ref.params, create_train_state(
      models.build(name), optax.sgd(0.01), x[:2], 0).params) > 1e-4  # it trained
  for mode in ("pmap", "sharded"):
    assert max_abs_diff(ref.params, results[mode].params) < 1e-5, mode
    assert max_abs_diff(ref.batch_stats, results[mode].batch_stats) < 1e-5, mode


def test_unknown_mode_and_too_many_devices_are_clear_errors():
  with pytest.raises(ValueError, match="unknown mode 'fast'"):
    Runner("fast")
  with pytest.raises(ValueError, match="--devices 64"):
    Runner("pmap", devices=64)


def test_long_pmap_run_does_not_deadlock():
  """DESIGN.md: in-flight pmap calls deadlocked the CPU all-reduce after a few hundred steps;
  the runner waits for each step. 1500 steps on 2 devices must finish."""
  state, losses = run_steps("pmap", n_steps=1500, devices=2, batch=planar_batch(8))
  assert int(state.step) == 1500 and np.isfinite(losses[-1])


def test_jit_step_compiles_once():
  runner = Runner("jit")
  step = chex.assert_max_traces(make_train_step(bce_loss), n=1)
  step = runner.compile(step)
  state = small_state()
  for _ in range(4):
    state, _ = step(state, planar_batch(32))


def test_repeat_step_equals_a_loop_of_steps():
  step = make_train_step(bce_loss)
  batch = planar_batch(64)
  looped = small_state()
  jstep = jax.jit(step)
  for _ in range(20):
    looped, _ = jstep(looped, batch)
  fused, metrics = jax.jit(repeat_step(step, 20))(small_state(), batch)
  assert metrics["loss"].shape == (20,)
  assert int(fused.step) == 20
  assert max_abs_diff(looped.params, fused.params) < 1e-6


def test_fused_epoch_equals_in_order_minibatches():
  """7 full batches and one partial, as FizzBuzz's epochs."""
  step = make_train_step(bce_loss)
  data = planar_batch(100)
  looped, jstep = small_state(), jax.jit(step)
  for b in dldata.batches(data, 16):
    looped, _ = jstep(looped, b)
  fused, _ = jax.jit(fused_epoch(step))(small_state(), dldata.stacked_epoch(data, 16))
  assert int(fused.step) == int(looped.step) == 7
  assert max_abs_diff(looped.params, fused.params) < 1e-6
  scanned, _ = jax.jit(scan_steps(step))(small_state(),
                                         dldata.stacked_epoch(data, 16)["full"])
  assert int(scanned.step) == 6
