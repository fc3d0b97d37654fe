"""Chapter 8: VAE, GAN, CGAN, DCGAN: shapes, the reparameterisation, one step in eager / jit /
pmap, pmap == jit, both players checkpointed, Frechet distance, the flagship's fallback."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import metrics, models
from dlcore.checkpoint import Checkpointer
from dlcore.data.transforms import ImagePipeline
from dlcore.losses import vae_loss
from dlcore.models.layers import UpConv2x
from dlcore.train import Runner, create_train_state, make_train_step
from dlcore.train.gan import create_gan_state, generate, make_gan_step
from tests.helpers import max_abs_diff
from tests.test_data import isolated_home  # noqa: F401  (fixture)

QUIET = ["--no-progress"]
VARIANTS = {"gan": ("gan_generator", "gan_discriminator", 64, False),
            "cgan": ("cgan_generator", "cgan_discriminator", 64, True),
            "dcgan": ("dcgan_generator", "dcgan_discriminator", 100, False)}


def image_batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
          "y": rng.integers(0, 10, n).astype(np.int32)}


@pytest.mark.parametrize("cin,cout,hw", [(6, 4, 5), (3, 1, 7)])
def test_upconv_equals_conv_transpose(cin, cout, hw):
  key = jax.random.PRNGKey(cin)
  x = jax.random.normal(key, (2, hw, hw, cin))
  ref = nn.ConvTranspose(cout, (4, 4), strides=(2, 2), padding="SAME")
  v = ref.init(key, x)
  fast = UpConv2x(cout)
  np.testing.assert_allclose(fast.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  g_ref = jax.grad(lambda v, x: jnp.sum(ref.apply(v, x) ** 2), argnums=(0, 1))(v, x)
  g_fast = jax.grad(lambda v, x: jnp.sum(fast.apply(v, x) ** 2), argnums=(0, 1))(v, x)
  assert max_abs_diff(g_ref, g_fast) < 1e-3 * max(1.0, float(jnp.abs(g_ref[1]).max()))


def test_generative_shapes():
  key = jax.random.PRNGKey(0)
  x = jnp.zeros((3, 28, 28, 1))
  vae = models.build("vae")
  v = vae.init(key, x)
  logits, mu, log_var = vae.apply(v, x)
  assert logits.shape == (3, 784) and mu.shape == log_var.shape == (3, 20)
  assert vae.apply(v, jnp.zeros((5, 20)), method=vae.decode).shape == (5, 28, 28, 1)
  for g_name, d_name, latent, cond in VARIANTS.values():
    g, d = models.build(g_name), models.build(d_name)
    extra = (jnp.arange(3),) if cond else ()
    gv = g.init(key, jnp.zeros((3, latent)), *extra)
    img = g.apply(gv, jnp.zeros((3, latent)), *extra)
    assert img.shape == (3, 28, 28, 1) and float(jnp.abs(img).max()) <= 1.0
    dv = d.init(key, img, *extra)
    assert d.apply(dv, img, *extra).shape == (3,)


def test_reparameterisation_uses_the_standard_deviation():
  vae = models.build("vae", z_dim=2)
  v = vae.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  mu = jnp.array([[1.0, -2.0]]).repeat(20000, 0)
  log_var = jnp.log(jnp.array([[4.0, 0.25]])).repeat(20000, 0)  # std 2 and 0.5
  z = vae.apply(v, mu, log_var, jax.random.PRNGKey(1), method=vae.reparameterize)
  np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.05)
  np.testing.assert_allclose(z.std(0), [2.0, 0.5], rtol=0.03)


def test_vae_loss_terms():
  logits = jnp.array([[0.0, 2.0]])
  x = jnp.array([[1.0, 0.0]])
  total, parts = vae_loss(logits, x, jnp.zeros((1, 3)), jnp.zeros((1, 3)))
  want_bce = -np.log(0.5) - np.log(1 - 1 / (1 + np.exp(-2.0)))
  np.testing.assert_allclose(parts["bce"], want_bce, rtol=1e-5)
  np.testing.assert_allclose(parts["kl"], 0.0, atol=1e-7)  # q = N(0, I) is the prior
  np.testing.assert_allclose(total, want_bce, rtol=1e-5)
  _, parts = vae_loss(logits, x, jnp.ones((1, 3)), jnp.zeros((1, 3)))
  np.testing.assert_allclose(parts["kl"], 1.5, rtol=1e-6)  # 1/2 * sum(mu^2)
  # The batch mean of per-example totals: two copies of the same example change nothing.
  total2, _ = vae_loss(jnp.tile(logits, (2, 1)), jnp.tile(x, (2, 1)), jnp.ones((2, 3)),
                       jnp.zeros((2, 3)))
  np.testing.assert_allclose(total2, want_bce + 1.5, rtol=1e-5)


def vae_step(mode, devices=None):
  runner = Runner(mode, devices=devices)
  vae = models.build("vae")
  pipe = ImagePipeline("unit")
  state = create_train_state(vae, optax.sgd(0.01), pipe(image_batch(2)["x"]), 0)

  def loss_fn(out, batch):
    logits, mu, log_var = out
    return vae_loss(logits, pipe(batch["x"]), mu, log_var)

  # The "noise" stream the VAE samples with is found by the step itself.
  step = runner.compile(make_train_step(loss_fn, preprocess=pipe))
  state, metrics = step(runner.put_state(state), runner.put_batch(image_batch()))
  return runner.get_state(state), float(runner.get_output(metrics)["loss"])


def gan_step(variant, mode, devices=None):
  g_name, d_name, latent, cond = VARIANTS[variant]
  runner = Runner(mode, devices=devices)
  # SGD: Adam's first steps are ~lr * sign(g), which turns float rounding in tiny
  # gradients into visible differences; SGD keeps the comparison tight.
  state = create_gan_state(models.build(g_name), models.build(d_name),
                           optax.sgd(0.05, momentum=0.5), optax.sgd(0.05, momentum=0.5),
                           latent_size=latent, image_shape=(28, 28, 1), conditional=cond)
  step = runner.compile(make_gan_step(latent_size=latent,
                                      preprocess=ImagePipeline("pm1"), conditional=cond))
  state = runner.put_state(state)
  for _ in range(2):
    state, metrics = step(state, runner.put_batch(image_batch()))
  return runner.get_state(state), runner.get_output(metrics)


def test_vae_step_eager_jit_pmap_sharded():
  ref, loss = vae_step("jit")
  assert np.isfinite(loss)
  for mode, devices in (("eager", None), ("pmap", 2), ("sharded", 2)):
    other, other_loss = vae_step(mode, devices)
    assert int(other.step) == 1 and np.isfinite(other_loss)
    # The same noise in every mode: pmap devices slice the whole batch's draw.
    assert max_abs_diff(ref.params, other.params) < 1e-5, mode
    np.testing.assert_allclose(other_loss, loss, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gan_steps_eager_jit_pmap(variant):
  ref, metrics = gan_step(variant, "jit")
  assert int(ref.step) == 2 and int(ref.d.step) == 2
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert 0 < float(metrics["d_real"]) < 1 and 0 < float(metrics["d_fake"]) < 1
  # Eager is checked on the small players; DCGAN's convolutions op by op cost ~20 s.
  modes = (("pmap", 2),) if variant == "dcgan" else (("eager", None), ("pmap", 2))
  for mode, devices in modes:
    other, _ = gan_step(variant, mode, devices)
    # The global noise is sliced per device and dcgan's batch norm takes the whole batch's
    # statistics (models built without any axis name): pmap computes one device's steps.
    assert max_abs_diff(ref.g.params, other.g.params) < 2e-5, (variant, mode)
    assert max_abs_diff(ref.d.params, other.d.params) < 2e-5, (variant, mode)
  if variant == "cgan":
    z = jnp.zeros((2, 64))
    a, b = generate(ref, z, jnp.array([0, 0])), generate(ref, z, jnp.array([0, 7]))
    np.testing.assert_allclose(a[0], b[0])
    assert float(jnp.abs(a[1] - b[1]).max()) > 0  # the label changes the sample


def test_gan_checkpoint_restores_both_players(tmp_path):
  state, _ = gan_step("dcgan", "jit")
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    ckpt.save(2, state, force=True)
  g_name, d_name, latent, _ = VARIANTS["dcgan"]
  fresh = create_gan_state(models.build(g_name), models.build(d_name),
                           optax.sgd(0.05, momentum=0.5), optax.sgd(0.05, momentum=0.5),
                           latent_size=latent,
                           image_shape=(28, 28, 1), seed=5)
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    restored = ckpt.restore(fresh)
  for player in ("g", "d"):
    for part in ("params", "opt_state", "batch_stats"):
      a, b = getattr(getattr(state, player), part), getattr(getattr(restored, player), part)
      assert max_abs_diff(a, b) == 0.0, (player, part)
  assert int(restored.step) == 2


def test_frechet_distance():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3000, 8))
  assert abs(metrics.frechet_distance(a, a)) < 1e-6
  b = rng.normal(size=(3000, 8))
  shifts = [metrics.frechet_distance(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
  assert shifts[0] < 0.05 and all(x < y for x, y in zip(shifts, shifts[1:]))
  np.testing.assert_allclose(shifts[3], 8 * 4.0, rtol=0.05)  # |mu diff|^2 = 8 * 2^2
  scaled = metrics.frechet_distance(a, 3 * b)  # Tr(I + 9I - 2*3I) = 4 per dimension
  np.testing.assert_allclose(scaled, 8 * 4.0, rtol=0.1)


def test_gan_experiment_resumes_both_players(tmp_path):
  from experiments import gan

  workdir = str(tmp_path / "cgan")
  args = ["--variant", "cgan", "--dataset", "digits", "--batch-size", "50", "--workdir",
          workdir, "--score-samples", "200", "--classifier", str(tmp_path / "clf"),
          "--classifier-epochs", "1", *QUIET]
  gan.main(args + ["--epochs", "1"])
  summary = gan.main(args + ["--epochs", "2", "--resume"])
  entry = summary["2.8.3"]
  assert entry["epochs"] == 2 and 0 <= entry["label_accuracy"] <= 1
  assert entry["frechet_distance"] > 0 and not entry["classifier"]["trained_in_this_run"]
  assert entry["classifier"]["path"] == str(tmp_path / "clf")
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  epochs = sorted({r["epoch"] for r in rows if r["split"] == "train"})
  assert epochs == [0, 1]
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["epoch_001.png",
                                                                   "epoch_002.png"]


@pytest.mark.parametrize("machine", ["debian_package", "neither"])
def test_vae_flagship_falls_back_offline_and_ends_as_the_readme_says(
    isolated_home, tmp_path, monkeypatch, capsys, machine):  # noqa: F811
  """Offline, `make run` trains on Fashion-MNIST where Debian's package is installed and on
  the bundled digits where it is not; its last line is the README's for that machine."""
  from dlcore.data import images
  from experiments import vae
  from tests.test_readme import make_run_endings

  monkeypatch.setenv("DLCORE_OFFLINE", "1")
  expected = {"debian_package": "fashion_mnist", "neither": "digits"}[machine]
  if machine == "neither":
    monkeypatch.setitem(images.DATASETS, "fashion_mnist", dataclasses.replace(
        images.DATASETS["fashion_mnist"], system_dirs=()))
  elif not os.path.isdir("/usr/share/datasets/fashion-mnist"):
    pytest.skip("needs Debian's dataset-fashion-mnist (make data)")
  workdir = str(tmp_path / "vae")
  summary = vae.main(["--workdir", workdir, "--epochs", "1", "--train-limit", "512",
                      "--test-limit", "256", "--score-samples", "0", "--latent-dim", "2",
                      *QUIET])
  entry = summary["2.8.1"]
  assert "fallback: mnist unavailable" in entry["dataset"]
  assert entry["dataset_name"] == expected
  assert np.isfinite(entry["test_loss"]) and entry["test_loss"] > 0
  captured = capsys.readouterr()
  last = captured.out.strip().splitlines()[-1]
  assert make_run_endings()[expected].match(last), last
  assert "note: mnist is not available (no local copy; download: skipped" in captured.err
  for f in ("loss_curves.png", "latent_manifold.png", "samples/epoch_001.png",
            "reconstructions/epoch_001.png"):
    assert os.path.exists(os.path.join(workdir, f)), f


def test_gan_scores_inside_fit_with_a_recorded_classifier(tmp_path, monkeypatch):
  """The sample scores are an evaluator of `fit` (in metrics.jsonl's eval rows), and the
  summary names the scoring classifier by its weights' hash; a second run reuses it."""
  from experiments import gan

  monkeypatch.setenv("DLCORE_CACHE", str(tmp_path / "cache"))
  args = ["--variant", "cgan", "--dataset", "digits", "--epochs", "2", "--train-limit", "200",
          "--test-limit", "100", "--score-samples", "100", "--classifier-epochs", "1",
          "--score-every", "1", *QUIET]
  first = gan.main(["--workdir", str(tmp_path / "a"), *args])["2.8.3"]
  assert np.isfinite(first["frechet_distance"]) and 0 <= first["label_accuracy"] <= 1
  assert first["classifier"]["trained_in_this_run"]
  rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
  scored = [r for r in rows if r["split"] == "eval"]
  assert len(scored) == 2 and all("frechet_distance" in r for r in scored)
  second = gan.main(["--workdir", str(tmp_path / "b"), *args])["2.8.3"]
  assert not second["classifier"]["trained_in_this_run"]
  assert second["classifier"]["weights_sha256"] == first["classifier"]["weights_sha256"]
  assert second["frechet_distance"] == first["frechet_distance"]  # same run, same score
