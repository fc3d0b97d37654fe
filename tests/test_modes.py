"""eager == jit == pmap == sharded: the same pure step under every mode."""
import chex
import jax
import numpy as np
import pytest

from dlcore import data as dldata
from dlcore.train import Runner, make_train_step
from dlcore.train.steps import fused_epoch, repeat_step, scan_steps
from tests.helpers import bce_loss, max_abs_diff, planar_batch, small_state


def run_steps(mode, n_steps=5, devices=None, batch=None, **state_kw):
  runner = Runner(mode, devices=devices)
  step = runner.compile(make_train_step(bce_loss, axis_name=runner.axis_name))
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


def test_batchnorm_statistics_are_averaged_over_devices():
  kw = dict(widths=(8, 1), activation="relu", batchnorm=True)
  _, _ = run_steps("jit", **kw)
  state, _ = run_steps("pmap", devices=2, **kw)
  # Running means are the average of the two devices' batch means: finite, and moved off 0.
  mean = np.asarray(state.batch_stats["bn1"]["mean"])
  assert np.all(np.isfinite(mean)) and np.abs(mean).max() > 0


def test_pmap_rejects_a_batch_that_does_not_divide():
  runner = Runner("pmap", devices=4)
  with pytest.raises(ValueError, match="does not divide over 4 devices"):
    runner.put_batch(planar_batch(30))


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
