"""Named image datasets as uint8 NumPy arrays: mnist, fashion_mnist, cifar10, digits.

    data = load("fashion_mnist")                       # finds the files, or says how to get them
    data = load("mnist", data_dir="~/data/mnist")     # a folder of MNIST-format IDX files
    data.train_x.shape, data.train_y.shape, data.source

Images are NHWC uint8 (digits: 0..16 scaled to 0..255), labels int32. Normalisation happens
on the device, inside the compiled step (`ImagePipeline`), so the host ships uint8 batches.

Where the data comes from, in order (the first that has it wins; `data.source` says which):
1. `data_dir` given explicitly: the four IDX files (`train-images-idx3-ubyte[.gz]`, ...), or
   for cifar10 the binary batches (`data_batch_1.bin` ... `test_batch.bin`).
2. Known folders: `$DLCORE_DATA_DIR/<name>`, `~/.cache/dlcore/datasets/<name>` (where
   downloads land) and the system copy (Debian's `dataset-fashion-mnist` package puts
   Fashion-MNIST in /usr/share/datasets/fashion-mnist).
3. TFDS data already prepared on disk, read with `tfds.data_source` (array_record; no
   TensorFlow needed) from `$TFDS_DATA_DIR` or ~/tensorflow_datasets. Under
   `tfds.testing.mock_data` this is the path the tests take.
4. A download of the files TFDS registers for the dataset (its URLs and SHA-256 checksums),
   into ~/.cache/dlcore/datasets/<name>, all or nothing per file (`fetch`: a broken, stalled
   or mismatching transfer keeps nothing), with a progress bar. TFDS's own `download_and_prepare` would encode the
   images with TensorFlow, which dlcore does not install; reading the raw files needs only
   NumPy. The network is probed first (3 s): offline, `load` fails at once with an error that
   names the fix instead of reaching TFDS's ~205-second retry loop. `DLCORE_OFFLINE=1` skips
   the download step altogether.

`digits` is scikit-learn's bundled 8x8 set (1797 images): always available offline.
`fallback=` (used only by the flagship experiment) loads another dataset instead of failing,
with a printed warning.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from dlcore import preemption
from dlcore.data import DataError

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
DIGIT_CLASSES = tuple(str(i) for i in range(10))

IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = ("test_batch.bin",)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  file_format: str                   # idx | cifar_bin | sklearn
  tfds_name: str | None = None
  system_dirs: tuple[str, ...] = ()
  hint: str = ""                     # how to get the files, for error messages


DATASETS = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), DIGIT_CLASSES, "idx", "mnist",
                         ("/usr/share/datasets/mnist",),
                         "put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in a "
                         "folder and pass --data-dir FOLDER"),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), FASHION_CLASSES, "idx",
                                 "fashion_mnist", ("/usr/share/datasets/fashion-mnist",),
                                 "install it offline with `apt-get install "
                                 "dataset-fashion-mnist` (Debian/Ubuntu), or pass --data-dir "
                                 "with the four IDX files"),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), CIFAR10_CLASSES, "cifar_bin", "cifar10", (),
                           "extract cifar-10-binary.tar.gz and pass --data-dir "
                           "cifar-10-batches-bin"),
    "digits": DatasetInfo("digits", (8, 8, 1), DIGIT_CLASSES, "sklearn"),
}


class DatasetUnavailableError(FileNotFoundError):
  """No local copy of the dataset and no way to download it; the message names the fix."""


@dataclasses.dataclass
class ImageData:
  name: str
  train_x: np.ndarray  # (N, H, W, C) uint8
  train_y: np.ndarray  # (N,) int32
  test_x: np.ndarray
  test_y: np.ndarray
  class_names: tuple[str, ...]
  source: str          # where the arrays came from (recorded in summary.json)
  replaced: tuple[str, ...] = ()  # the datasets asked for first, not available (fallback)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])

  def train(self) -> dict:
    return {"x": self.train_x, "y": self.train_y}

  def test(self) -> dict:
    return {"x": self.test_x, "y": self.test_y}

  def subset(self, train: int | None = None, test: int | None = None) -> "ImageData":
    """The first `train` / `test` examples (for quick runs and tests)."""
    return dataclasses.replace(
        self, train_x=self.train_x[:train], train_y=self.train_y[:train],
        test_x=self.test_x[:test], test_y=self.test_y[:test],
        source=self.source + (f" (first {train} train / {test} test)" if train or test else ""))

  @property
  def label(self) -> str:
    """The name, and what it stands in for: `digits (mnist, fashion_mnist not available)`."""
    if not self.replaced:
      return self.name
    return f"{self.name} ({', '.join(self.replaced)} not available)"

  def describe(self) -> str:
    return (f"{self.name}: {len(self.train_x)} train / {len(self.test_x)} test images "
            f"{self.image_shape}, {self.num_classes} classes, from {self.source}")


def names() -> list[str]:
  return sorted(DATASETS)


def info(name: str) -> DatasetInfo:
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(names())}") from None


# ---- file formats ------------------------------------------------------------------------
def _open(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (the MNIST format; gzip or plain): a big-endian header with the
  element type and dimensions, then the raw array."""
  dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  with _open(path) as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
    raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
  ndim = raw[3]
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(dtypes[raw[2]])
  offset = 4 + 4 * ndim
  expected = int(np.prod(dims)) * dtype.itemsize
  if len(raw) - offset != expected:
    raise DataError(f"{path}: header says {dims} ({expected} bytes) but the file holds "
                     f"{len(raw) - offset} bytes; the file is truncated or corrupt")
  return np.frombuffer(raw, dtype, offset=offset).reshape(dims)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (gzip if the path ends in .gz); for test fixtures."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def _find(folder: str, stem: str) -> str | None:
  for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
    p = os.path.join(folder, candidate)
    if os.path.isfile(p):
      return p
  return None


def _read_idx_folder(folder: str) -> dict | None:
  paths = {k: _find(folder, stem) for k, stem in IDX_FILES.items()}
  if not all(paths.values()):
    return None
  arrays = {k: read_idx(p) for k, p in paths.items()}
  for split in ("train", "test"):
    if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
      raise ValueError(f"{folder}: {split} images and labels differ in count")
  return {k: (v[..., None] if k.endswith("_x") else v.astype(np.int32))
          for k, v in arrays.items()}


def _read_cifar_folder(folder: str) -> dict | None:
  if not all(os.path.isfile(os.path.join(folder, f)) for f in CIFAR_TRAIN + CIFAR_TEST):
    return None

  def read(files):
    parts = []
    for f in files:
      raw = np.fromfile(os.path.join(folder, f), np.uint8)
      if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{os.path.join(folder, f)}: {raw.size} bytes is not a whole number "
                         f"of {CIFAR_RECORD}-byte records; the file is truncated or corrupt")
      parts.append(raw.reshape(-1, CIFAR_RECORD))
    rec = np.concatenate(parts)
    # Each record: 1 label byte, then 3x32x32 pixels, channel-major.
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0].astype(np.int32)

  (tx, ty), (vx, vy) = read(CIFAR_TRAIN), read(CIFAR_TEST)
  return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def _read_folder(ds: DatasetInfo, folder: str) -> dict | None:
  folder = os.path.expanduser(folder)
  if not os.path.isdir(folder):
    return None
  if ds.file_format == "idx":
    return _read_idx_folder(folder)
  sub = os.path.join(folder, "cifar-10-batches-bin")  # the tarball's own folder
  return _read_cifar_folder(folder) or (_read_cifar_folder(sub) if os.path.isdir(sub) else None)


# ---- sources -----------------------------------------------------------------------------
def cache_dir(name: str) -> str:
  return os.path.join(os.path.expanduser("~/.cache/dlcore/datasets"), name)


def _known_dirs(ds: DatasetInfo) -> list[str]:
  dirs = []
  if os.environ.get("DLCORE_DATA_DIR"):
    dirs.append(os.path.join(os.environ["DLCORE_DATA_DIR"], ds.name))
  return dirs + [cache_dir(ds.name), *ds.system_dirs]


def _from_tfds(ds: DatasetInfo, tfds_data_dir: str | None) -> tuple[dict | None, str]:
  """Reads a TFDS-prepared copy with `tfds.data_source` (array_record, no TensorFlow).

  Never downloads (`download=False`): an unprepared dataset fails in milliseconds."""
  import tensorflow_datasets as tfds

  out = {}
  # TFDS warns through absl about the empty version folder an unprepared dataset leaves; the
  # outcome is reported in our own message, so that warning is noise to the user.
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)
  try:
    for split in ("train", "test"):
      source = tfds.data_source(ds.tfds_name, split=split, data_dir=tfds_data_dir,
                                download=False)
      rows = [source[i] for i in range(len(source))]
      out[f"{split}_x"] = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
      out[f"{split}_y"] = np.asarray([r["label"] for r in rows], np.int32)
  except Exception as e:  # not prepared, prepared as TFRecord, missing files, ...
    return None, f"not prepared ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
  finally:
    absl_log.setLevel(level)
  where = tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  return out, f"TFDS {ds.tfds_name} prepared in {where} (tfds.data_source)"


def _reachable(url: str, timeout: float = 3.0) -> bool:
  """Can we open a TCP connection to the URL's host? DNS can hang longer than a socket
  timeout, so the probe runs in a daemon thread that we stop waiting for."""
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  ok = []

  def probe():
    try:
      socket.create_connection((parsed.hostname, port), timeout=timeout).close()
      ok.append(True)
    except OSError:
      pass

  t = threading.Thread(target=probe, daemon=True)
  t.start()
  t.join(timeout)
  return bool(ok)


DOWNLOAD_TIMEOUT_S = 30.0  # seconds without a byte before a download gives up
_CHUNK = 1 << 16


class DownloadError(OSError):
  """A download that failed or was refused; nothing of it was kept. One line, says why."""


def download_timeout() -> float:
  """Seconds a download may wait for its next byte: `$DLCORE_DOWNLOAD_TIMEOUT` or 30."""
  raw = os.environ.get("DLCORE_DOWNLOAD_TIMEOUT")
  if raw is None:
    return DOWNLOAD_TIMEOUT_S
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not value > 0:
    raise ValueError(f"DLCORE_DOWNLOAD_TIMEOUT={raw!r} is not a positive number of seconds")
  return value


def fetch(url: str, path: str, *, sha256: str | None = None, size: int | None = None,
          timeout: float | None = None, progress: bool = True) -> str:
  """Downloads `url` to `path`, all or nothing.

  The bytes stream into a private temporary file beside `path` (so two processes filling
  the same cache never see each other's halves) while their SHA-256 is computed; the file
  becomes `path` (an atomic rename) only when every byte the server announced arrived and
  the checksum matches. A stall of `timeout` seconds (default `download_timeout()`), a
  connection that breaks, an HTTP error or a wrong checksum removes the temporary file and
  raises `DownloadError` with one line. A tqdm bar shows bytes and rate on stderr.
  """
  timeout = download_timeout() if timeout is None else timeout
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  digest, received, expected = hashlib.sha256(), 0, size
  tmp = out = None
  try:
    with preemption.held():  # no stop between the file's creation and knowing its name
      fd, tmp = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=".part")
      out = os.fdopen(fd, "wb")
    with out:
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          length = response.headers.get("Content-Length")
          expected = int(length) if length and length.isdigit() else size
          with tqdm(total=expected, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            while chunk := response.read(_CHUNK):
              out.write(chunk)
              digest.update(chunk)
              received += len(chunk)
              bar.update(len(chunk))
      except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
      except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
          raise DownloadError(
              f"{url}: no data for {timeout:g} s after {received} bytes (a stalled server; "
              f"DLCORE_DOWNLOAD_TIMEOUT sets the wait)") from None
        raise DownloadError(f"{url}: the connection failed after {received} bytes "
                            f"({type(reason).__name__}: {reason})") from None
    if expected is not None and received != expected:
      raise DownloadError(f"{url}: the connection closed after {received} of {expected} "
                          f"bytes; nothing was kept, the next run downloads it again")
    if sha256 and digest.hexdigest() != sha256:
      raise DownloadError(f"{url}: refused, SHA-256 {digest.hexdigest()[:16]}... is not the "
                          f"registered {sha256[:16]}...; nothing was kept (a proxy or a "
                          f"changed file on the server?)")
    os.replace(tmp, path)
  except BaseException:
    with preemption.held():
      if out is not None:
        out.close()
      if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
          os.remove(tmp)
    raise
  return path


def _download(ds: DatasetInfo, progress: bool = True) -> tuple[str | None, str]:
  """Downloads the files TFDS registers for `ds` (its URL table: URLs, sizes, SHA-256) into
  the cache; files already there were verified when they arrived and are not fetched again.
  Returns (folder, how) or (None, why not)."""
  if os.environ.get("DLCORE_OFFLINE"):
    return None, "skipped (DLCORE_OFFLINE is set)"
  import tensorflow_datasets as tfds

  url_infos = tfds.builder_cls(ds.tfds_name).url_infos or {}
  if not url_infos:
    return None, f"TFDS registers no download URLs for {ds.tfds_name}"
  first = next(iter(url_infos))
  host = urllib.parse.urlparse(first).hostname
  if not _reachable(first):
    return None, f"network unreachable ({host} did not answer within 3 s)"
  dest = cache_dir(ds.name)
  paths = {url: os.path.join(dest, meta.filename or os.path.basename(url))
           for url, meta in url_infos.items()}
  missing = [url for url, path in paths.items() if not os.path.exists(path)]
  if missing:
    print(f"downloading {ds.name} ({len(missing)} files) from {host} into {dest}",
          file=sys.stderr)
  try:
    for url in missing:
      meta = url_infos[url]
      fetch(url, paths[url], sha256=meta.checksum or None,
            size=int(meta.size) if meta.size else None, progress=progress)
  except DownloadError as e:
    return None, str(e)
  try:
    for path in paths.values():
      if path.endswith(".tar.gz"):
        _extract(path, dest, ds)
  except DownloadError as e:
    return None, str(e)
  return dest, f"downloaded from {host}, SHA-256 checked"


CIFAR_RECORD = 3073  # 1 label byte + 3x32x32 pixels
CIFAR_RECORDS_PER_FILE = 10_000


def _extract(archive: str, dest: str, ds: DatasetInfo) -> None:
  """Extracts `archive` into `dest` all or nothing: into a private folder first, checked
  (CIFAR-10: 10,000 records in every batch file), then each top-level folder is renamed into
  place. A folder already in place is kept (it was checked when it arrived)."""
  tmp = None
  try:
    with preemption.held():  # no stop between the folder's creation and knowing its name
      tmp = tempfile.mkdtemp(dir=dest, prefix=".extract-")
    try:
      with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
      raise DownloadError(f"{archive}: cannot be extracted ({type(e).__name__}: {e}); "
                          "delete it and run again") from None
    if ds.file_format == "cifar_bin":
      folder = os.path.join(tmp, "cifar-10-batches-bin")
      for name in CIFAR_TRAIN + CIFAR_TEST:
        f = os.path.join(folder, name)
        size = os.path.getsize(f) if os.path.isfile(f) else None
        if size != CIFAR_RECORDS_PER_FILE * CIFAR_RECORD:
          raise DownloadError(
              f"{archive}: {name} holds {'no file' if size is None else f'{size} bytes'}, not "
              f"{CIFAR_RECORDS_PER_FILE} records of {CIFAR_RECORD} bytes; nothing was kept")
    for name in os.listdir(tmp):
      target = os.path.join(dest, name)
      try:
        os.rename(os.path.join(tmp, name), target)
      except OSError:
        if not os.path.exists(target):
          raise
        # Another run extracted the same archive first: its copy was checked too.
  finally:
    if tmp is not None:
      with preemption.held():
        shutil.rmtree(tmp, ignore_errors=True)


def _digits() -> dict:
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  d = load_digits()
  x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  tx, vx, ty, vy = train_test_split(x, d.target.astype(np.int32), test_size=0.2,
                                    random_state=0, stratify=d.target)
  return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


SOURCES = ("files", "tfds", "download")


def load(name: str, *, data_dir: str | None = None, tfds_data_dir: str | None = None,
         sources: Sequence[str] = SOURCES,
         fallback: str | Sequence[str] | None = None, progress: bool = True) -> ImageData:
  """Loads dataset `name` (see the module docstring for where it looks).

  data_dir: a folder with the dataset's files; when given, only that folder is tried.
  sources: which of "files" (known folders), "tfds" (prepared TFDS data) and "download" to
    try, in that order.
  fallback: a dataset (or several, tried in order) to load instead when `name` is
    unavailable; prints a warning that says why, and the returned `source` says what was
    used.
  progress: show a progress bar (bytes, rate) while downloading.
  """
  ds = info(name)
  if ds.file_format == "sklearn":
    return _assemble(ds, _digits(), "scikit-learn's bundled digits (8x8, 80/20 split, seed 0)")
  tried = []
  arrays, source = None, ""
  if data_dir:
    arrays = _read_folder(ds, data_dir)
    source = f"files in {os.path.abspath(os.path.expanduser(data_dir))}"
    if arrays is None:
      expected = (", ".join(s + "[.gz]" for s in IDX_FILES.values()) if ds.file_format == "idx"
                  else ", ".join(CIFAR_TRAIN + CIFAR_TEST))
      tried.append(f"--data-dir {data_dir}: no {expected}")
  else:
    if "files" in sources:
      for folder in _known_dirs(ds):
        arrays = _read_folder(ds, folder)
        if arrays is not None:
          source = f"files in {folder}"
          break
        tried.append(f"{folder}: missing")
    if arrays is None and "tfds" in sources and ds.tfds_name:
      arrays, source = _from_tfds(ds, tfds_data_dir)
      if arrays is None:
        tried.append(f"TFDS: {source}")
    if arrays is None and "download" in sources and ds.tfds_name:
      folder, note = _download(ds, progress)
      arrays = _read_folder(ds, folder) if folder else None
      source = f"files in {folder} ({note})"
      if arrays is None:
        tried.append(f"download: {note}")
  if arrays is not None:
    return _assemble(ds, arrays, source)
  others = [o for o in ("--dataset fashion_mnist (apt-get install dataset-fashion-mnist)",
                        "--dataset digits (bundled with scikit-learn)")
            if f" {name} " not in o]
  message = (f"dataset {name!r} is not available here. Tried: {'; '.join(tried)}. "
             f"Fix: {ds.hint}; or run once with network access; or choose another dataset, "
             f"e.g. {' or '.join(others)}.")
  chain = [fallback] if isinstance(fallback, str) else list(fallback or [])
  chain = [f for f in chain if f != name]
  if chain:
    # The last source tried (normally the download) is the one that says why.
    why = f"no local copy; {tried[-1]}" if len(tried) > 1 else tried[-1]
    print(f"note: {name} is not available ({why}); using {chain[0]} instead (name one with "
          f"--dataset; to get {name}: {ds.hint})", file=sys.stderr)
    data = load(chain[0], sources=sources, fallback=chain[1:], progress=progress)
    return dataclasses.replace(data, source=f"{data.source} (fallback: {name} unavailable)",
                               replaced=(name, *data.replaced))
  raise DatasetUnavailableError(message)


def _assemble(ds: DatasetInfo, arrays: dict, source: str) -> ImageData:
  data = ImageData(ds.name, arrays["train_x"], arrays["train_y"].astype(np.int32),
                   arrays["test_x"], arrays["test_y"].astype(np.int32), ds.class_names, source)
  for split in ("train_x", "test_x"):
    shape = getattr(data, split).shape[1:]
    if shape != ds.shape:
      raise ValueError(f"{ds.name} {split} images have shape {shape}, expected {ds.shape}; "
                       f"the files in {source} are not {ds.name}")
  return data


def main(argv: Sequence[str] | None = None) -> None:
  """python -m dlcore.data.images NAME...: finds each dataset (downloading it when it is
  nowhere here and the network answers) and says where it is; exit 1 when one is missing."""
  names_asked = list(sys.argv[1:] if argv is None else argv)
  if not names_asked or any(n.startswith("-") for n in names_asked):
    print(f"usage: python -m dlcore.data.images NAME... (one of {', '.join(names())})")
    raise SystemExit(0 if names_asked and names_asked[0] in ("-h", "--help") else 2)
  for name in names_asked:
    try:
      print(load(name).describe())
    except (DatasetUnavailableError, KeyError) as e:
      print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
      raise SystemExit(1) from None


if __name__ == "__main__":
  main()
