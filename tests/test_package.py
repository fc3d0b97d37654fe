"""The package: the engine never imports the harness or heavy optional libraries, every
third-party import is declared, and the wheel holds dlcore only."""
import ast
import glob
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = ["models", "train", "data", "interop", "optim.py", "losses.py", "metrics.py",
          "checkpoint.py", "manual.py", "nnx.py", "parallel.py", "distributed.py", "launch.py"]


def _imports(path):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.module


def _files(*parts):
  out = []
  for p in parts:
    full = os.path.join(ROOT, "dlcore", p)
    out += sorted(glob.glob(os.path.join(full, "**", "*.py"), recursive=True)) if os.path.isdir(
        full) else [full]
  return out


def test_the_engine_never_imports_the_harness():
  offenders = [(os.path.relpath(f, ROOT), m) for f in _files(*ENGINE) for m in _imports(f)
               if m.startswith("dlcore.harness") or m.startswith("experiments")]
  assert not offenders


def test_importing_models_and_train_pulls_in_no_plotting_data_or_tensorboard():
  code = ("import sys, dlcore.models, dlcore.train, dlcore.checkpoint, dlcore.optim, "
          "dlcore.losses; heavy = ('matplotlib', 'tensorflow_datasets', 'tensorboardX', "
          "'dlcore.harness', 'tyro'); print([m for m in sys.modules if m.split('.')[0] in heavy "
          "or m.startswith('dlcore.harness')])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=True, cwd=ROOT)
  assert out.stdout.strip() == "[]"


def _declared():
  project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
  name = lambda req: re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
  core = {name(r) for r in project["dependencies"]}
  extras = {name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
  return core, extras


def test_every_third_party_import_is_declared():
  core, extras = _declared()
  dists = importlib.metadata.packages_distributions()
  missing = {}
  for f in _files("."):
    for module in _imports(f):
      top = module.split(".")[0]
      if top in sys.stdlib_module_names or top in ("dlcore", "__future__"):
        continue
      names = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
      if not names & (core | extras):
        missing[top] = os.path.relpath(f, ROOT)
  assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_wheel_holds_dlcore_only_and_builds_without_warnings(tmp_path):
  out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path),
                        ROOT], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  build_log = out.stdout + out.stderr
  assert "Warning" not in build_log and "!!" not in build_log, build_log[-3000:]
  wheel, = glob.glob(str(tmp_path / "dlcore-*.whl"))
  tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
  assert {t for t in tops if not t.endswith(".dist-info")} == {"dlcore"}
