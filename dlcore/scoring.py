"""A classifier's view of generated images: features for Frechet distances and predicted
labels for conditional samples (chapter 8's sample-quality numbers).

The scorer is the chapter 6 CNN (`dlcore.models.CNN`) trained on the same dataset: loaded
from a `save_model` directory (e.g. `experiments.cnn`'s `<run>/model`) or trained here and
saved there for the next run.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from dlcore import metrics, models, optim
from dlcore.checkpoint import load_model, save_model
from dlcore.data.images import ImageData
from dlcore.data.transforms import ImagePipeline
from dlcore.train.classify import evaluate_classifier, train_classifier
from dlcore.train.modes import Runner
from dlcore.train.state import variables_of


def to_uint8(images: np.ndarray, value_range=(0.0, 1.0)) -> np.ndarray:
  """Float images in `value_range` -> uint8, as if saved to PNG and read back."""
  lo, hi = value_range
  x = (np.asarray(images, np.float32) - lo) / (hi - lo)
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class Scorer:
  model: models.CNN
  variables: dict
  pipeline: ImagePipeline
  test_accuracy: float
  source: str

  def __post_init__(self):
    self._features = jax.jit(lambda v, x: self.model.apply(v, self.pipeline(x),
                                                           method=self.model.features))
    self._logits = jax.jit(lambda v, x: self.model.apply(v, self.pipeline(x)))

  def _batched(self, fn, x, batch_size=1000):
    return np.concatenate([np.asarray(fn(self.variables, x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])

  def features(self, x_uint8: np.ndarray) -> np.ndarray:
    """Penultimate-layer (fc1) activations, (N, 128)."""
    return self._batched(self._features, x_uint8)

  def predict(self, x_uint8: np.ndarray) -> np.ndarray:
    return self._batched(self._logits, x_uint8).argmax(-1)

  def frechet_distance(self, x_uint8: np.ndarray, reference_uint8: np.ndarray) -> float:
    return metrics.frechet_distance(self.features(x_uint8), self.features(reference_uint8))


def scorer_pipeline(data: ImageData) -> ImagePipeline:
  size = None if data.image_shape[:2] == (28, 28) else 28
  return ImagePipeline("pm1", size=size, resize="bilinear")


def load_or_train_scorer(data: ImageData, path: str, *, epochs: int = 3, seed: int = 0,
                         progress: bool = True) -> Scorer:
  """The chapter 6 CNN for `data` from `path` (a save_model directory), or trained for
  `epochs` (Adam 1e-3, batch 128) and saved to `path`."""
  pipeline = scorer_pipeline(data)
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, "model.json")):
    model, variables = load_model(path)
    if not isinstance(model, models.CNN) or model.num_classes != data.num_classes:
      raise ValueError(f"{path} holds {type(model).__name__}, not a chapter 6 CNN for "
                       f"{data.num_classes} classes; pass another --classifier path")
    acc = evaluate_classifier(_state_like(model, variables), data.test(), pipeline)["accuracy"]
    source = f"loaded from {path}"
  else:
    print(f"training the scoring classifier (chapter 6 CNN, {epochs} epochs) -> {path}")
    model = models.build("cnn", in_channels=data.image_shape[2], num_classes=data.num_classes)
    result = train_classifier(model, data, optim.make_optimizer("adam", 1e-3),
                              pipeline=pipeline, batch_size=128, epochs=epochs,
                              runner=Runner("jit"), seed=seed, progress=progress,
                              desc="scoring classifier", checkpoint_dir=None)
    variables, acc = variables_of(result.state), result.test_accuracy
    save_model(path, "cnn", variables, input_shape=(28, 28, data.image_shape[2]),
               kwargs={"in_channels": data.image_shape[2], "num_classes": data.num_classes})
    source = f"trained here for {epochs} epochs, saved to {path}"
  print(f"scoring classifier: test accuracy {acc:.4f} ({source})")
  return Scorer(model, variables, pipeline, acc, source)


def _state_like(model, variables):
  from dlcore.train.state import TrainState

  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=optim.make_optimizer("sgd", 0.0),
                           batch_stats=variables.get("batch_stats"))
