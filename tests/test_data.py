"""dlcore.data.images and transforms: IDX/CIFAR readers, the source order, TFDS (mock data),
offline failures that are fast and name the fix, the bundled and the real Fashion-MNIST."""
import os
import time

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dlcore.data import DataError, images
from dlcore.data.transforms import ImagePipeline

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
  """No cache, no TFDS data, no DLCORE_DATA_DIR: only what the test provides."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("DLCORE_DATA_DIR", raising=False)
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.delenv("DLCORE_OFFLINE", raising=False)
  return tmp_path


def write_idx_dataset(folder, n_train=20, n_test=10, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
            "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_y": rng.integers(0, 10, n_test, dtype=np.uint8)}
  for key, stem in images.IDX_FILES.items():
    images.write_idx(os.path.join(folder, stem + (".gz" if gz else "")), arrays[key])
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
  a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = str(tmp_path / ("a.idx" + (".gz" if gz else "")))
  images.write_idx(path, a)
  np.testing.assert_array_equal(images.read_idx(path), a)


def test_idx_rejects_bad_files(tmp_path):
  bad = tmp_path / "bad"
  bad.write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="not an IDX file"):
    images.read_idx(str(bad))
  path = str(tmp_path / "short")
  images.write_idx(path, np.zeros((4, 5), np.uint8))
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[:-3])
  with pytest.raises(ValueError, match="truncated"):
    images.read_idx(path)


def test_load_from_data_dir(isolated_home):
  arrays = write_idx_dataset(isolated_home / "mnist_files")
  data = images.load("mnist", data_dir=str(isolated_home / "mnist_files"))
  assert data.train_x.shape == (20, 28, 28, 1) and data.train_x.dtype == np.uint8
  assert data.test_y.dtype == np.int32 and data.num_classes == 10
  np.testing.assert_array_equal(data.train_x[..., 0], arrays["train_x"])
  np.testing.assert_array_equal(data.test_y, arrays["test_y"])
  assert "mnist_files" in data.source


def test_data_dir_without_files_names_them(isolated_home):
  (isolated_home / "empty").mkdir()
  with pytest.raises(images.DatasetUnavailableError,
                     match=r"train-images-idx3-ubyte\[\.gz\].*Fix: "):
    images.load("mnist", data_dir=str(isolated_home / "empty"))


def test_unknown_dataset():
  with pytest.raises(KeyError, match="fashion_mnist"):
    images.load("imagenet")


def test_dlcore_data_dir_env(isolated_home, monkeypatch):
  write_idx_dataset(isolated_home / "store" / "mnist")
  monkeypatch.setenv("DLCORE_DATA_DIR", str(isolated_home / "store"))
  data = images.load("mnist", sources=("files",))
  assert len(data.train_x) == 20 and str(isolated_home / "store") in data.source


def test_cifar_binary_reader(isolated_home):
  folder = isolated_home / "cifar-10-batches-bin"
  folder.mkdir()
  rng = np.random.default_rng(0)
  expected = {}
  for name in images.CIFAR_TRAIN + images.CIFAR_TEST:
    labels = rng.integers(0, 10, 3, dtype=np.uint8)
    chw = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    np.concatenate([labels[:, None], chw.reshape(3, -1)], 1).tofile(folder / name)
    expected[name] = (chw.transpose(0, 2, 3, 1), labels)
  data = images.load("cifar10", data_dir=str(isolated_home))  # finds the tarball's folder
  assert data.train_x.shape == (15, 32, 32, 3) and data.test_x.shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(data.test_x, expected["test_batch.bin"][0])
  np.testing.assert_array_equal(data.train_y[:3], expected["data_batch_1.bin"][1])


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                                        ("cifar10", (32, 32, 3))])
def test_tfds_source_with_mock_data(isolated_home, name, shape):
  with tfds.testing.mock_data(num_examples=6):
    data = images.load(name, sources=("tfds",))
  assert data.train_x.shape == (6, *shape) and data.train_x.dtype == np.uint8
  assert data.test_y.shape == (6,) and data.test_y.dtype == np.int32
  assert "tfds.data_source" in data.source


def test_offline_mnist_fails_fast_and_names_the_fix(isolated_home):
  url = next(iter(tfds.builder_cls("mnist").url_infos))
  if images._reachable(url):
    pytest.skip("the MNIST download host is reachable: this machine is online")
  start = time.monotonic()
  with pytest.raises(images.DatasetUnavailableError) as err:
    images.load("mnist")
  elapsed = time.monotonic() - start
  assert elapsed < 10, f"offline failure took {elapsed:.1f} s"
  message = str(err.value)
  assert "--data-dir" in message and "network unreachable" in message
  assert "fashion_mnist" in message  # suggests a dataset that works offline


def test_dlcore_offline_skips_download(isolated_home, monkeypatch):
  monkeypatch.setenv("DLCORE_OFFLINE", "1")
  with pytest.raises(images.DatasetUnavailableError, match="DLCORE_OFFLINE"):
    images.load("mnist")


def test_fallback_loads_another_dataset(isolated_home, capsys):
  data = images.load("mnist", sources=("files",), fallback="digits")
  assert data.name == "digits" and "fallback: mnist unavailable" in data.source
  err = capsys.readouterr().err
  assert "note: mnist is not available (no local copy; " in err and "using digits instead" in err


def test_digits_bundled():
  data = images.load("digits")
  assert data.train_x.shape == (1437, 8, 8, 1) and data.test_x.shape == (360, 8, 8, 1)
  assert data.train_x.max() == 255 and data.train_x.dtype == np.uint8
  assert set(np.unique(data.test_y)) == set(range(10))


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(isolated_home):
  data = images.load("fashion_mnist")
  assert FASHION_DIR in data.source
  assert data.train_x.shape == (60000, 28, 28, 1) and data.test_x.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(data.train_y), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(data.test_y), [1000] * 10)
  assert data.train_x.min() == 0 and data.train_x.max() == 255
  assert data.class_names[9] == "Ankle boot"


def test_pipeline_scales_pads_resizes():
  x = jnp.array([[[[0], [255]]]], jnp.uint8)  # 1x1x2x1
  np.testing.assert_allclose(ImagePipeline("pm1")(x).ravel(), [-1, 1])
  np.testing.assert_allclose(ImagePipeline("unit")(x).ravel(), [0, 1])
  batch = jnp.full((2, 28, 28, 1), 255, jnp.uint8)
  padded = ImagePipeline("pm1", size=32)(batch)
  assert padded.shape == (2, 32, 32, 1)
  assert float(padded[0, 0, 0, 0]) == -1.0 and float(padded[0, 2, 2, 0]) == 1.0  # border = 0
  assert ImagePipeline("unit", size=224, resize="bilinear")(batch).shape == (2, 224, 224, 1)
  assert ImagePipeline("unit", flatten=True)(batch).shape == (2, 784)
  with pytest.raises(ValueError, match="scale"):
    ImagePipeline("zscore")
  with pytest.raises(ValueError, match="NHWC"):
    ImagePipeline()(jnp.zeros((28, 28), jnp.uint8))


def test_a_truncated_cifar_batch_is_refused_in_one_line(isolated_home):
  folder = isolated_home / "cifar-10-batches-bin"
  folder.mkdir()
  for name in images.CIFAR_TRAIN + images.CIFAR_TEST:
    np.zeros(2 * images.CIFAR_RECORD, np.uint8).tofile(folder / name)
  with open(folder / "data_batch_3.bin", "ab") as f:
    f.write(b"\0" * 100)  # a record cut short
  with pytest.raises(DataError, match=r"data_batch_3\.bin: 6246 bytes .*truncated"):
    images.load("cifar10", data_dir=str(folder))


def _cifar_tarball(path, records):
  import io
  import tarfile
  with tarfile.open(path, "w:gz") as tar:
    for name in images.CIFAR_TRAIN + images.CIFAR_TEST:
      raw = np.zeros(records * images.CIFAR_RECORD, np.uint8).tobytes()
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))


def test_cifar_extraction_is_all_or_nothing_and_counts_records(tmp_path):
  dest = tmp_path / "cache"
  dest.mkdir()
  _cifar_tarball(tmp_path / "short.tar.gz", 3)  # a well-formed archive with too few records
  with pytest.raises(images.DownloadError, match="3 records|not 10000 records"):
    images._extract(str(tmp_path / "short.tar.gz"), str(dest), images.info("cifar10"))
  assert os.listdir(dest) == []  # nothing half-extracted, no temporary folder
  (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "short.tar.gz").read_bytes()[:300])
  with pytest.raises(images.DownloadError, match="cannot be extracted|not 10000 records"):
    images._extract(str(tmp_path / "cut.tar.gz"), str(dest), images.info("cifar10"))
  assert os.listdir(dest) == []
  # The same archive with the expected count (3 here) is extracted and read.
  images.CIFAR_RECORDS_PER_FILE, full = 3, images.CIFAR_RECORDS_PER_FILE
  try:
    images._extract(str(tmp_path / "short.tar.gz"), str(dest), images.info("cifar10"))
  finally:
    images.CIFAR_RECORDS_PER_FILE = full
  assert os.listdir(dest) == ["cifar-10-batches-bin"]
  assert images.load("cifar10", data_dir=str(dest)).train_x.shape == (15, 32, 32, 3)
