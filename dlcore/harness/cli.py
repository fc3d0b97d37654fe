"""Command lines from config dataclasses, built with tyro.

An experiment declares `@dataclass class Config` whose defaults are the seed's settings, with
a description of every field (a comment or docstring beside it: tyro turns it into the help),
and calls `cfg = cli.parse(Config, argv, description)`. The options every experiment takes
live in `Common` and appear as one group, without a prefix:

    @dataclasses.dataclass
    class Config:
      common: cli.Shared = cli.shared()         # --workdir --mode --devices --seed --resume ...
      data: cli.ImageOptions = cli.image_data()  # --dataset --data-dir --train-limit ...
      epochs: cli.Positive[int] = 30            # epochs to train

Ranges are declared with `Positive` / `NonNegative` / `Between(lo, hi)` and choices with
`Literal[...]`; both are checked when the command line is parsed, and a bad value stops with
one line naming the option and what it accepts. A Config may add `check(self)`, raising
`ConfigError` for rules that involve several options.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
import typing
from typing import Annotated, Literal, TypeVar

import tyro

from dlcore.harness.errors import ConfigError, RunDirError
from dlcore.harness.errors import flag as _flag
from dlcore.harness.writers import TB_MISSING, say, tensorboard_available

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Between:
  """Annotated[...] marker: lo <= value <= hi (either bound may be None)."""
  lo: float | None = None
  hi: float | None = None

  def check(self, flag: str, value) -> None:
    if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
      bounds = (f">= {self.lo}" if self.hi is None else f"<= {self.hi}" if self.lo is None
                else f"between {self.lo} and {self.hi}")
      raise ConfigError(f"{flag} must be {bounds} (got {value})")


Positive = Annotated[T, Between(1)]       # ints: >= 1
NonNegative = Annotated[T, Between(0)]
Fraction = Annotated[T, Between(0.0, 1.0)]
Mode = Literal["eager", "python", "jit", "pmap", "sharded"]  # = dlcore.train.MODES (tested)
Precision = Literal["float32", "bfloat16", "float16"]  # = dlcore.precision.PRECISIONS (tested)


@dataclasses.dataclass
class Common:
  """Options every experiment takes."""
  workdir: str = "runs/{name}"
  """Run directory (config, metrics, summary, figures, checkpoints); {name}: the experiment."""
  mode: Mode = "jit"
  """How the step runs: op by op (eager), unjitted, jit, or data parallel over --devices
  (pmap, sharded; several processes: sharded). Every mode gives the same numbers."""
  devices: Annotated[int | None, Between(1)] = None
  """pmap/sharded: devices of each process; None: all local ones (CPU: host devices are
  made)."""
  seed: int = 0
  """Seed of parameter init, data order, dropout and sampling."""
  seeds: Annotated[int | None, Between(1)] = None
  """Train N runs side by side as one program, seeds seed..seed+N-1 (vmapped; split over the
  devices under --mode sharded): summary numbers become means over the seeds with <key>_std
  and per_seed; curves get a min-max band. None: 1 (fizzbuzz and the LSTM tagger: 10)."""
  sweep: tuple[str, ...] = ()
  """NAME=V1,V2,... [NAME=...]: train every point of that grid, crossed with --seeds, as
  members of one program; options that change shapes run one program per value (the
  description above lists the names of each kind). Adds "sweep" to the summary, sweep.csv,
  plots and the best point."""
  precision: Precision = "float32"
  """Computation dtype of the models (parameters, optimizer state and checkpoints stay
  float32; losses and batch statistics are float32); float16 adds dynamic loss scaling."""
  resume: bool = False
  """Continue the run in --workdir from its latest good checkpoint (same settings)."""
  auto_resume: bool = False
  """Continue the run in --workdir if it holds one (same settings, as --resume), else start
  it: one command for a job's first start and its requeues (SLURM --requeue)."""
  overwrite: bool = False
  """Start over in a --workdir that holds a run: its contents are deleted first."""
  allow_change: tuple[str, ...] = ()
  """With --resume: settings (names, e.g. lr) that may differ from the saved run's."""
  progress: bool = True
  """Show progress bars."""
  tensorboard: bool = False
  """Also write TensorBoard logs to <workdir>/tb (needs the tb extra: tensorboardX); the
  same as --track tensorboard."""
  track: tuple[Literal["mlflow", "wandb", "tensorboard"], ...] = ()
  """Mirror the run to these trackers (MLflow: MLFLOW_TRACKING_URI or --tracking-uri; W&B:
  WANDB_PROJECT, default dlcore, WANDB_MODE=offline honoured; TensorBoard: <workdir>/tb).
  Sent from a background thread: a tracker that fails costs one warning line, never the run;
  `python -m dlcore.harness.track sync RUN_DIR --track NAME` sends the folder afterwards."""
  tracking_uri: str | None = None
  """MLflow's tracking server for --track mlflow; None: MLFLOW_TRACKING_URI, else MLflow's
  default."""
  coordinator: str | None = None
  """Several processes: host:port of process 0's coordinator (python -m dlcore.launch sets
  it, and SLURM/Open MPI are detected); None: one process."""
  num_processes: Annotated[int | None, Between(1)] = None
  """Several processes: how many in the job (with --coordinator and --process-id)."""
  process_id: Annotated[int | None, Between(0)] = None
  """Several processes: this one's index, 0..N-1; process 0 writes the run directory."""


@dataclasses.dataclass
class ImageDataArgs:
  """Dataset options (see dlcore.data.images.load for where data is looked for)."""
  dataset: Literal["mnist", "fashion_mnist", "cifar10", "digits"] | None = None
  """Image dataset (digits: scikit-learn's 8x8 set, always here); None: mnist, as the seeds."""
  data_dir: str | None = None
  """Folder with the dataset's files (IDX .gz or CIFAR-10 binary batches), searched first."""
  train_limit: Annotated[int | None, Between(1)] = None
  """Use only the first N training images; None: all."""
  test_limit: Annotated[int | None, Between(1)] = None
  """Use only the first N test images; None: all."""


@dataclasses.dataclass
class ScoreArgs:
  """Sample quality: a chapter 6 CNN scores generated images (dlcore.harness.scoring)."""
  classifier: str | None = None
  """Scoring CNN folder (save_model); None: the cached one, trained once if missing."""
  classifier_epochs: Annotated[int, Between(1)] = 3
  """Epochs of the scoring CNN when it has to be trained."""
  score_samples: Annotated[int, Between(0)] = 10000
  """Generated images scored (Frechet distance; cgan: label accuracy); 0: no scoring."""


# Nested groups whose flags carry no prefix (--mode, not --common.mode).
Shared = Annotated[Common, tyro.conf.OmitArgPrefixes]
ImageOptions = Annotated[ImageDataArgs, tyro.conf.OmitArgPrefixes]
ScoreOptions = Annotated[ScoreArgs, tyro.conf.OmitArgPrefixes]


def shared(**defaults) -> Common:
  """The `common` field of a Config, with experiment-specific defaults (e.g. seed=100)."""
  return dataclasses.field(default_factory=lambda: Common(**defaults))


def image_data(**defaults) -> ImageDataArgs:
  return dataclasses.field(default_factory=lambda: ImageDataArgs(**defaults))


def scoring(**defaults) -> ScoreArgs:
  return dataclasses.field(default_factory=lambda: ScoreArgs(**defaults))


def model_dtype(common: Common):
  """The `dtype` for `models.build` that `--precision` asks for."""
  from dlcore import precision
  return precision.compute_dtype(common.precision)


FUSE_HELP = ("Run the steps between checkpoints as one compiled loop (lax.scan over the "
             "batches, gathered on the device): the same numbers, less time per step; None: on "
             "where checked bit for bit (--mode jit in float32 on the CPU, one process, one "
             "seed, no --sweep; not for convolutional models, slower there).")
Fuse = Annotated[bool | None, tyro.conf.arg(help=FUSE_HELP)]  # an experiment's --fuse


def fused(cfg, *, checked: bool = True) -> bool:
  """Whether `cfg`'s training runs fused (`fit`'s `fused_step`): --fuse / --no-fuse as asked;
  None (the default): where dlcore checked that the fused steps give the loop's numbers bit
  for bit (`checked`: the experiment's model is one of those). Call after `start_run` (it
  knows the processes)."""
  import jax
  c = cfg.common
  one = (c.mode in ("jit", "sharded") and (c.seeds or 1) == 1 and not c.sweep
         and jax.process_count() == 1)
  if cfg.fuse and not one:
    raise ConfigError("--fuse runs under --mode jit or sharded with one process, one seed and "
                      "no --sweep; drop --fuse")
  if cfg.fuse is None:
    return (checked and one and c.mode == "jit" and c.precision == "float32"
            and jax.default_backend() == "cpu")
  return cfg.fuse


def loss_scale(common: Common):
  """The `loss_scale` for `create_train_state` that `--precision` asks for (float16 only)."""
  from dlcore import precision
  return precision.loss_scale(common.precision)


def skipped_entry(state) -> dict:
  """{"skipped_steps": n} for a float16 run's summary entry (steps its loss scaling skipped),
  {} otherwise. The precision itself is added to every entry by `RunDir.update_summary`."""
  from dlcore import precision
  skipped = precision.skipped_steps(state)
  return {} if skipped is None else {"skipped_steps": skipped}


def check(cfg) -> None:
  """Checks every `Between` range in `cfg` (recursively) and each `check()` method."""
  hints = typing.get_type_hints(type(cfg), include_extras=True)
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if dataclasses.is_dataclass(value):
      check(value)
      continue
    for marker in getattr(hints[f.name], "__metadata__", ()):
      if isinstance(marker, Between) and value is not None:
        for v in (value if isinstance(value, tuple) else (value,)):
          marker.check(_flag(f.name), v)
  if hasattr(cfg, "check"):
    cfg.check()


def module_of(config_cls) -> str | None:
  """The module that defines `config_cls` (`experiments.vae`), also when run as `python -m`."""
  module = config_cls.__module__
  if module == "__main__":
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec is not None else None
  return module


def _prog(config_cls) -> str | None:
  """`python -m experiments.vae` for the usage line, not the script's path."""
  module = module_of(config_cls)
  return f"python -m {module}" if module and module.startswith("experiments.") else None


def parse(config_cls: type[T], argv=None, description: str | None = None) -> T:
  """Parses argv (default: sys.argv[1:]) into `config_cls`; `--help` lists every option with
  its description, type and default. Invalid values stop with one line and exit code 2."""
  from dlcore.harness import sweeps
  numbers, shapes = sweeps.numeric(config_cls), sweeps.shapes(config_cls)
  if description is not None and "common" in {f.name for f in dataclasses.fields(config_cls)}:
    description += ("\n\n--sweep: not available in this experiment yet" if not numbers else
                    f"\n\n--sweep names: {', '.join(numbers)} (numbers in the step: every "
                    "point a member of one program)" + (
                        f"; {', '.join(shapes)} (one program per value)" if shapes else ""))
  cfg = tyro.cli(config_cls, args=argv, description=description, prog=_prog(config_cls))
  _start_timing()
  try:
    check(cfg)
    sweeps.Sweep.of(cfg)  # an unknown name or a bad value: now, before any work
    common = getattr(cfg, "common", None)
    if (common is not None and common.mode in ("pmap", "sharded") and common.devices
        and getattr(cfg, "batch_size", None) and cfg.batch_size % common.devices):
      raise ConfigError(f"--batch-size {cfg.batch_size} does not split over --devices "
                        f"{common.devices}; choose a multiple of {common.devices}")
    if common is not None and common.tensorboard and not tensorboard_available():
      raise ConfigError(TB_MISSING.removeprefix("error: "))
    if common is not None and common.track:
      from dlcore.harness import track
      if (why := track.missing(common.track)) is not None:
        raise ConfigError(why)
    if common is not None:  # incomplete process flags: now, not after loading the data
      from dlcore import distributed
      try:
        distributed.settings(common.coordinator, common.num_processes, common.process_id)
      except distributed.DistributedError as e:
        raise ConfigError(str(e)) from None
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  return cfg


_parsed = False  # a program's first run counts its start-up (imports) in its timings


def _start_timing() -> None:
  """A run's account of where its time goes (`dlcore.timing`, summary.json's "timings")
  starts as its options are parsed; a program's first run adds its start-up."""
  global _parsed
  from dlcore import preemption, timing
  before = timing.since_process_start() if preemption.program_process() and not _parsed else 0
  _parsed = True
  timing.reset(before or 0.0)


# Exit codes of `entry` (the README lists them).
EXIT_USAGE, EXIT_DATA, EXIT_CHECKPOINT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 4, 5, 130
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), e.g. a scheduler's preemption notice


def _exit_code(error: BaseException) -> int | None:
  from dlcore.checkpoint import CheckpointError
  from dlcore.data import DataError
  from dlcore.data.images import DatasetUnavailableError
  from dlcore.train.loop import NonFiniteLossError

  for kind, code in ((ConfigError, EXIT_USAGE), (RunDirError, EXIT_USAGE),
                     (DatasetUnavailableError, EXIT_DATA), (DataError, EXIT_DATA),
                     (CheckpointError, EXIT_CHECKPOINT), (NonFiniteLossError, EXIT_DIVERGED)):
    if isinstance(error, kind):
      return code
  return None


def entry(main) -> None:
  """Runs an experiment's `main()` as a command: dlcore's own errors (bad settings, run
  folder conflicts, missing data, damaged or unwritable checkpoints, divergence, a lost or
  missing peer process) end in one line `error: ...` and their exit code; any other
  exception keeps its traceback. SIGTERM and Ctrl-C stop training after the step in flight
  with a checkpoint at that step (`dlcore.preemption`): exit 143 and 130, one line.

  In a job of several processes a failing process exits at once (`os._exit`): JAX's
  shutdown would otherwise wait for peers that are gone, then abort with a C++ stack."""
  from dlcore import distributed, preemption

  # SIGTERM / Ctrl-C: finish the step, save, stop (exit 143 / 130); the handlers before are
  # put back afterwards, so a notebook or a loop of runs starts each run clean.
  previous = None
  try:
    previous = preemption.install(program=True)
    preemption.check()  # a stop that arrived while the program was starting
    main()
  except preemption.Preempted as e:
    preemption.delivered()
    preemption.leave()  # other processes of the job stop without waiting for this one
    _end_trackers("KILLED")
    if not e.told:
      print(f"error: {e}", file=sys.stderr)
    _leave(e.exit_code, stopped=True)
  except KeyboardInterrupt:
    preemption.delivered()
    _end_trackers("KILLED")
    print("interrupted; continue with --resume", file=sys.stderr)
    _leave(EXIT_INTERRUPTED, stopped=True)
  except Exception as e:  # noqa: BLE001 - re-raised below unless it is one of ours
    _end_trackers("FAILED")
    code = _exit_code(e)
    if isinstance(e, distributed.DistributedError):
      code = distributed.EXIT_PEER
    elif code is None and distributed.lost_peer(e):
      if (signal_name := preemption.noted()) is not None:  # a peer stopped first
        print(f"error: {preemption.Preempted(signal_name)}", file=sys.stderr)
        _leave(preemption.EXIT_CODES.get(signal_name, 1), stopped=True)
      code = distributed.EXIT_PEER
      first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
      e = RuntimeError(f"process {distributed.process_index()} lost contact with another "
                       f"process of the job ({first}); restart the job with --resume")
    if code is None:
      if distributed.process_count() > 1:
        traceback.print_exc()
        _leave(1)
      raise
    message = " ".join(str(e).split())  # one line, whatever the message's layout
    print(f"error: {message}", file=sys.stderr)
    _leave(code)
  finally:
    if previous is not None:
      preemption.uninstall(previous)


def _end_trackers(status: str) -> None:
  """A run that stops without closing: its trackers' runs end as `status` (a few seconds at
  most; a resumed run sets them running again)."""
  if "dlcore.harness.track" in sys.modules:
    sys.modules["dlcore.harness.track"].close_all(status)


def _leave(code: int, *, stopped: bool = False) -> None:
  """Ends the program with `code`. A job of several processes, and a program stopped by a
  signal (`stopped`, run as `python -m`), leave with `os._exit`: JAX's shutdown would wait for
  peers that are gone, and a stop in the middle of an XLA compilation crashed the
  interpreter's finalization (SIGSEGV) in 6 of 7 tries. Every file dlcore writes is whole by
  then (`dlcore.files`, checkpoints waited for)."""
  from dlcore import distributed, preemption

  if distributed.process_count() > 1 or (stopped and preemption.program_process()):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  raise SystemExit(code) from None


def load_image_data(args: ImageDataArgs, fallback: str | tuple[str, ...] | None = None):
  """Loads `args.dataset` (mnist when none is named), trimmed to the limits; says what it
  got. `fallback` is used only when the user named neither a dataset nor a data folder: an
  explicit choice is never replaced."""
  from dlcore import timing
  from dlcore.data import images

  explicit = args.dataset is not None or args.data_dir is not None
  with timing.section("data"):
    data = images.load(args.dataset or "mnist", data_dir=args.data_dir,
                       fallback=None if explicit else fallback)
    if args.train_limit or args.test_limit:
      data = data.subset(args.train_limit, args.test_limit)
  say(f"data: {data.describe()}")
  return data
