"""dlcore's harness: what the experiments use on top of the engine.

    cli       command lines from config dataclasses (tyro), shared options, parse-time checks
    rundir    run directories: config.json, metrics.jsonl, summary.json, figures, checkpoints
    writers   metric writers (JSON lines, console, TensorBoard) behind `fit`'s writer interface
    plots     PNG figures (matplotlib, Agg)
    scoring   the cached, hashed classifier behind chapter 8's sample-quality numbers
    classify  the image-classification experiment: train, curves, confusion matrix, model

The engine (models, train, optim, losses, data, checkpoint, interop, metrics) never imports
this package; `tests/test_package.py` checks it.
"""
