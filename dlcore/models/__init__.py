"""Flax linen modules of every network in the material, and the registry that rebuilds them.

`build(name, **kwargs)` constructs a registered model; `names()` lists them.
"""
from dlcore.models import cnn, custom, mlp, rnn  # noqa: F401  (registers the models)
from dlcore.models.cnn import CNN, AlexNet, LeNet
from dlcore.models.custom import (BasicMLP, CenteredLayer, Conv2D, DictDense, ListDense, corr2d,
                                  pool2d)
from dlcore.models.mlp import (MLP, LogisticRegression, ModuleNet, RawTwoLayer, TwoLayerNet,
                               sequential_net, two_layer_sequential, mnist_mlp)
from dlcore.models.rnn import LSTMRegressor, LSTMTagger
from dlcore.models.registry import build, example_shape, names, register

__all__ = ["AlexNet", "BasicMLP", "CNN", "CenteredLayer", "Conv2D", "DictDense", "LeNet",
           "ListDense", "corr2d", "mnist_mlp", "pool2d", "LSTMRegressor", "LSTMTagger", "MLP", "LogisticRegression", "ModuleNet", "RawTwoLayer", "TwoLayerNet",
           "sequential_net", "two_layer_sequential", "build", "example_shape", "names", "register"]
