"""The download path, end to end, against an HTTP server on loopback started by each test.

The server serves MNIST-format IDX files the test makes; TFDS's URL table for mnist is
pointed at it (URLs, sizes and SHA-256 of the served files), so `images.load("mnist")` takes
the same path a user with internet takes: probe, fetch with a progress bar, verify, cache.
No real network is touched."""
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.checksums import UrlInfo
from tensorflow_datasets.core.units import Size

from dlcore.data import images
from tests.test_data import isolated_home  # noqa: F401  (fixture)


def idx_gz(array: np.ndarray) -> bytes:
  """`array` as the bytes of a gzipped IDX file, written here (not by dlcore's writer)."""
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
    f.write(bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                        for d in array.shape))
    f.write(np.ascontiguousarray(array, np.uint8).tobytes())
  return buf.getvalue()


class Server:
  """A loopback HTTP server with one behaviour per file name: ok | corrupt (a flipped
  byte) | break (closes after half the announced bytes) | stall_headers | stall_body."""

  def __init__(self, files: dict[str, bytes]):
    self.files, self.modes, self.requests = files, {}, []
    self.release = threading.Event()  # ends a stalled response
    state = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        state.requests.append(name)
        body, mode = state.files.get(name), state.modes.get(name, "ok")
        if body is None:
          self.send_error(404)
          return
        if mode == "stall_headers":
          state.release.wait(20)
          return
        if mode == "corrupt":
          body = body[:-1] + bytes([body[-1] ^ 0xFF])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("break", "stall_body"):
          self.wfile.write(body[:len(body) // 2])
          self.wfile.flush()
          if mode == "stall_body":
            state.release.wait(20)
          return  # HTTP/1.0: the connection closes here, half the body short
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def stop(self):
    self.release.set()
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def served(isolated_home, monkeypatch):  # noqa: F811
  """A served MNIST (600 train / 200 test images) and TFDS's mnist URL table pointing at it."""
  rng = np.random.default_rng(0)
  # Blobs, not noise, so a VAE has something to learn; labels 0..9.
  yy, xx = np.mgrid[:28, :28]
  centers = rng.uniform(6, 22, (800, 2))
  blobs = np.exp(-((yy - centers[:, :1, None]) ** 2 + (xx - centers[:, 1:, None]) ** 2) / 18)
  x = (255 * blobs).astype(np.uint8)
  y = rng.integers(0, 10, 800).astype(np.uint8)
  arrays = {"train_x": x[:600], "train_y": y[:600], "test_x": x[600:], "test_y": y[600:]}
  files = {stem + ".gz": idx_gz(arrays[key]) for key, stem in images.IDX_FILES.items()}
  server = Server(files)
  table = {server.url + name: UrlInfo(size=Size(len(body)),
                                      checksum=hashlib.sha256(body).hexdigest(), filename=name)
           for name, body in files.items()}
  monkeypatch.setattr(tfds.builder_cls("mnist"), "url_infos", table)
  server.arrays = arrays
  yield server
  server.stop()


def cached_files():
  folder = images.cache_dir("mnist")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def one_line(error) -> str:
  message = str(error.value)
  assert "\n" not in message, message
  return message


def test_clean_fetch_with_progress_then_the_cache_without_network(served, capsys):
  data = images.load("mnist")
  for key, array in served.arrays.items():
    got = getattr(data, key)
    np.testing.assert_array_equal(got[..., 0] if key.endswith("_x") else got, array)
  assert "downloaded from 127.0.0.1, SHA-256 checked" in data.source
  assert sorted(served.requests) == sorted(served.files)
  assert cached_files() == sorted(served.files)  # the four files, no temporary left
  err = capsys.readouterr().err
  assert f"downloading mnist (4 files) from 127.0.0.1 into {images.cache_dir('mnist')}" in err
  # tqdm's bar: file name, bytes so far / total, and the rate.
  total = len(served.files["train-images-idx3-ubyte.gz"]) / 1024
  bar = re.search(r"train-images-idx3-ubyte\.gz: 100%.*?\| *([\d.]+)k/([\d.]+)k "
                  r"\[[\d:<]+, *[\d.]+[kMG]?B/s\]", err)
  assert bar, err
  assert float(bar.group(2)) == pytest.approx(total, abs=1)

  served.stop()  # a second run reads the cached copy; the network is not touched
  again = images.load("mnist")
  assert again.source == f"files in {images.cache_dir('mnist')}"
  np.testing.assert_array_equal(again.train_x, data.train_x)
  assert len(served.requests) == 4


def test_a_checksum_mismatch_is_refused_in_one_line_and_nothing_is_kept(served):
  served.modes["train-images-idx3-ubyte.gz"] = "corrupt"
  with pytest.raises(images.DatasetUnavailableError) as err:
    images.load("mnist")
  message = one_line(err)
  assert re.search(r"train-images-idx3-ubyte\.gz: refused, SHA-256 [0-9a-f]{16}\.\.\. is not "
                   r"the registered [0-9a-f]{16}\.\.\.; nothing was kept", message), message
  assert "train-images-idx3-ubyte.gz" not in cached_files()
  assert not [f for f in cached_files() if f.endswith(".part")]
  with pytest.raises(images.DatasetUnavailableError):  # a later run takes nothing for data
    images.load("mnist", sources=("files",))
  served.modes.clear()  # the server is fixed: the next run fetches what is still missing
  data = images.load("mnist")
  np.testing.assert_array_equal(data.train_x[..., 0], served.arrays["train_x"])
  assert served.requests.count("train-images-idx3-ubyte.gz") == 2


def test_a_broken_connection_keeps_no_partial_file_and_the_next_run_fetches_again(served):
  served.modes["t10k-images-idx3-ubyte.gz"] = "break"
  with pytest.raises(images.DatasetUnavailableError) as err:
    images.load("mnist")
  size = len(served.files["t10k-images-idx3-ubyte.gz"])
  assert f"t10k-images-idx3-ubyte.gz: the connection closed after {size // 2} of {size} " \
         f"bytes" in one_line(err)
  assert "t10k-images-idx3-ubyte.gz" not in cached_files()
  assert not [f for f in cached_files() if f.endswith(".part")]
  served.modes.clear()
  data = images.load("mnist")
  np.testing.assert_array_equal(data.test_x[..., 0], served.arrays["test_x"])
  assert served.requests.count("t10k-images-idx3-ubyte.gz") == 2


@pytest.mark.parametrize("mode", ["stall_headers", "stall_body"])
def test_a_stalled_server_times_out_in_one_line(served, monkeypatch, mode):
  monkeypatch.setenv("DLCORE_DOWNLOAD_TIMEOUT", "0.5")
  served.modes["train-labels-idx1-ubyte.gz"] = mode
  start = time.monotonic()
  with pytest.raises(images.DatasetUnavailableError) as err:
    images.load("mnist")
  assert time.monotonic() - start < 10
  message = one_line(err)
  assert "train-labels-idx1-ubyte.gz: no data for 0.5 s" in message
  assert "DLCORE_DOWNLOAD_TIMEOUT" in message
  assert "train-labels-idx1-ubyte.gz" not in cached_files()
  assert not [f for f in cached_files() if f.endswith(".part")]


def test_a_bad_timeout_setting_is_named(monkeypatch):
  monkeypatch.setenv("DLCORE_DOWNLOAD_TIMEOUT", "soon")
  with pytest.raises(ValueError, match="DLCORE_DOWNLOAD_TIMEOUT='soon' is not a positive"):
    images.download_timeout()


def test_the_flagship_trains_on_served_mnist_end_to_end(served, tmp_path, monkeypatch, capsys):
  """`python -m experiments.vae` with its defaults' dataset (MNIST) on a machine with
  internet: downloads, trains, scores with a CNN trained on the same data, and ends with
  the README's line for that machine."""
  from experiments import vae
  from tests.test_readme import make_run_endings

  monkeypatch.setenv("DLCORE_CACHE", str(tmp_path / "cache"))
  workdir = tmp_path / "vae"
  summary = vae.main(["--workdir", str(workdir), "--epochs", "2", "--score-samples", "200",
                      "--classifier-epochs", "1", "--no-progress"])
  entry = summary["2.8.1"]
  assert entry["dataset_name"] == "mnist" and "fallback" not in entry["dataset"]
  assert "downloaded from 127.0.0.1, SHA-256 checked" in entry["dataset"]
  assert np.isfinite(entry["test_loss"]) and np.isfinite(entry["frechet_distance"])
  assert entry["classifier"]["trained_in_this_run"]
  history = [json.loads(line) for line in open(workdir / "history.jsonl")]
  assert [h["epoch"] for h in history] == [0, 1]
  assert history[1]["eval"]["loss"] < history[0]["eval"]["loss"]  # it learns the blobs
  for f in ("loss_curves.png", "samples/epoch_002.png", "reconstructions/epoch_002.png"):
    assert (workdir / f).exists(), f
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert make_run_endings()["mnist"].match(last), last


def test_a_download_killed_mid_file_leaves_nothing_taken_for_data(served, tmp_path):
  """SIGKILL (no handler runs) while the body streams: the destination never exists, so a
  later run fetches the file again rather than reading half of it."""
  import signal
  import subprocess
  import sys
  name = "train-images-idx3-ubyte.gz"
  served.modes[name] = "stall_body"
  dest = tmp_path / "dl" / name
  code = ("import sys; from dlcore.data import images; "
          "images.fetch(sys.argv[1], sys.argv[2], timeout=60, progress=False)")
  proc = subprocess.Popen([sys.executable, "-c", code, served.url + name, str(dest)])
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:  # the transfer started (the server then stalls)
    if served.requests and (tmp_path / "dl").exists() and list((tmp_path / "dl").iterdir()):
      break
    time.sleep(0.05)
  time.sleep(0.5)
  assert proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert not dest.exists()
  assert [p.name for p in (tmp_path / "dl").glob("*.part")]  # only a .part, never read
