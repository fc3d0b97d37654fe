"""Command lines: every option described with its default, shared options in every
experiment, choices and ranges checked when parsing, one-line errors."""
import importlib
import subprocess
import sys
import typing
import warnings

import pytest
import tyro.extras

from dlcore.harness import cli
from dlcore.train import MODES
from tests.test_package import ROOT

EXPERIMENTS = ["basics", "planar", "two_layer", "fizzbuzz", "spiral", "regularization", "lstm",
               "mnist_mlp", "cnn", "model_building", "vae", "gan"]
SHARED = ["--workdir", "--mode", "--devices", "--seed", "--seeds", "--resume"]


def _options(module):
  config = importlib.import_module(f"experiments.{module}").Config
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # get_parser: the argparse view
    parser = tyro.extras.get_parser(config)
  return {a.option_strings[0]: a.help for a in parser._actions if a.option_strings[0] != "-h"}


@pytest.mark.parametrize("module", EXPERIMENTS)
def test_every_option_has_a_description_and_a_default(module):
  options = _options(module)
  assert len(options) >= 5
  for flag, text in options.items():
    description, _, default = text.partition("(default:")
    assert default, f"{module} {flag}: no default shown"
    assert len(description.strip()) >= 10, f"{module} {flag}: no description"
  if module != "basics":  # basics takes no mode or resume: see its Config and the README
    assert set(SHARED) <= set(options), f"{module} lacks {set(SHARED) - set(options)}"


def test_mode_choices_are_the_runners_modes():
  assert typing.get_args(cli.Mode) == MODES


def test_optional_ints_and_tuples_parse():
  from experiments import gan, mnist_mlp

  cfg = cli.parse(gan.Config, ["--epochs", "3", "--train-limit", "500", "--variant", "cgan"])
  assert (cfg.epochs, cfg.data.train_limit, cfg.variant) == (3, 500, "cgan")
  assert cli.parse(gan.Config, []).epochs is None
  assert cli.parse(mnist_mlp.Config, ["--hidden", "200", "50"]).hidden == (200, 50)


@pytest.mark.parametrize("argv, message", [
    (["--fuse", "0"], "--fuse must be >= 1 (got 0)"),
    (["--devices", "0"], "--devices must be >= 1 (got 0)"),
    (["--steps-scale", "-1"], "--steps-scale must be >= 1e-06 (got -1.0)"),
])
def test_ranges_are_checked_when_parsing(argv, message, capsys):
  from experiments import planar

  with pytest.raises(SystemExit) as e:
    planar.main(argv)
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == f"error: {message}"


def test_rules_between_options_are_checked_when_parsing(capsys):
  from experiments import fizzbuzz

  with pytest.raises(SystemExit):
    fizzbuzz.main(["--epochs", "30", "--fuse", "20"])
  assert "--epochs 30 must be a multiple of --fuse 20" in capsys.readouterr().err


def test_tensorboard_without_tensorboardx_is_one_line(monkeypatch, capsys):
  from experiments import planar

  monkeypatch.setattr(cli, "tensorboard_available", lambda: False)
  with pytest.raises(SystemExit):
    planar.main(["--tensorboard"])
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "pip install 'dlcore[tb]'" in err


def test_bad_choice_is_an_error_naming_the_choices():
  out = subprocess.run([sys.executable, "-m", "experiments.planar", "--mode", "turbo"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert "invalid choice 'turbo'" in out.stderr and "'sharded'" in out.stderr


def test_help_runs_from_the_checkout():
  out = subprocess.run([sys.executable, "-m", "experiments.vae", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  assert "common options" in out and "--score-samples" in out and "--dataset" in out
  assert out.startswith("usage: python -m experiments.vae "), out[:120]  # not the file path

