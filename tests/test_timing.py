"""A run's account of where its time went (`dlcore.timing`, summary.json's "timings")."""
import json
import time

import jax
import jax.numpy as jnp
import pytest

from dlcore import timing


@pytest.fixture(autouse=True)
def fresh():
  timing.reset()
  yield
  timing.reset()


def test_nested_sections_count_once_and_the_parts_add_up():
  with timing.section("outer"):
    time.sleep(0.2)
    with timing.section("inner"):
      time.sleep(0.3)
  got = timing.report()
  assert got["inner"] == pytest.approx(0.3, abs=0.05)
  assert got["outer"] == pytest.approx(0.2, abs=0.05)  # not 0.5: inner's time is inner's
  assert got["other"] < 0.05  # all of the time is in the two sections


def test_compilation_is_taken_out_of_the_section_that_compiled():
  x = jnp.ones((64, 64)).block_until_ready()
  timing.reset()  # (making x compiled two small programs)

  def f(x):  # a jit inside a jit: its tracing is inside the outer one, counted once
    inner = jax.jit(lambda y: jnp.tanh(y) @ y)
    for i in range(40):  # enough work that compiling, not JAX's bookkeeping, dominates
      x = inner(x) + jnp.sin(x * i)
    return x.sum()

  # A real compilation of some size: a warm persistent cache would make it a read, and a tiny
  # program (~40 ms) leaves JAX's bookkeeping outside the compile events a large, varying
  # share (both seen failing in full runs).
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    with timing.section("steps"):
      start = time.perf_counter()
      jax.jit(f).lower(x).compile()
      took = time.perf_counter() - start
  finally:
    jax.config.update("jax_enable_compilation_cache", before)
  got = timing.report()
  assert got["compilation"] > 0.5 * took  # (the rest: JAX's own bookkeeping)
  assert got["compilation"] <= took + 0.01
  assert got["compilation"] + got["steps"] == pytest.approx(took, abs=0.01)


def test_a_whole_section_keeps_what_runs_inside_it():
  with timing.section("helper model", whole=True):
    with timing.section("training steps"):
      time.sleep(0.2)
  got = timing.report()
  assert "training steps" not in got and got["helper model"] == pytest.approx(0.2, abs=0.05)


def test_a_run_records_where_its_time_went(tmp_path):
  from experiments import vae
  vae.main(["--dataset", "digits", "--epochs", "2", "--train-limit", "256", "--test-limit",
            "128", "--score-samples", "0", "--workdir", str(tmp_path), "--no-progress"])
  got = json.load(open(tmp_path / "summary.json"))["timings"]
  for part in ("data", "compilation", "training steps", "metrics", "evaluation", "figures",
               "checkpoints", "epoch callbacks", "other"):
    assert part in got, part
  assert sum(v for k, v in got.items() if k != "total") == pytest.approx(got["total"], rel=0.01)
  assert got["figures"] > 0 and got["training steps"] > 0
