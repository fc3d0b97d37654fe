"""Chapter 7 LSTMs: shapes, training to zero error, a sine series, eager == jit, pmap."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlcore import data as dldata
from dlcore import losses, models
from dlcore.data import series, text
from dlcore.train import Runner, create_train_state, make_train_step
from experiments import lstm
from tests.helpers import max_abs_diff


def test_shapes_batch_major():
  tagger = models.build("lstm_tagger", vocab_size=12, tagset_size=3)
  x = jnp.zeros((2, 7), jnp.int32)
  v = tagger.init(jax.random.PRNGKey(0), x)
  logp = tagger.apply(v, x)
  assert logp.shape == (2, 7, 3)
  np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
  reg = models.build("lstm_regressor", hidden_dim=8)
  v = reg.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 1)))
  assert reg.apply(v, jnp.zeros((5, 30, 1))).shape == (5, 1)
  assert set(v["params"]["lstm1"]) == {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}


def test_vocab_maps_unknown_words_to_the_reserved_index():
  vocab = text.Vocab(s for s, _ in text.SPEC_TRAINING_DATA)
  assert vocab.itos[0] == text.UNK
  ids = vocab.encode("The cat ate".split())
  assert ids[1] == 0 and ids[0] != 0 and ids[2] != 0
  assert vocab.unknown("They ate the fish".split()) == ["They", "fish"]


def test_tagger_reaches_zero_training_error_on_the_seeds_sentences(tmp_path):
  for sentences in ("book", "spec"):
    s = lstm.main(["--task", "tagger", "--sentences", sentences, "--workdir",
                   str(tmp_path / sentences), "--seeds", "2", "--unk-prob", "0",
                   "--no-progress"])["2.7.1"]
    assert s["final_train_accuracy"] == 1.0
  book = lstm.main(["--task", "tagger", "--workdir", str(tmp_path / "b"), "--seeds", "3",
                    "--no-progress"])["2.7.1"]
  assert book["predictions"]["The cat ate the fish"] == [0, 1, 2, 0, 1]


def test_tagger_reads_a_word_tag_corpus(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("The/DET dog/NN ran/V\nA/DET cat/NN sat/V\n")
  assert text.read_tagged(str(corpus))[1] == (["A", "cat", "sat"], ["DET", "NN", "V"])
  bad = tmp_path / "bad.txt"
  bad.write_text("The dog\n")
  try:
    text.read_tagged(str(bad))
  except ValueError as e:
    assert "word/TAG" in str(e)
  else:
    raise AssertionError("a malformed corpus must be rejected")


def _sine_data(window=20):
  x, y = series.windows(series.sine_series(400).astype(np.float32), window)
  return {"x": x[..., None], "y": y[:, None]}


def test_regressor_beats_a_mean_predictor_on_a_sine():
  data = _sine_data()
  train = {k: v[:300] for k, v in data.items()}
  test = {k: v[300:] for k, v in data.items()}
  model = models.build("lstm_regressor", hidden_dim=16)
  state = create_train_state(model, optax.adam(1e-2), train["x"][:2])
  step = jax.jit(make_train_step(lambda o, b: (losses.mse(o, b["y"]), {})))
  for epoch in range(15):
    for b in dldata.batches(train, 20, shuffle=True, epoch=epoch):
      state, _ = step(state, b)
  pred = model.apply({"params": state.params}, test["x"])
  mse = float(jnp.mean((pred - test["y"]) ** 2))
  mean_mse = float(np.mean((test["y"] - train["y"].mean()) ** 2))
  assert mse < 0.1 * mean_mse


def test_eager_equals_jit_and_pmap_step():
  data = {k: v[:8] for k, v in _sine_data(10).items()}
  loss = lambda o, b: (losses.mse(o, b["y"]), {})  # noqa: E731
  out = {}
  for mode, devices in (("eager", None), ("jit", None), ("pmap", 2)):
    runner = Runner(mode, devices=devices)
    step = runner.compile(make_train_step(loss))
    state = runner.put_state(create_train_state(models.build("lstm_regressor", hidden_dim=4),
                                                optax.sgd(0.1), data["x"][:2]))
    for _ in range(2):
      state, _ = step(state, runner.put_batch(data))
    out[mode] = runner.get_state(state).params
  assert max_abs_diff(out["eager"], out["jit"]) < 1e-5
  assert max_abs_diff(out["jit"], out["pmap"]) < 1e-5


def test_timeseries_reports_baselines(tmp_path):
  s = lstm.main(["--task", "timeseries", "--workdir", str(tmp_path), "--epochs", "2",
                 "--no-progress"])["2.7.2"]
  for k in ("test_mse", "persistence_mse", "linear_mse"):
    assert np.isfinite(s[k]) and s[k] > 0
  assert s["data"].startswith("GOOG daily high") and s["best"] in ("lstm", "persistence", "linear")
  assert (tmp_path / "prediction_test.png").exists()


def test_timeseries_csv_input(tmp_path):
  rows = ["date,high"] + [f"2020-01-{i:02d},{100 + np.sin(i / 3):.4f}" for i in range(1, 29)]
  rows += [f"2020-02-{i:02d},{100 + np.sin((i + 28) / 3):.4f}" for i in range(1, 29)]
  path = tmp_path / "p.csv"
  path.write_text("\n".join(rows) + "\n")
  dates, values = series.read_csv(str(path))
  assert len(values) == 56 and dates[0] == "2020-01-01"
  s = lstm.main(["--task", "timeseries", "--csv", str(path), "--window", "5", "--epochs", "1",
                 "--workdir", str(tmp_path / "run"), "--no-progress"])["2.7.2"]
  assert "p.csv (56 rows)" in s["data"]
