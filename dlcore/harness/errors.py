"""The harness's error types and the option spelling they use, in one place (the command
line and the run directory both raise them; `cli.entry` maps them to exit codes)."""
from __future__ import annotations


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the option and the fix."""


class RunDirError(Exception):
  """A run directory that cannot be used as asked; the message names the fix."""


def flag(path: str) -> str:
  """The command-line flag of a config field path: "common.allow_change" -> --allow-change."""
  return "--" + path.rsplit(".", 1)[-1].replace("_", "-")
