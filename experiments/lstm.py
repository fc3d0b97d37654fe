"""Chapter 7 LSTMs (SPEC 2.7.1, 2.7.2): a part-of-speech tagger and a time-series regressor.

    python -m experiments.lstm --task tagger --workdir runs/lstm_tagger
    python -m experiments.lstm --task timeseries --workdir runs/lstm_timeseries

tagger: the seed's two tagged sentences, tags {DET: 0, NN: 1, V: 2}, one sentence per step,
NLL loss, SGD lr 0.1, 300 epochs; tags the seed's test sentences. Words never seen in
training map to a reserved <unk> index; `--unk-prob` replaces training words by <unk> at that
rate so <unk> learns "a word I don't know, in this context". `--seeds 10` trains ten taggers
side by side (the engine's members, each with its own word dropout) and counts how many reproduce the seed's printed tags.

Which sentences? The seed's printed indices (The=0, cat=1, ate=2, the=3, fish=4, They=5) show
that its vocabulary held "cat", "fish" and "They": the book trained on "The cat ate the fish"
and "They read that book" (`--sentences book`, the default), printed the tags of the first
after training, and tested on "They ate the fish", whose words are all known. SPEC lists
PyTorch's tutorial sentences ("The dog ate the apple", "Everybody read that book";
`--sentences spec`); from those, "cat", "fish" and "They" are unknown. "cat" and "fish" are
then tagged from context, but "They" opens its sentence, and a left-to-right LSTM's first
output sees only that word: <unk> at the start was trained as DET ("The") as often as NN
("Everybody"), so its tag is a coin flip across seeds.

timeseries: predict a day's high from the previous 30 days (window 30, batch 20, MSE), a
chronological train/test split, mean/std of the training span only (the seed normalised with
the whole series, which leaks the test span). Default data: Google's daily highs 2004-2008,
shipped with matplotlib (the seed's CSI-300 download needs the network); `--csv PATH` reads
any date,value CSV. Baselines on the same windows: persistence (tomorrow = today) and a
linear model (scikit-learn's LinearRegression).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np

from dlcore import data as dldata
from dlcore import losses, models, optim
from dlcore.checkpoint import Checkpointer
from dlcore.data import series, text
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds
from dlcore.harness.sweeps import Sweep
from dlcore.harness.writers import say
from dlcore.train import fit, make_train_step, per_member


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr",)  # --sweep: numbers in the step, one program
  common: cli.Shared = cli.shared()
  task: Literal["tagger", "timeseries"] = "tagger"
  """7.1 part-of-speech tagger or 7.2 time-series regressor."""
  epochs: cli.Positive[int] | None = None
  """Training epochs; None: the task's (tagger 300, timeseries 60)."""
  lr: Annotated[float | None, cli.Between(0.0)] = None
  """Learning rate; None: the task's (tagger SGD 0.1, timeseries Adam 1e-3)."""
  hidden: cli.Positive[int] | None = None
  """LSTM hidden size; None: the task's (tagger 6, timeseries 32)."""
  embedding: cli.Positive[int] = 6
  """tagger: word embedding size."""
  unk_prob: cli.Fraction[float] = 0.1
  """tagger: probability of replacing a training word by <unk> (word dropout)."""
  sentences: Literal["book", "spec"] = "book"
  """tagger: the seed's own training sentences, or SPEC's dog/apple ones."""
  corpus: str | None = None
  """tagger: a word/TAG file to train on instead of --sentences."""
  csv: str | None = None
  """timeseries: a CSV file (date, value columns) instead of the bundled GOOG prices."""
  value_column: str | None = None
  """timeseries: the CSV's value column; None: the last numeric one."""
  window: cli.Positive[int] = 30
  """timeseries: days of history per prediction."""
  batch_size: cli.Positive[int] = 20
  """timeseries: training batch size."""
  test_fraction: Annotated[float, cli.Between(0.01, 0.99)] = 0.2
  """timeseries: the last fraction of the series held out for testing."""


def nll_loss(logp, batch):
  picked = jnp.take_along_axis(logp, batch["y"][..., None], axis=-1)[..., 0]
  acc = jnp.mean(jnp.argmax(logp, -1) == batch["y"])
  return -jnp.mean(picked), {"accuracy": acc}


def run_tagger(cfg: Config, run, runner) -> dict:
  data = text.read_tagged(cfg.corpus) if cfg.corpus else text.TRAINING_SETS[cfg.sentences]
  tag_to_ix = dict(text.TAG_TO_IX)
  for _, tags in data:
    for t in tags:
      tag_to_ix.setdefault(t, len(tag_to_ix))
  ix_to_tag = {i: t for t, i in tag_to_ix.items()}
  vocab = text.Vocab(s for s, _ in data)
  sents = [(vocab.encode(s), np.array([tag_to_ix[t] for t in tags], np.int32)) for s, tags in data]
  epochs, lr = cfg.epochs or 300, 0.1 if cfg.lr is None else cfg.lr
  model = models.build("lstm_tagger", vocab_size=len(vocab), tagset_size=len(tag_to_ix),
                       embedding_dim=cfg.embedding, hidden_dim=cfg.hidden or 6,
                       dtype=cli.model_dtype(cfg.common))
  sweep = Sweep.of(cfg)  # --sweep lr: every point x seed a member of the same program
  seeds = Seeds.of(cfg.common, default=10, sweep=sweep)  # members of the engine, one program
  runner = seeds.runner(runner)
  if sweep is not None:
    say(seeds.describe())
  tx = seeds.optimizer(lambda lr: optim.make_optimizer("sgd", lr), lr=lr)
  state = seeds.state(model, tx, sents[0][0][None], loss_scale=cli.loss_scale(cfg.common))
  step = seeds.step(make_train_step(nll_loss))

  def sentences(seed, epoch):  # one sentence per step, in order, as the seed; word dropout
    rng = np.random.default_rng([seed, epoch])
    for ids, tags in sents:
      ids = np.where(rng.random(len(ids)) < cfg.unk_prob, 0, ids).astype(np.int32)
      yield {"x": ids[None], "y": tags[None]}

  def batches(epoch):  # each seed drops its own words, as its single run would
    if not seeds.many:
      return sentences(seeds.seeds[0], epoch)
    return map(per_member, zip(*(sentences(s, epoch) for s in seeds.seeds)))

  with Checkpointer(run.file("checkpoints"), max_to_keep=2,
                    save_every_steps=max(1, epochs * len(sents) // 5),
                    background=True) as ckpt:
    state, history = fit(state, runner.compile(step), batches, runner=runner,
                         num_epochs=epochs, run=run, checkpointer=ckpt, resume=cfg.common.resume,
                         progress=cfg.common.progress, desc=f"tagger x{seeds.n} seeds",
                         log_every=10**9)
  apply = jax.jit(model.apply)
  members = list(seeds.each(state, history))
  tests = text.TEST_SENTENCES
  per_seed = {}
  for words in tests:
    ids = vocab.encode(words)[None]
    per_seed[" ".join(words)] = np.stack(  # (seeds, time)
        [np.asarray(apply({"params": m.params}, ids).argmax(-1))[0] for m, _ in members])
  matches = [all(per_seed[k][i].tolist() == text.SEED_PREDICTIONS.get(k) for k in per_seed)
             for i in range(seeds.n)]
  first = {k: v[0].tolist() for k, v in per_seed.items()}
  for k, tags in first.items():
    unknown = vocab.unknown(k.split())
    say(f"  {k!r} -> {tags} {[ix_to_tag[t] for t in tags]}  (seed printed "
          f"{text.SEED_PREDICTIONS.get(k)}; unknown words: {unknown or 'none'})")
  say(f"  {sum(matches)} of {seeds.n} {'members' if sweep else 'seeds'} reproduce the seed's "
      "printed tags")
  plots.curves({"NLL": seeds.curve(seeds.shown(history), "train", "loss")},
               run.file("loss_curve.png"), xlabel="epoch", title="LSTM tagger", logy=True)
  entries = [{"final_train_loss": h[-1]["train"]["loss"] if h else None,
              "final_train_accuracy": h[-1]["train"]["accuracy"] if h else None}
             for _, h in members]
  if sweep is not None:  # per point: how many of its seeds reproduce the printed tags
    for e, m in zip(entries, matches):
      e["matches_seed"] = float(m)
  entry = seeds.summarize(entries, best="final_train_loss", higher_is_better=False)
  if sweep is not None:
    entry |= entry["best_point"] | {"figures_member": {**seeds.hyper[0],
                                                       "seed": seeds.seeds[0]}}
    sweep.write(run, entry, seeds.per_point, list(entries[0]),
                curves={"train_loss": [seeds.curve(h, "train", "loss") for _, h in members]},
                title=f"LSTM tagger, {epochs} epochs")
  return {"2.7.1": entry | {
      "predictions": first, "matches_seed": bool(matches[0]),
      "seeds_matching": f"{sum(matches)}/{seeds.n}",
      **({} if sweep is not None else
         {"matches_per_seed": dict(zip(map(str, seeds.seeds), matches))}),
      "vocabulary": vocab.itos, "corpus": cfg.corpus or f"{cfg.sentences} sentences",
      "training_sentences": [" ".join(w) for w, _ in data]}}


def run_timeseries(cfg: Config, run, runner) -> dict:
  from sklearn.linear_model import LinearRegression

  if cfg.csv:
    dates, values = series.read_csv(cfg.csv, cfg.value_column)
    source = f"{cfg.csv} ({len(values)} rows)"
  else:
    dates, values = series.goog_daily_high()
    source = f"GOOG daily high {dates[0]}..{dates[-1]} ({len(values)} days, matplotlib sample)"
  dldata.check_finite(values, f"time series {source}")
  train_vals, _ = series.chronological_split(values, cfg.test_fraction)
  mean, std = train_vals.mean(), train_vals.std()
  if not std > 0:
    raise dldata.DataError(f"time series {source}: the training span is constant "
                           f"({mean}); there is nothing to learn")
  norm = ((values - mean) / std).astype(np.float32)
  x, y = series.windows(norm, cfg.window)
  target_index = np.arange(cfg.window, len(values))
  is_train = target_index < len(train_vals)
  train = {"x": x[is_train][..., None], "y": y[is_train][:, None]}
  test = {"x": x[~is_train][..., None], "y": y[~is_train][:, None]}
  epochs, lr = cfg.epochs or 60, 1e-3 if cfg.lr is None else cfg.lr
  model = models.build("lstm_regressor", hidden_dim=cfg.hidden or 32,
                       dtype=cli.model_dtype(cfg.common))
  sweep = Sweep.of(cfg)  # --sweep lr: every point x seed a member of the same program
  seeds = Seeds.of(cfg.common, sweep=sweep)
  runner = seeds.runner(runner)
  if sweep is not None:
    say(seeds.describe())
  state = seeds.state(model, seeds.optimizer(lambda lr: optim.make_optimizer("adam", lr), lr=lr),
                      train["x"][:2])
  mse = lambda out, b: (losses.mse(out, b["y"]), {})  # noqa: E731
  step = seeds.step(make_train_step(mse))  # in order: every seed sees the same batches
  steps_per_epoch = -(-len(train["x"]) // cfg.batch_size)  # with the partial batch
  with Checkpointer(run.file("checkpoints"), max_to_keep=2,
                    save_every_steps=max(1, steps_per_epoch * epochs // 5),
                    background=True) as ckpt:
    state, history = fit(
        state, runner.compile(step),
        lambda e: dldata.batches(train, cfg.batch_size),
        runner=runner, num_epochs=epochs, run=run, checkpointer=ckpt, resume=cfg.common.resume,
        progress=cfg.common.progress, desc="lstm timeseries")
  apply = jax.jit(model.apply)
  preds = [np.asarray(apply({"params": m.params}, test["x"]))[:, 0] for m, _ in seeds.each(state)]
  pred = preds[0]  # the figure: the first seed's
  truth = test["y"][:, 0]
  persistence = test["x"][:, -1, 0]
  linear = LinearRegression().fit(train["x"][..., 0], train["y"][:, 0]).predict(
      test["x"][..., 0])
  results = {name: float(np.mean((p - truth) ** 2))
             for name, p in (("lstm", pred), ("persistence", persistence), ("linear", linear))}
  mses = seeds.summarize([{"test_mse": float(np.mean((p - truth) ** 2))} for p in preds],
                         best="test_mse", higher_is_better=False)
  results["lstm"] = mses["test_mse"]  # the mean over seeds (a sweep: its best point's)
  if sweep is not None:
    mses |= mses["best_point"] | {"figures_member": {**seeds.hyper[0], "seed": seeds.seeds[0]}}
    sweep.write(run, mses, seeds.per_point, ["test_mse"],
                curves={"train_loss": [seeds.curve(h, "train", "loss")
                                       for h in seeds.histories(history)]},
                title=f"LSTM regressor, {epochs} epochs")
  winner = min(results, key=results.get)
  for name, v in results.items():
    say(f"  test MSE (normalised) {name}: {v:.5f}   RMSE in price units {np.sqrt(v) * std:.3f}")
  say(f"  best on the test span: {winner}")
  test_dates = dates[target_index[~is_train]]
  plots.prediction(test_dates, {"actual": truth * std + mean, "LSTM": pred * std + mean,
                                "persistence": persistence * std + mean},
                   run.file("prediction_test.png"), title=f"Test span: {source}")
  plots.curves({"train MSE": seeds.curve(seeds.shown(history), "train", "loss")},
               run.file("loss_curve.png"), xlabel="epoch", title="LSTM regressor", logy=True)
  return {"2.7.2": {**mses, "persistence_mse": results["persistence"],
                    "linear_mse": results["linear"], "best": winner,
                    "scale": "MSE of values normalised by the training span's mean/std",
                    "rmse_price_units": {k: float(np.sqrt(v) * std) for k, v in results.items()},
                    "data": source, "train_windows": int(is_train.sum()),
                    "test_windows": int((~is_train).sum()), "epochs": epochs}}


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  run, runner = start_run(cfg, f"lstm_{cfg.task}")
  summary = run_tagger(cfg, run, runner) if cfg.task == "tagger" else run_timeseries(
      cfg, run, runner)
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
