"""Command lines from config dataclasses: every field becomes a `--flag` with its default.

Experiments declare `@dataclass class Config` whose defaults are the seed's settings and call
`parse(Config, argv, description)`. Options shared by all experiments (mode, seed, workdir,
devices, resume) are fields of `Common`.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


@dataclasses.dataclass
class Common:
  workdir: str = "runs/{name}"  # run directory; {name} is the experiment's name
  mode: str = "jit"             # eager | python | jit | pmap | sharded
  devices: int = 0              # pmap/sharded on CPU: number of host devices to create
  seed: int = 0
  resume: bool = False          # continue from the latest checkpoint in workdir
  progress: bool = True         # tqdm progress bars
  tensorboard: bool = False     # also write TensorBoard logs to <workdir>/tb (tensorboardX)


@dataclasses.dataclass
class ImageDataArgs:
  """Dataset options of the image experiments (see `dlcore.data.images.load`)."""
  dataset: str = "mnist"        # mnist | fashion_mnist | cifar10 | digits
  data_dir: str = ""            # folder with the dataset's files (IDX / CIFAR binary)
  train_limit: int = 0          # use only the first N training images (0: all)
  test_limit: int = 0           # use only the first N test images (0: all)


def load_image_data(cfg, fallback: str | None = None):
  """Loads `cfg.dataset` (an `ImageDataArgs`), trimmed to the limits; prints what it got."""
  from dlcore.data import images

  data = images.load(cfg.dataset, data_dir=cfg.data_dir or None, fallback=fallback)
  if cfg.train_limit or cfg.test_limit:
    data = data.subset(cfg.train_limit or None, cfg.test_limit or None)
  print(f"data: {data.describe()}")
  return data


def _bool(s: str) -> bool:
  if s.lower() in ("1", "true", "yes", "y", "on"):
    return True
  if s.lower() in ("0", "false", "no", "n", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def parse(config_cls, argv=None, description: str = "", help_text: dict | None = None):
  """Parses argv into an instance of `config_cls` (a dataclass)."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  hints = typing.get_type_hints(config_cls)
  help_text = help_text or {}
  for f in dataclasses.fields(config_cls):
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = hints[f.name]
    helptext = help_text.get(f.name, " ")
    if kind is bool:
      # --flag / --no-flag
      parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                          default=default, help=helptext)
    elif typing.get_origin(kind) is tuple:
      elem = typing.get_args(kind)[0]
      parser.add_argument(flag, dest=f.name, type=elem, nargs="+", default=default,
                          help=helptext)
    else:
      base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Union else kind
      choices = None
      if f.name == "mode":
        from dlcore.train.modes import MODES
        choices = MODES
      parser.add_argument(flag, dest=f.name, type=base, default=default, choices=choices,
                          help=helptext)
  args = parser.parse_args(argv)
  values = vars(args)
  for f in dataclasses.fields(config_cls):
    if typing.get_origin(hints[f.name]) is tuple:
      values[f.name] = tuple(values[f.name])
  return config_cls(**values)
