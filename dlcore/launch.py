"""Start N processes of one experiment on this machine, like `torchrun --nproc-per-node N`.

    python -m dlcore.launch -n 2 experiments.mnist_mlp --mode sharded --dataset digits

Each process runs `python -m <module> <args...>` with `DLCORE_COORDINATOR` (a free port on
127.0.0.1), `DLCORE_NUM_PROCESSES` and `DLCORE_PROCESS_ID` set, which
`dlcore.distributed.initialize` reads. Process 0's output is shown here and every process's
output is kept in `<log-dir>/process-<i>.log`.

If a process fails (non-zero exit or a signal), the others are stopped (SIGTERM, then SIGKILL
after 5 s) and the launcher exits with that process's code, printing one line: which
process, how it ended, and where its log is. When every process finishes, it exits 0.
A SIGTERM to the launcher (a scheduler's preemption notice) is passed on to every process:
they agree on a step (`dlcore.preemption`), save it together and exit 143, and so does the
launcher.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from dlcore.jobenv import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, EXIT_PEER

GRACE_S = 5      # SIGTERM -> SIGKILL
TERM_GRACE_S = 90.0  # after a forwarded SIGTERM, how long the processes get to save and exit
SETTLE_S = 1.0   # after a failure, how long to wait for the others' exits to find the cause
FINISH_S = 60    # after one process finished well, how long the others may take


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _relay(pipe, log, out) -> None:
  """Copies process 0's output to the terminal and its log as it comes (bars included)."""
  for chunk in iter(lambda: pipe.read1(65536), b""):
    log.write(chunk)
    log.flush()
    out.write(chunk)
    out.flush()


def _ended(rc: int) -> str:
  if rc < 0:
    try:
      return f"was killed by {signal.Signals(-rc).name}"
    except ValueError:
      return f"was killed by signal {-rc}"
  return f"exited with code {rc}"


def _stop(procs) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
  deadline = time.monotonic() + GRACE_S
  for p in procs:
    try:
      p.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def launch(n: int, module: str, args: list[str], *, log_dir: str | None = None,
           port: int | None = None, python: str = sys.executable) -> int:
  """Runs the job; returns the exit code the launcher should end with."""
  log_dir = os.path.abspath(log_dir or tempfile.mkdtemp(prefix="dlcore-launch-"))
  os.makedirs(log_dir, exist_ok=True)
  address = f"127.0.0.1:{port or free_port()}"
  procs, logs, relays = [], [], []
  terminated = threading.Event()
  signalled: set[int] = set()

  def forward(signum=None, frame=None):  # a scheduler's SIGTERM: every process saves, stops
    terminated.set()
    for p in procs:
      if p.poll() is None and p.pid not in signalled:
        signalled.add(p.pid)
        with contextlib.suppress(ProcessLookupError):
          os.killpg(p.pid, signal.SIGTERM)

  # Before the first process starts: a SIGTERM at any moment reaches every process.
  previous = signal.signal(signal.SIGTERM, forward)
  try:
    for i in range(n):
      if terminated.is_set():
        break
      env = dict(os.environ, PYTHONUNBUFFERED="1", **{
          ENV_COORDINATOR: address, ENV_NUM_PROCESSES: str(n), ENV_PROCESS_ID: str(i)})
      log = open(os.path.join(log_dir, f"process-{i}.log"), "wb")
      logs.append(log)
      out = subprocess.PIPE if i == 0 else log
      # Own session: a stop reaches whatever the worker started, and Ctrl-C reaches us only.
      p = subprocess.Popen([python, "-m", module, *args], env=env, stdout=out,
                           stderr=subprocess.STDOUT, start_new_session=True)
      procs.append(p)
      if i == 0:
        t = threading.Thread(target=_relay, args=(p.stdout, log, sys.stdout.buffer),
                             daemon=True)
        t.start()
        relays.append(t)
    print(f"dlcore.launch: {n} processes of {module} (pids "
          f"{' '.join(str(p.pid) for p in procs)}), coordinator {address}, logs in {log_dir}",
          file=sys.stderr, flush=True)
    if terminated.is_set():
      forward()  # the processes started after the signal get it too
    code = _watch(procs, log_dir, terminated)
  except KeyboardInterrupt:  # Ctrl-C: a graceful stop as for SIGTERM; a second one: at once
    print("dlcore.launch: interrupted; every process saves and stops (Ctrl-C again: at once)",
          file=sys.stderr, flush=True)
    try:
      forward()
      _wait_terminated(procs)
    except KeyboardInterrupt:
      _stop(procs)
      print("dlcore.launch: stopped every process", file=sys.stderr)
    code = 130
  finally:
    signal.signal(signal.SIGTERM, previous)
  for t in relays:
    t.join(5)
  for log in logs:
    log.close()
  return code


def _watch(procs, log_dir: str, terminated: threading.Event | None = None) -> int:
  first_done = None
  while True:
    if terminated is not None and terminated.is_set():
      return _wait_terminated(procs)
    codes = [p.poll() for p in procs]
    failed = [i for i, rc in enumerate(codes) if rc not in (None, 0)]
    if failed:
      settle = time.monotonic() + SETTLE_S  # a dead process takes its peers down with it
      while time.monotonic() < settle and any(p.poll() is None for p in procs):
        time.sleep(0.05)
      codes = [p.poll() for p in procs]
      failed = [i for i, rc in enumerate(codes) if rc not in (None, 0)]
      # The cause: a process that did not just lose a peer (EXIT_PEER), else the first.
      cause = next((i for i in failed if codes[i] != EXIT_PEER), failed[0])
      others = [p for p in procs if p.poll() is None]
      _stop(others)
      rc = codes[cause]
      stopped = f"; stopped the other {len(others)}" if others else ""
      print(f"dlcore.launch: process {cause} {_ended(rc)}{stopped}; its log: "
            f"{os.path.join(log_dir, f'process-{cause}.log')}", file=sys.stderr, flush=True)
      return rc if rc > 0 else 128 - rc
    if all(rc == 0 for rc in codes):
      return 0
    if any(rc == 0 for rc in codes):
      first_done = first_done or time.monotonic()
      if time.monotonic() - first_done > FINISH_S:
        late = [i for i, rc in enumerate(codes) if rc is None]
        _stop([procs[i] for i in late])
        print(f"dlcore.launch: process {late[0]} was still running {FINISH_S} s after the "
              f"others finished and was stopped; its log: "
              f"{os.path.join(log_dir, f'process-{late[0]}.log')}", file=sys.stderr)
        return 1
    time.sleep(0.1)


def _wait_terminated(procs) -> int:
  """After a forwarded SIGTERM: the processes agree on a step, save it together and exit
  (143); none is cut short unless it overruns TERM_GRACE_S."""
  deadline = time.monotonic() + TERM_GRACE_S
  while time.monotonic() < deadline and any(p.poll() is None for p in procs):
    time.sleep(0.1)
  late = [p for p in procs if p.poll() is None]
  if late:
    _stop(late)
    print(f"dlcore.launch: {len(late)} process(es) had not stopped {TERM_GRACE_S} s after "
          "SIGTERM and were killed", file=sys.stderr, flush=True)
  codes = [p.poll() for p in procs]
  print(f"dlcore.launch: SIGTERM passed on to every process; exit codes {codes}",
        file=sys.stderr, flush=True)
  return 143 if all(c in (0, 143) for c in codes) else max(c if c > 0 else 128 - c
                                                           for c in codes)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m dlcore.launch",
      description="Run N processes of `python -m MODULE ARGS...` on this machine as one "
                  "jax.distributed job (CPU collectives through gloo).")
  parser.add_argument("-n", "--nproc", type=int, required=True,
                      help="number of processes (>= 1)")
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port on 127.0.0.1 (default: a free one)")
  parser.add_argument("--log-dir", default=None,
                      help="folder for process-<i>.log (default: a new temporary folder)")
  parser.add_argument("module", help="module to run, e.g. experiments.mnist_mlp")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
  ns = parser.parse_args(argv)
  if ns.nproc < 1:
    parser.error(f"-n must be >= 1 (got {ns.nproc})")
  raise SystemExit(launch(ns.nproc, ns.module, ns.args, log_dir=ns.log_dir, port=ns.port))


if __name__ == "__main__":
  main()
