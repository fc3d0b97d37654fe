"""The planted breaks of `tests/mutations.py` still apply: each names code that exists once,
and tests that exist (a break whose code moved would silently test nothing)."""
import os

import pytest

from tests.mutations import BREAKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_break_names_code_and_tests_that_exist(name):
  b = BREAKS[name]
  with open(os.path.join(ROOT, b["file"])) as f:
    assert f.read().count(b["old"]) == 1, f"{name}: update its `old` text in tests/mutations.py"
  assert b["old"] != b["new"]
  for test in (t for t in b["tests"] if t.startswith("tests/")):  # (others: pytest options)
    path, _, func = test.partition("::")
    with open(os.path.join(ROOT, path)) as f:
      assert not func or f"def {func.split('[')[0]}(" in f.read(), f"{name}: no {test}"
