"""One module per chapter, each run as `python -m experiments.<name>`.

Run as a program, this package handles SIGTERM and Ctrl-C from its first import on: a stop
while Python imports JAX and the rest (seconds) ends in one line and exit 143 / 130, not in
a traceback or a silent kill. `dlcore.harness.cli.entry` replaces these handlers with
`dlcore.preemption`'s for the run itself and puts them back afterwards.
"""
import signal
import sys


def _stop(signum, frame):
  name = signal.Signals(signum).name
  sys.stderr.write(f"error: {name}: stopped outside training (nothing in progress to save); "
                   "continue with the same command and --auto-resume (or --resume)\n")
  raise SystemExit(128 + signum)


# `python -m` sets sys.argv[0] to "-m" while it imports the module's packages: only a
# program installs handlers, never an `import experiments.vae` in someone's code or tests.
if sys.argv[:1] == ["-m"]:
  for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, _stop)
