"""Parity with the PyTorch originals: each seed network written in PyTorch as the seed writes
it (dlcore's own designs where the seed's code is missing: chapter 6 CNN, CGAN, DCGAN),
its weights converted by `dlcore.interop.torch.convert`, and the forward outputs compared
to 1e-5 (train and eval mode where they differ); one optimizer step from the same weights
and batch for SGD-momentum, AdaGrad, RMSProp and Adam.

Skipped when PyTorch is not installed (`pip install -e '.[torch]'`; `.ci/run` installs it).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed: pip install -e '.[torch]'")
tnn, F = torch.nn, torch.nn.functional

from dlcore import models, optim  # noqa: E402
from dlcore.interop.torch import ConversionError, convert  # noqa: E402

torch.manual_seed(0)


# ---- the PyTorch originals ---------------------------------------------------------------
class Logistic(tnn.Module):  # seed 000, 0.1
  def __init__(self):
    super().__init__()
    self.w, self.b = tnn.Parameter(torch.randn(2, 1)), tnn.Parameter(torch.zeros(1))

  def forward(self, x):
    return torch.mm(x, self.w) + self.b


class RawTwoLayer(tnn.Module):  # seed 000, 0.2
  def __init__(self):
    super().__init__()
    self.w1, self.b1 = tnn.Parameter(torch.randn(2, 4) * 0.5), tnn.Parameter(torch.randn(4))
    self.w2, self.b2 = tnn.Parameter(torch.randn(4, 1) * 0.5), tnn.Parameter(torch.randn(1))

  def forward(self, x):
    return torch.mm(torch.tanh(torch.mm(x, self.w1) + self.b1), self.w2) + self.b2


class ModuleNet(tnn.Module):  # seed 000, 0.4
  def __init__(self):
    super().__init__()
    self.layer1, self.layer2, self.layer3 = tnn.Linear(2, 4), tnn.Tanh(), tnn.Linear(4, 1)

  def forward(self, x):
    return self.layer3(self.layer2(self.layer1(x)))


class TwoLayerNet(tnn.Module):  # seed 001, 1.6
  def __init__(self):
    super().__init__()
    self.linear1 = tnn.Linear(1000, 100, bias=False)
    self.linear2 = tnn.Linear(100, 10, bias=False)

  def forward(self, x):
    return self.linear2(self.linear1(x).clamp(min=0))


class SpiralMLP(tnn.Module):  # seed 003
  def __init__(self):
    super().__init__()
    self.fc1, self.fc2 = tnn.Linear(2, 100), tnn.Linear(100, 3)

  def forward(self, x):
    return self.fc2(F.relu(self.fc1(x)))


class BasicMLP(tnn.Module):  # seed 004, 4.1
  def __init__(self):
    super().__init__()
    self.hidden, self.act, self.output = tnn.Linear(784, 256), tnn.ReLU(), tnn.Linear(256, 10)

  def forward(self, x):
    return self.output(self.act(self.hidden(x)))


class MnistNet(tnn.Module):  # book chapter 3, 2.3.1
  def __init__(self, in_dim=784, n1=300, n2=100, out=10):
    super().__init__()
    self.layer1 = tnn.Sequential(tnn.Linear(in_dim, n1), tnn.BatchNorm1d(n1))
    self.layer2 = tnn.Sequential(tnn.Linear(n1, n2), tnn.BatchNorm1d(n2))
    self.layer3 = tnn.Sequential(tnn.Linear(n2, out))

  def forward(self, x):
    x = x.view(x.size(0), -1)
    return self.layer3(F.relu(self.layer2(F.relu(self.layer1(x)))))


class MyLayer(tnn.Module):  # 4.2
  def forward(self, x):
    return x - x.mean()


class MyListDense(tnn.Module):  # 4.3
  def __init__(self):
    super().__init__()
    self.params = tnn.ParameterList([tnn.Parameter(torch.randn(4, 4)) for _ in range(3)])
    self.params.append(tnn.Parameter(torch.randn(4, 1)))

  def forward(self, x):
    for p in self.params:
      x = torch.mm(x, p)
    return x


class MyDictDense(tnn.Module):  # 4.3
  def __init__(self):
    super().__init__()
    self.params = tnn.ParameterDict({"linear1": tnn.Parameter(torch.randn(4, 4)),
                                     "linear2": tnn.Parameter(torch.randn(4, 1))})
    self.params.update({"linear3": tnn.Parameter(torch.randn(4, 2))})

  def forward(self, x, choice="linear1"):
    return torch.mm(x, self.params[choice])


def corr2d(X, K):  # 4.4, the seed's loops
  h, w = K.shape
  Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
  for i in range(Y.shape[0]):
    for j in range(Y.shape[1]):
      Y[i, j] = (X[i: i + h, j: j + w] * K).sum()
  return Y


class Conv2D(tnn.Module):  # 4.4
  def __init__(self, kernel_size):
    super().__init__()
    self.weight = tnn.Parameter(torch.randn(kernel_size))
    self.bias = tnn.Parameter(torch.randn(1))

  def forward(self, x):
    return corr2d(x, self.weight) + self.bias


class LeNet(tnn.Module):  # 4.5
  def __init__(self):
    super().__init__()
    self.conv1, self.conv2 = tnn.Conv2d(1, 6, 5), tnn.Conv2d(6, 16, 5)
    self.fc1, self.fc2, self.fc3 = tnn.Linear(400, 120), tnn.Linear(120, 84), tnn.Linear(84, 10)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = x.view(x.size(0), -1)
    return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class AlexNet(tnn.Module):  # 4.6
  def __init__(self):
    super().__init__()
    self.conv = tnn.Sequential(
        tnn.Conv2d(1, 96, 11, 4), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(96, 256, 5, 1, 2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(256, 384, 3, 1, 1), tnn.ReLU(), tnn.Conv2d(384, 384, 3, 1, 1), tnn.ReLU(),
        tnn.Conv2d(384, 256, 3, 1, 1), tnn.ReLU(), tnn.MaxPool2d(3, 2))
    self.fc = tnn.Sequential(tnn.Linear(6400, 4096), tnn.ReLU(), tnn.Dropout(0.5),
                             tnn.Linear(4096, 4096), tnn.ReLU(), tnn.Dropout(0.5),
                             tnn.Linear(4096, 10))

  def forward(self, img):
    return self.fc(self.conv(img).view(img.shape[0], -1))


class CNN(tnn.Module):  # chapter 6, dlcore's design
  def __init__(self):
    super().__init__()
    self.conv1, self.conv2 = tnn.Conv2d(1, 32, 3, padding=1), tnn.Conv2d(32, 64, 3, padding=1)
    self.fc1, self.fc2, self.drop = tnn.Linear(3136, 128), tnn.Linear(128, 10), tnn.Dropout(0.5)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    return self.fc2(self.drop(F.relu(self.fc1(x.view(x.size(0), -1)))))


class LSTMTagger(tnn.Module):  # 2.7.1, PyTorch's tutorial
  def __init__(self, embedding_dim=6, hidden_dim=6, vocab_size=10, tagset_size=3):
    super().__init__()
    self.word_embeddings = tnn.Embedding(vocab_size, embedding_dim)
    self.lstm = tnn.LSTM(embedding_dim, hidden_dim)
    self.hidden2tag = tnn.Linear(hidden_dim, tagset_size)

  def forward(self, sentence):
    embeds = self.word_embeddings(sentence)
    lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
    return F.log_softmax(self.hidden2tag(lstm_out.view(len(sentence), -1)), dim=1)


class LSTMRegressor(tnn.Module):  # 2.7.2
  def __init__(self, hidden=32, num_layers=1):
    super().__init__()
    self.lstm = tnn.LSTM(1, hidden, num_layers, batch_first=True)
    self.fc = tnn.Linear(hidden, 1)

  def forward(self, x):
    out, _ = self.lstm(x)
    return self.fc(out[:, -1])


class VAE(tnn.Module):  # 2.8.1
  def __init__(self):
    super().__init__()
    self.fc1, self.fc2, self.fc3 = tnn.Linear(784, 400), tnn.Linear(400, 20), tnn.Linear(400, 20)
    self.fc4, self.fc5 = tnn.Linear(20, 400), tnn.Linear(400, 784)

  def forward(self, x):  # with z = mu: the deterministic path
    h = F.relu(self.fc1(x.view(x.size(0), -1)))
    mu, log_var = self.fc2(h), self.fc3(h)
    return self.fc5(F.relu(self.fc4(mu))), mu, log_var


def gan_discriminator():  # 2.8.2
  return tnn.Sequential(tnn.Linear(784, 256), tnn.LeakyReLU(0.2), tnn.Linear(256, 256),
                        tnn.LeakyReLU(0.2), tnn.Linear(256, 1), tnn.Sigmoid())


def gan_generator():  # 2.8.2
  return tnn.Sequential(tnn.Linear(64, 256), tnn.ReLU(), tnn.Linear(256, 256), tnn.ReLU(),
                        tnn.Linear(256, 784), tnn.Tanh())


class CGANGenerator(tnn.Module):  # 2.8.3
  def __init__(self):
    super().__init__()
    self.label_embed = tnn.Embedding(10, 10)
    self.model = tnn.Sequential(tnn.Linear(74, 256), tnn.ReLU(), tnn.Linear(256, 256),
                                tnn.ReLU(), tnn.Linear(256, 784), tnn.Tanh())

  def forward(self, z, y):
    return self.model(torch.cat([z, self.label_embed(y)], 1))


class CGANDiscriminator(tnn.Module):  # 2.8.3, with the projection term
  def __init__(self):
    super().__init__()
    self.label_embed, self.projection = tnn.Embedding(10, 10), tnn.Embedding(10, 256)
    self.model = tnn.Sequential(tnn.Linear(794, 256), tnn.LeakyReLU(0.2), tnn.Linear(256, 256),
                                tnn.LeakyReLU(0.2), tnn.Linear(256, 1))

  def forward(self, x, y):
    h = torch.cat([x.view(x.size(0), -1), self.label_embed(y)], 1)
    h = self.model[3](self.model[2](self.model[1](self.model[0](h))))
    return self.model[4](h)[:, 0] + (self.projection(y) * h).sum(1)


class DCGANGenerator(tnn.Module):  # 2.8.4
  def __init__(self, c=32):
    super().__init__()
    self.c = c
    self.fc, self.bn0 = tnn.Linear(100, 7 * 7 * 2 * c), tnn.BatchNorm2d(2 * c)
    self.deconv1, self.bn1 = tnn.ConvTranspose2d(2 * c, c, 4, 2, 1), tnn.BatchNorm2d(c)
    self.deconv2 = tnn.ConvTranspose2d(c, 1, 4, 2, 1)

  def forward(self, z):
    x = F.relu(self.bn0(self.fc(z).view(-1, 2 * self.c, 7, 7)))
    return torch.tanh(self.deconv2(F.relu(self.bn1(self.deconv1(x)))))


class DCGANDiscriminator(tnn.Module):  # 2.8.4
  def __init__(self, c=32):
    super().__init__()
    self.conv1, self.conv2 = tnn.Conv2d(1, c, 4, 2, 1), tnn.Conv2d(c, 2 * c, 4, 2, 1)
    self.bn2, self.fc = tnn.BatchNorm2d(2 * c), tnn.Linear(2 * c * 49, 1)

  def forward(self, x):
    x = F.leaky_relu(self.conv1(x), 0.2)
    x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
    return self.fc(x.view(x.size(0), -1))[:, 0]


def images(n, size=28, channels=1):
  return torch.randn(n, channels, size, size)


def nhwc(t):
  return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


def flat(t):
  return jnp.asarray(t.numpy())


def randomize_bn(module):
  """Non-trivial BN parameters and running statistics, so eval mode is really tested."""
  for m in module.modules():
    if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
      with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
  return module


# name -> (torch module, dlcore kwargs, torch inputs, flax inputs, output to compare)
def case(name):
  x2 = torch.randn(5, 2)
  if name == "logistic_regression":
    return Logistic(), {}, (x2,), (flat(x2),)
  if name == "raw_two_layer":
    return RawTwoLayer(), {}, (x2,), (flat(x2),)
  if name == "sequential_net":
    return tnn.Sequential(tnn.Linear(2, 4), tnn.Tanh(), tnn.Linear(4, 1)), {}, (x2,), (flat(x2),)
  if name == "module_net":
    return ModuleNet(), {}, (x2,), (flat(x2),)
  if name == "mlp":  # seed 000's deep net (0.5)
    net = tnn.Sequential(tnn.Linear(2, 10), tnn.Tanh(), tnn.Linear(10, 10), tnn.Tanh(),
                         tnn.Linear(10, 10), tnn.Tanh(), tnn.Linear(10, 1))
    return net, {"widths": (10, 10, 10, 1), "activation": "tanh"}, (x2,), (flat(x2),)
  x = torch.randn(4, 1000)
  if name == "two_layer_net":
    return TwoLayerNet(), {}, (x,), (flat(x),)
  if name == "two_layer_sequential":
    net = tnn.Sequential(tnn.Linear(1000, 100, bias=False), tnn.ReLU(),
                         tnn.Linear(100, 10, bias=False))
    return net, {}, (x,), (flat(x),)
  if name == "spiral_mlp":
    return SpiralMLP(), {}, (x2,), (flat(x2),)
  x = torch.randn(3, 784)
  if name == "basic_mlp":
    return BasicMLP(), {}, (x,), (flat(x),)
  if name == "mnist_mlp":
    img = images(8)
    return randomize_bn(MnistNet()), {}, (img,), (nhwc(img),)
  if name == "centered_layer":
    v = torch.tensor([[1.0, 2, 3, 4, 5]])
    return MyLayer(), {}, (v,), (flat(v),)
  x4 = torch.randn(3, 4)
  if name == "list_dense":
    return MyListDense(), {}, (x4,), (flat(x4),)
  if name == "dict_dense":
    return MyDictDense(), {}, (x4, "linear3"), (flat(x4), "linear3")
  if name == "corr2d_conv":
    x = torch.randn(6, 8)
    return Conv2D((1, 2)), {"kernel_size": (1, 2)}, (x,), (flat(x),)
  if name == "lenet":
    img = images(2, 32)
    return LeNet(), {}, (img,), (nhwc(img),)
  if name == "alexnet":
    img = images(1, 224)
    return AlexNet(), {}, (img,), (nhwc(img),)
  if name == "cnn":
    img = images(3)
    return CNN(), {}, (img,), (nhwc(img),)
  if name == "lstm_tagger":
    s = torch.tensor([0, 3, 2, 9, 1])
    return LSTMTagger(), {}, (s,), (jnp.asarray(s.numpy())[None],)
  if name == "lstm_regressor":
    seq = torch.randn(4, 30, 1)
    return LSTMRegressor(32, 2), {"hidden_dim": 32, "num_layers": 2}, (seq,), (flat(seq),)
  if name == "vae":
    img = torch.rand(3, 1, 28, 28)
    return VAE(), {}, (img,), (nhwc(img),)
  if name == "gan_discriminator":
    img = images(4)
    return gan_discriminator(), {}, (img.view(4, -1),), (nhwc(img),)
  if name == "gan_generator":
    z = torch.randn(4, 64)
    return gan_generator(), {}, (z,), (flat(z),)
  y = torch.tensor([0, 3, 9, 5])
  if name == "cgan_generator":
    z = torch.randn(4, 64)
    return CGANGenerator(), {}, (z, y), (flat(z), flat(y))
  if name == "cgan_discriminator":
    img = images(4)
    return CGANDiscriminator(), {}, (img, y), (nhwc(img), flat(y))
  if name == "dcgan_generator":
    z = torch.randn(6, 100)
    return randomize_bn(DCGANGenerator()), {}, (z,), (flat(z),)
  if name == "dcgan_discriminator":
    img = images(6)
    return randomize_bn(DCGANDiscriminator()), {}, (img,), (nhwc(img),)
  raise KeyError(name)


HAS_BATCHNORM = {"mnist_mlp", "dcgan_generator", "dcgan_discriminator"}


def as_numpy(out, name):
  if isinstance(out, tuple):
    return [as_numpy(o, name) for o in out]
  out = out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)
  if name in ("gan_generator", "cgan_generator"):
    return out.reshape(out.shape[0], -1)
  if name == "dcgan_generator" and out.ndim == 4 and out.shape[1] == 1:  # NCHW -> NHWC
    return out.transpose(0, 2, 3, 1)
  if name == "lstm_tagger":
    return out.reshape(-1, out.shape[-1])
  return out


def flax_forward(name, variables, inputs, train, updated=None):
  model = models.build(name, **case_kwargs[name])
  if name in HAS_BATCHNORM and train:
    out, new_vars = model.apply(variables, *inputs, train=True, mutable=["batch_stats"])
    if updated is not None:
      updated.update(new_vars)
  else:
    out = model.apply(variables, *inputs)
  if name == "gan_discriminator":
    out = jax.nn.sigmoid(out)[:, None]
  if name == "vae":
    return tuple(out)
  return out


case_kwargs = {}


def test_every_registered_model_has_a_parity_case():
  missing = []
  for name in models.names():
    try:
      case(name)
    except KeyError:
      missing.append(name)
  assert not missing, f"models without a PyTorch parity case: {missing}"


@pytest.mark.parametrize("name", models.names())
def test_forward_parity(name):
  torch.manual_seed(1)
  net, kwargs, t_in, f_in = case(name)
  case_kwargs[name] = kwargs
  variables = convert(name, net.state_dict(), **kwargs)
  modes = (False, True) if name in HAS_BATCHNORM else (False,)
  for train in modes:
    net.train(train)
    with torch.no_grad():
      want = as_numpy(net(*t_in), name)
    updated = {}
    got = flax_forward(name, variables, f_in, train, updated)
    if updated:  # running statistics after the training-mode forward, PyTorch vs Flax
      want_stats = convert(name, net.state_dict(), **kwargs)["batch_stats"]
      for path, w in jax.tree_util.tree_flatten_with_path(want_stats)[0]:
        g = dict(jax.tree_util.tree_flatten_with_path(updated["batch_stats"])[0])[path]
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name} running stats {jax.tree_util.keystr(path)}")
    got = [np.asarray(g) for g in got] if isinstance(got, tuple) else np.asarray(got)
    if isinstance(want, list):
      for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{name} train={train}")
    else:
      np.testing.assert_allclose(np.reshape(got, np.shape(want)), want, rtol=1e-5, atol=1e-5,
                                 err_msg=f"{name} train={train}")


def test_conversion_errors_name_the_key():
  sd = LeNet().state_dict()
  sd["extra.weight"] = torch.zeros(3)
  with pytest.raises(ConversionError, match="extra.weight"):
    convert("lenet", sd)
  sd = LeNet().state_dict()
  del sd["fc2.bias"]  # the model has a bias there: reported in the model's terms
  with pytest.raises(ConversionError, match=r"missing .*fc2.*bias.*\(84,\)"):
    convert("lenet", sd)
  sd = SpiralMLP().state_dict()
  sd["fc2.weight"] = torch.zeros(4, 100)
  with pytest.raises(ConversionError, match="fc2"):
    convert("spiral_mlp", sd)


# ---- one optimizer step, PyTorch vs Optax ------------------------------------------------
OPTIMIZERS = {  # PyTorch constructor, dlcore's make_optimizer arguments: the mapping
    "sgd_momentum": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                     ("momentum", 0.1, {"momentum": 0.9})),
    "adagrad": (lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10),
                ("adagrad", 0.1, {"eps": 1e-10})),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.99, eps=1e-8),
                ("rmsprop", 0.01, {"decay": 0.99, "eps": 1e-8, "eps_in_sqrt": False})),
    "adam": (lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8),
             ("adam", 0.01, {"b1": 0.9, "b2": 0.999, "eps": 1e-8})),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_steps_match_pytorch(opt):
  torch.manual_seed(2)
  net = SpiralMLP()
  x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
  variables = convert("spiral_mlp", net.state_dict())
  make_torch, (name, lr, kw) = OPTIMIZERS[opt]
  topt = make_torch(net.parameters())
  tx = optim.make_optimizer(name, lr, **kw)
  model = models.build("spiral_mlp")
  params = variables["params"]
  state = tx.init(params)

  def loss(p):
    logits = model.apply({"params": p}, jnp.asarray(x.numpy()))
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(16), jnp.asarray(y.numpy())])

  for _ in range(3):
    topt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    topt.step()
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  want = convert("spiral_mlp", net.state_dict())["params"]
  for layer in ("fc1", "fc2"):
    for k in ("kernel", "bias"):
      np.testing.assert_allclose(params[layer][k], want[layer][k], rtol=1e-5, atol=1e-5,
                                 err_msg=f"{opt} {layer}.{k}")
