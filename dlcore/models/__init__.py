"""Flax linen modules of every network in the material, and the registry that rebuilds them.

`build(name, **kwargs)` constructs a registered model; `names()` lists them.
"""
from dlcore.models import mlp, rnn  # noqa: F401  (registers the models)
from dlcore.models.mlp import (MLP, LogisticRegression, ModuleNet, RawTwoLayer, TwoLayerNet,
                               sequential_net, two_layer_sequential)
from dlcore.models.rnn import LSTMRegressor, LSTMTagger
from dlcore.models.registry import build, example_shape, names, register

__all__ = ["LSTMRegressor", "LSTMTagger", "MLP", "LogisticRegression", "ModuleNet", "RawTwoLayer", "TwoLayerNet",
           "sequential_net", "two_layer_sequential", "build", "example_shape", "names", "register"]
