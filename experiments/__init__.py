"""One module per chapter, each run as `python -m experiments.<name>`.

Run as a program, this package handles SIGTERM and Ctrl-C from its first import on
(`dlcore.preemption.early`): a stop while Python imports JAX and the rest (seconds) ends in
one line and exit 143 / 130, not in a traceback or a silent kill.
`dlcore.harness.cli.entry` takes over for the run itself and hands back afterwards.
"""
import sys

# `python -m` sets sys.argv[0] to "-m" while it imports the module's packages: only a
# program installs handlers, never an `import experiments.vae` in someone's code or tests.
if sys.argv[:1] == ["-m"]:
  from dlcore import preemption

  preemption.early()
