"""Several processes on JAX's distributed runtime: joining a job, with waits that end.

    dlcore.distributed.initialize()      # reads DLCORE_* (set by `python -m dlcore.launch`)
    dlcore.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)

Where the job's shape comes from, first match wins: the arguments; the environment variables
`DLCORE_COORDINATOR`, `DLCORE_NUM_PROCESSES`, `DLCORE_PROCESS_ID` (the launcher sets them);
a cluster JAX detects by itself (SLURM's `srun` with more than one task, Open MPI's
`mpirun`), through `jax.distributed.initialize()`'s own detection. Nothing found: one
process, and nothing happens.

JAX's defaults wait 300 s for the other processes and notice a dead one after 100 s, then
abort with a C++ stack. Here a process that cannot join within `timeout` seconds (default
30, `DLCORE_CONNECT_TIMEOUT`) stops with one line naming the missing process, and each
process watches the others' beats in the coordinator's key-value store: a peer silent for
`PEER_S` seconds (one that exits normally says so first) ends this process with one line and
exit code `EXIT_PEER`, before JAX's own heartbeat check would abort it. CPU collectives go
through gloo, which JAX needs for more than one CPU process.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax

from dlcore import preemption

from dlcore.jobenv import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, EXIT_PEER  # noqa
ENV_CONNECT_TIMEOUT = "DLCORE_CONNECT_TIMEOUT"
CONNECT_TIMEOUT_S = 30  # how long a process waits for the others to join
HEARTBEAT_S = 20  # JAX's: after it, the runtime aborts the process with a C++ stack
PEER_S = 10       # ours: a peer silent this long is gone; ends the process first, in a line
BEAT_S = 0.5
SHUTDOWN_S = 60   # the exit barrier: how long a finished process waits for slower peers


class DistributedError(RuntimeError):
  """The job's processes could not be joined or lost one another; the message says which."""


_joined = False


def _cluster_detected() -> bool:
  """A multi-task SLURM step or Open MPI job, which jax.distributed detects by itself."""
  for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
    try:
      if int(os.environ.get(var, "1")) > 1:
        return True
    except ValueError:
      pass
  return False


def settings(coordinator: str | None = None, num_processes: int | None = None,
             process_id: int | None = None) -> tuple[str, int, int] | str | None:
  """(coordinator, num_processes, process_id) from the arguments or environment, "auto" for
  a detected cluster, None for a single process."""
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
  env_n, env_id = os.environ.get(ENV_NUM_PROCESSES), os.environ.get(ENV_PROCESS_ID)
  try:
    num_processes = num_processes if num_processes is not None else (
        int(env_n) if env_n else None)
    process_id = process_id if process_id is not None else (int(env_id) if env_id else None)
  except ValueError:
    raise DistributedError(f"{ENV_NUM_PROCESSES}={env_n!r} and {ENV_PROCESS_ID}={env_id!r} "
                           "must be integers") from None
  given = {"--coordinator": coordinator, "--num-processes": num_processes,
           "--process-id": process_id}
  if all(v is None for v in given.values()):
    return "auto" if _cluster_detected() else None
  missing = [flag for flag, v in given.items() if v is None]
  if missing and not (num_processes == 1 and process_id in (None, 0)):
    raise DistributedError(f"a job of several processes needs {', '.join(given)}; "
                           f"missing: {', '.join(missing)}")
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f"--num-processes must be >= 1 (got {num_processes})")
  if num_processes == 1:
    return None
  if not 0 <= process_id < num_processes:
    raise DistributedError(f"--process-id {process_id} is outside 0..{num_processes - 1}")
  if ":" not in coordinator:
    raise DistributedError(f"--coordinator {coordinator!r} must be host:port")
  return coordinator, num_processes, process_id


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: float | None = None,
               watch_peers: bool = True) -> bool:
  """Joins the job (see the module doc); returns whether there is more than one process.
  Must run before JAX's first computation. A process that cannot join within `timeout`
  seconds writes one line to stderr and exits with code `EXIT_PEER`; so does one whose
  peer goes silent, unless `watch_peers=False`."""
  global _joined
  found = settings(coordinator, num_processes, process_id)
  if found is None:
    return False
  if _joined:
    return jax.process_count() > 1
  timeout = float(timeout or os.environ.get(ENV_CONNECT_TIMEOUT) or CONNECT_TIMEOUT_S)
  # CPU processes all-reduce through gloo; GPUs use NCCL and ignore this CPU-only setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # JAX's preemption service would replace dlcore's SIGTERM handler with its own, which acts
  # only at sync points inside training: dlcore.preemption runs the same protocol itself.
  jax.config.update("jax_enable_preemption_service", False)
  if found == "auto":
    address, n, pid, where = None, None, None, "the cluster's coordinator"
  else:
    address, n, pid = found
    where = f"the coordinator at {address}"
  done = threading.Event()

  def stop_joining(name: str) -> None:
    # A signal while this process waits to join (blocked in C, where no Python handler
    # runs): leave now, in one line, rather than when the join times out.
    if not done.is_set():
      sys.stderr.write(f"error: {preemption.Preempted(name)}\n")
      sys.stderr.flush()
      os._exit(preemption.EXIT_CODES.get(name, 1))

  if threading.current_thread() is threading.main_thread():
    preemption.watch_blocked(stop_joining)

  def watchdog():
    # JAX's own deadline aborts the process with a C++ stack; this one ends first, in a line.
    if done.wait(timeout):
      return
    if n == 2:
      missing = f"process {1 - pid}"
    elif n:
      missing = f"one of processes {', '.join(str(i) for i in range(n) if i != pid)}"
    else:
      missing = "a process of the job"
    _die(f"process {pid if pid is not None else '?'} of {n or '?'}: {missing} did not join "
         f"{where} within {timeout:.0f} s; start every process (each with its own "
         "--process-id) or check the address and port")

  threading.Thread(target=watchdog, name="dlcore-join-watchdog", daemon=True).start()
  try:
    jax.distributed.initialize(address, n, pid, initialization_timeout=int(timeout) + 30,
                               heartbeat_timeout_seconds=HEARTBEAT_S,
                               shutdown_timeout_seconds=SHUTDOWN_S)
  finally:
    done.set()
  _joined = True
  if jax.process_count() > 1:
    preemption.join(_client(), jax.process_index(), jax.process_count())
  if watch_peers and jax.process_count() > 1:
    _start_peer_watch(jax.process_index(), jax.process_count())
  return jax.process_count() > 1


_leaving = threading.Event()


def _die(message: str) -> None:
  code = EXIT_PEER
  if (signal_name := preemption.noted()) is not None:  # stopping anyway: a peer was first
    message = f"{preemption.Preempted(signal_name)} ({message.split(': ', 1)[-1]})"
    code = preemption.EXIT_CODES.get(signal_name, 1)
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(code)


def _start_peer_watch(me: int, n: int) -> None:
  client = _client()

  def beat_and_watch():
    heard = {p: ("", time.monotonic()) for p in range(n) if p != me}
    count = 0
    while not _leaving.is_set():
      try:
        client.key_value_set(f"dlcore/alive/{me}", str(count), allow_overwrite=True)
        count += 1
        for p, (value, since) in heard.items():
          try:
            now_value = client.key_value_try_get(f"dlcore/alive/{p}")
          except Exception as e:  # noqa: BLE001 - NOT_FOUND: it has not beaten yet
            if "NOT_FOUND" not in str(e):
              raise
            now_value = ""
          if now_value != value:
            heard[p] = (now_value, time.monotonic())
          elif time.monotonic() - since > PEER_S and not _leaving.is_set():
            try:
              client.key_value_try_get(f"dlcore/done/{p}")
              continue  # it finished normally
            except Exception:  # noqa: BLE001
              pass
            _die(f"process {me} of {n}: process {p} stopped responding ({PEER_S:.0f} s "
                 "without a beat): it died or hangs; the job cannot go on, restart it "
                 "with --resume")
      except Exception as e:  # noqa: BLE001 - the coordinator (process 0) itself is gone
        if _leaving.is_set():
          return
        _die(f"process {me} of {n}: lost the job's coordinator (process 0): "
             f"{str(e).strip().splitlines()[0][:100]}; restart the job with --resume")
      _leaving.wait(BEAT_S)

  def leave():
    _leaving.set()
    try:
      client.key_value_set(f"dlcore/done/{me}", "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001 - leaving anyway
      pass

  atexit.register(leave)  # runs before JAX's own exit handler (registered at import)
  threading.Thread(target=beat_and_watch, name="dlcore-peer-watch", daemon=True).start()


def process_index() -> int:
  """This process's index in the job; 0 before `initialize` or alone (touches no device)."""
  return jax.process_index() if _joined else 0


def process_count() -> int:
  """Processes in the job; 1 before `initialize` or alone (touches no device)."""
  return jax.process_count() if _joined else 1


def is_primary() -> bool:
  """Whether this is process 0, the one that writes run directories and shows progress."""
  return process_index() == 0


def _client():
  # The coordination service's key-value store: no public API in jax 0.10 (jax._src).
  from jax._src import distributed as _dist
  return _dist.global_state.client


def publish(key: str, value: str) -> None:
  """Makes `value` readable by every process of the job under `key`."""
  _client().key_value_set(key, value)


WAIT_SLICE_S = 0.5  # a long wait returns to Python this often, so a signal is handled


def wait_for(key: str, timeout: float, *, what: str) -> str:
  """The value process 0 published under `key`, waiting at most `timeout` seconds (in short
  slices: a signal that arrives meanwhile stops the process at once)."""
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    try:
      return _client().blocking_key_value_get(key, int(max(0.001, min(left, WAIT_SLICE_S))
                                                       * 1000))
    except Exception as e:  # noqa: BLE001 - jaxlib raises its own runtime error type
      if "DEADLINE_EXCEEDED" in str(e) and left > WAIT_SLICE_S:
        continue
      raise DistributedError(f"process {jax.process_index()}: gave up after {timeout:.0f} s "
                             f"waiting for process 0 to {what} "
                             f"({str(e).splitlines()[0][:80]})") from None


def lost_peer(error: BaseException) -> bool:
  """Whether `error` is a collective or coordination failure because a peer went away."""
  if not _joined or jax.process_count() <= 1:
    return False
  text = str(error)
  return any(s in text for s in ("Gloo", "Connection closed by peer", "Connection reset",
                                 "DEADLINE_EXCEEDED", "UNAVAILABLE", "heartbeat"))
