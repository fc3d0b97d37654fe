"""Flax linen modules of every network in the material, and the registry that rebuilds them.

`build(name, **kwargs)` constructs a registered model; `names()` lists them.
"""
from dlcore.models import cnn, custom, generative, mlp, rnn  # noqa: F401  (registers the models)
from dlcore.models.cnn import CNN, AlexNet, LeNet
from dlcore.models.custom import (BasicMLP, CenteredLayer, Conv2D, DictDense, ListDense, corr2d,
                                  pool2d)
from dlcore.models.generative import (VAE, ConditionalDiscriminator, ConditionalGenerator,
                                      DCGANDiscriminator, DCGANGenerator, Discriminator, Generator)
from dlcore.models.mlp import (MLP, LogisticRegression, ModuleNet, RawTwoLayer, TwoLayerNet,
                               mnist_mlp, sequential_net, two_layer_sequential)
from dlcore.models.registry import build, example_inputs, example_shape, names, register
from dlcore.models.rnn import LSTMRegressor, LSTMTagger

__all__ = [
    "CNN", "MLP", "VAE", "AlexNet", "BasicMLP", "CenteredLayer", "ConditionalDiscriminator",
    "ConditionalGenerator", "Conv2D", "DCGANDiscriminator", "DCGANGenerator", "DictDense",
    "Discriminator", "Generator", "LSTMRegressor", "LSTMTagger", "LeNet", "ListDense",
    "LogisticRegression", "ModuleNet", "RawTwoLayer", "TwoLayerNet", "build", "corr2d",
    "example_inputs", "example_shape", "mnist_mlp", "names", "pool2d", "register", "sequential_net",
    "two_layer_sequential"]
