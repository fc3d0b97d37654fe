"""Figures: an image grid is composed as one array and written as one picture (one plot axis
at most), like torchvision's save_image."""
import numpy as np
import pytest
from PIL import Image

from dlcore.harness import plots


def _images(n=5, h=3, w=4, c=1):
  return np.random.default_rng(0).uniform(size=(n, h, w, c)).astype(np.float32)


def test_make_grid_places_image_i_in_row_i_over_nrow():
  images = _images()
  grid = plots.make_grid(images, nrow=3, padding=2, pad_value=1.0)
  assert grid.shape == (2 * (3 + 2) + 2, 3 * (4 + 2) + 2, 1)
  for i, img in enumerate(images):
    y, x = 2 + (i // 3) * 5, 2 + (i % 3) * 6
    np.testing.assert_array_equal(grid[y:y + 3, x:x + 4], img)
  assert np.all(grid[:2] == 1.0) and np.all(grid[7:10, 14:18] == 1.0)  # padding, empty cell


@pytest.mark.parametrize("c", [1, 3])
def test_an_untitled_grid_is_the_composed_pixels(tmp_path, c):
  images = _images(c=c) * 2 - 1  # values in (-1, 1), as a tanh generator's
  path = plots.image_grid(images, str(tmp_path / "g.png"), nrow=3, value_range=(-1, 1))
  want = np.round(plots.make_grid((images + 1) / 2, 3) * 255).astype(np.uint8)
  got = np.asarray(Image.open(path))
  np.testing.assert_array_equal(got, want[..., 0] if c == 1 else want)


def test_a_titled_grid_is_the_enlarged_pixels_under_a_title(tmp_path):
  images = _images(6, 5, 7)
  path = plots.image_grid(images, str(tmp_path / "t.png"), nrow=3, title="epoch 1")
  got = np.asarray(Image.open(path))
  k = plots.TITLED_SCALE
  want = np.round(plots.make_grid(images, 3) * 255).astype(np.uint8)[..., 0]
  assert got.shape == (want.shape[0] * k + plots.TITLE_BAR, want.shape[1] * k)
  np.testing.assert_array_equal(got[plots.TITLE_BAR:], np.kron(want, np.ones((k, k), np.uint8)))
  assert got[:plots.TITLE_BAR].min() < 100  # the title's dark pixels


def test_a_labelled_grid_draws_one_axis(tmp_path, monkeypatch):
  axes = []
  write = plots._write

  def count(fig, path, dpi):
    axes.append(len(fig.axes))
    return write(fig, path, dpi)

  monkeypatch.setattr(plots, "_write", count)
  path = plots.image_grid(_images(64, 8, 8), str(tmp_path / "t.png"), nrow=8, title="epoch 1",
                          labels=[str(i) for i in range(64)])
  assert axes == [1]
  assert Image.open(path).size == (720, 760)  # 8 x 0.9 in by 8 x 0.9 + 0.4 in, at 100 dpi


def test_confusion_matrix_is_scikit_learns(tmp_path):
  """The matrix drawn (written without importing sklearn.metrics, ~1 s) equals scikit-learn's
  row-normalised one, a class without examples included."""
  from sklearn.metrics import confusion_matrix
  rng = np.random.default_rng(0)
  y_true, y_pred = rng.integers(0, 9, 500), rng.integers(0, 10, 500)  # class 9 never true
  y_pred[:200] = y_true[:200]
  want = confusion_matrix(y_true, y_pred, labels=range(10), normalize="true")
  np.testing.assert_array_equal(plots.confusion_matrix(y_true, y_pred, 10), want)
  with pytest.raises(ValueError, match="predicted labels must lie in 0..9, found 0..10"):
    plots.confusion_matrix(y_true, np.append(y_pred[1:], 10), 10)  # sklearn would drop it
