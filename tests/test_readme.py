"""The README's python snippets run as written (those that import torch skip without it)."""
import contextlib
import importlib.util
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_is_a_front_page():
  assert len(README.splitlines()) <= 300
  assert len(SNIPPETS) >= 4
  for link in re.findall(r"\]\(([^)#]+)\)", README):
    if not link.startswith("http"):
      assert os.path.exists(os.path.join(ROOT, link)), f"README links to missing {link}"


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_as_written(index):
  code = SNIPPETS[index]
  if re.search(r"^import torch|^from torch", code, re.M) and not importlib.util.find_spec(
      "torch"):
    pytest.skip("needs PyTorch: pip install -e '.[torch]'")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, f"README.md snippet {index}", "exec"), {"__name__": "readme"})
  assert out.getvalue().strip(), "every snippet prints what it shows"


def test_the_docs_link_nothing_outside_the_repository():
  """README.md and docs/ stand on their own: every relative link resolves to a file of the
  repository, and no text points at the folders beside it (../shared)."""
  pages = [os.path.join(ROOT, "README.md")] + [
      os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "docs")) for f in fs
      if f.endswith(".md")]
  for page in pages:
    text = open(page).read()
    assert "../shared" not in text and "SPEC.md" not in text, page
    for link in re.findall(r"\]\(([^)#\s]+)", text):
      if link.startswith(("http://", "https://")):
        continue
      target = os.path.realpath(os.path.join(os.path.dirname(page), link))
      assert target.startswith(ROOT + os.sep) and os.path.exists(target), (page, link)


def make_run_endings() -> dict[str, re.Pattern]:
  """The README's table "What `make run` trains, by machine": dataset -> the last line it
  promises, as a pattern (its numbers, or the placeholder L, stand for any number)."""
  rows = re.findall(r"^\|[^|]+\|[^|]+\| `(VAE on (\w+)[^`]*)` \|", README, re.M)
  endings = {}
  for line, name in rows:
    pattern = re.sub(r"(?:\d+\.\d+|\bL\b)", "NUMBER", line)
    endings[name] = re.compile(re.escape(pattern).replace("NUMBER", r"\d+\.\d+") + "$")
  return endings


def test_the_readme_says_what_make_run_ends_with_on_each_machine():
  endings = make_run_endings()
  assert set(endings) == {"mnist", "fashion_mnist", "digits"}
  assert endings["digits"].match(
      "VAE on digits (mnist, fashion_mnist not available): test loss 25.60 per sample")
  assert not endings["digits"].match("VAE on digits: test loss 25.60 per sample")
