"""A classifier's view of generated images: features for Frechet distances and predicted
labels for conditional samples (chapter 8's sample-quality numbers).

The scorer is the chapter 6 CNN (`dlcore.models.CNN`) trained on the same dataset. So that
a score means the same thing in every run, it is trained once, deterministically (jit on one
device, Adam 1e-3, batch 128, `epochs`, `seed`), and cached under

    $DLCORE_CACHE/scorers/cnn-<dataset>-<data sha256[:12]>-e<epochs>-s<seed>/
    (DLCORE_CACHE defaults to ~/.cache/dlcore)

Every summary that uses it records its path and `weights_sha256`, a hash of its parameters
(`weights_hash`), so two scores are comparable exactly when the hashes agree.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import time
from typing import Callable

import jax
import numpy as np

from dlcore import metrics, models, optim
from dlcore import distributed, timing
from dlcore.checkpoint import load_model, save_model
from dlcore.models.layers import reference_kernels
from dlcore.data.images import ImageData
from dlcore.data.transforms import ImagePipeline
from dlcore.harness.cli import ConfigError
from dlcore.harness.jaxcache import cache_root
from dlcore.harness.writers import say
from dlcore.train.classify import evaluate_classifier, train_classifier
from dlcore.train.modes import Runner
from dlcore.train.state import TrainState, variables_of


def to_uint8(images: np.ndarray, value_range=(0.0, 1.0)) -> np.ndarray:
  """Float images in `value_range` -> uint8, as if saved to PNG and read back."""
  lo, hi = value_range
  x = (np.asarray(images, np.float32) - lo) / (hi - lo)
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def weights_hash(variables: dict) -> str:
  """SHA-256 over every array's path, dtype, shape and bytes, in path order."""
  h = hashlib.sha256()
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))
  for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def data_hash(data: ImageData) -> str:
  h = hashlib.sha256()
  for a in (data.train_x, data.train_y, data.test_x, data.test_y):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def default_scorer_path(data: ImageData, epochs: int, seed: int) -> str:
  return os.path.join(cache_root(), "scorers",
                      f"cnn-{data.name}-{data_hash(data)[:12]}-e{epochs}-s{seed}")


@dataclasses.dataclass
class Scorer:
  model: models.CNN
  variables: dict
  pipeline: ImagePipeline
  test_accuracy: float
  path: str
  sha256: str
  trained_here: bool

  def __post_init__(self):
    self._features = jax.jit(lambda v, x: self.model.apply(v, self.pipeline(x),
                                                           method=self.model.features))
    self._logits = jax.jit(lambda v, x: self.model.apply(v, self.pipeline(x)))

  def _batched(self, fn, x, batch_size=1000):
    with reference_kernels():  # traced (first call) with the scorer's convolutions
      return np.concatenate([np.asarray(fn(self.variables, x[i:i + batch_size]))
                             for i in range(0, len(x), batch_size)])

  def features(self, x_uint8: np.ndarray) -> np.ndarray:
    """Penultimate-layer (fc1) activations, (N, 128)."""
    return self._batched(self._features, x_uint8)

  def predict(self, x_uint8: np.ndarray) -> np.ndarray:
    return self._batched(self._logits, x_uint8).argmax(-1)

  def frechet_distance(self, x_uint8: np.ndarray, reference_uint8: np.ndarray) -> float:
    return metrics.frechet_distance(self.features(x_uint8), self.features(reference_uint8))

  def describe(self) -> dict:
    """What a summary records about the scorer."""
    return {"path": self.path, "weights_sha256": self.sha256,
            "test_accuracy": self.test_accuracy, "trained_in_this_run": self.trained_here}


def scorer_pipeline(data: ImageData) -> ImagePipeline:
  size = None if data.image_shape[:2] == (28, 28) else 28
  return ImagePipeline("pm1", size=size, resize="bilinear")


SCORER_WAIT_S = 3600  # process 0 or another run may be training the scorer (minutes on a CPU)
LOCK_POLL_S = 0.2


@contextlib.contextmanager
def _exclusive(lock_path: str, timeout: float, *, what: str):
  """Holds an exclusive lock on `lock_path` (an flock, which the OS drops if its holder
  dies), waiting at most `timeout` seconds for another process that holds it."""
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with open(lock_path, "a+") as f:
    deadline, told = time.monotonic() + timeout, False
    while True:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
      if time.monotonic() > deadline:
        raise ConfigError(f"gave up after {timeout:.0f} s waiting for another run to {what} "
                           f"(it holds {lock_path}); try again, or pass a folder with "
                           "--classifier")
      if not told:
        say(f"waiting for another run to {what} (lock {lock_path})")
        told = True
      time.sleep(LOCK_POLL_S)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@timing.section("scoring CNN", whole=True)  # its training is not the run's training steps
def load_or_train_scorer(data: ImageData, path: str | None = None, *, epochs: int = 3,
                         seed: int = 0, progress: bool = True) -> Scorer:
  """The chapter 6 CNN for `data` from `path` (a save_model folder; default: the cache path
  for (data, epochs, seed)), or trained and saved there first. Trained and applied with
  `reference_kernels`: its weights and features do not move with dlcore's speed levers."""
  with reference_kernels():
    return _load_or_train_scorer(data, path, epochs=epochs, seed=seed, progress=progress)


def _load_or_train_scorer(data: ImageData, path: str | None, *, epochs: int, seed: int,
                          progress: bool) -> Scorer:
  pipeline = scorer_pipeline(data)
  path = os.path.abspath(path or default_scorer_path(data, epochs, seed))
  several = distributed.process_count() > 1
  if several and not distributed.is_primary():  # process 0 trains and saves; read its copy
    distributed.wait_for(f"dlcore/scorer:{path}", SCORER_WAIT_S,
                         what=f"provide the scoring classifier {path}")
  trained = False
  if distributed.is_primary() and not os.path.exists(os.path.join(path, "model.json")):
    # One run trains it; another run on the same cache waits for that one, then loads it.
    with _exclusive(path + ".lock", SCORER_WAIT_S, what="train the scoring classifier"):
      trained = not os.path.exists(os.path.join(path, "model.json"))
      if trained:
        say(f"training the scoring classifier (chapter 6 CNN, {epochs} epochs, seed {seed}) "
            f"-> {path}")
        model = models.build("cnn", in_channels=data.image_shape[2],
                             num_classes=data.num_classes)
        result = train_classifier(model, data, optim.make_optimizer("adam", 1e-3),
                                  pipeline=pipeline, batch_size=128, epochs=epochs,
                                  runner=Runner("jit"), seed=seed, progress=progress,
                                  desc="scoring classifier", checkpoint_dir=None)
        save_model(path, "cnn", variables_of(result.state),  # all or nothing
                   input_shape=(28, 28, data.image_shape[2]),
                   kwargs={"in_channels": data.image_shape[2],
                           "num_classes": data.num_classes})
  if several and distributed.is_primary():
    distributed.publish(f"dlcore/scorer:{path}", "ready")
  model, variables = load_model(path)  # what is scored with is what was saved
  if not isinstance(model, models.CNN) or model.num_classes != data.num_classes:
    raise ConfigError(f"{path} holds {type(model).__name__}, not a chapter 6 CNN for "
                     f"{data.num_classes} classes; pass another --classifier folder")
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            tx=optim.make_optimizer("sgd", 0.0),
                            batch_stats=variables.get("batch_stats"))
  acc = evaluate_classifier(state, data.test(), pipeline)["accuracy"]
  scorer = Scorer(model, variables, pipeline, acc, path, weights_hash(variables), trained)
  say(f"scoring classifier: test accuracy {acc:.4f}, weights sha256 {scorer.sha256[:16]}... "
      f"({'trained now' if trained else 'loaded'}: {path})")
  return scorer


def sample_quality(scorer: Scorer, sample: Callable, data: ImageData, num_samples: int, *,
                   num_classes: int | None = None, every: int | None = None):
  """A `fit` evaluator of a generator: `sample(state, key, labels_or_None, n)` returns n
  uint8 images; reports the Frechet distance of their features to the test images' (and,
  given `num_classes`, how often the scorer predicts the label asked for). Runs every
  `every` epochs, and after the last."""
  reference = data.test_x[:num_samples]

  def evaluate(state, key):
    labels = np.arange(num_samples) % num_classes if num_classes else None
    images = sample(state, key, labels, num_samples)
    out = {"frechet_distance": scorer.frechet_distance(images, reference)}
    if labels is not None:
      out["label_accuracy"] = float(np.mean(scorer.predict(images) == labels))
    return out

  evaluate.every = every
  return evaluate
