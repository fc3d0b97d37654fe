"""The seed networks written in PyTorch, as the seeds write them (dlcore's own designs where
the seed's code is missing: the chapter 6 CNN, CGAN, DCGAN). The references that
`tests/test_torch_parity.py` compares dlcore against, and the PyTorch contestants of
`benchmarks/jit_vs_eager.py`. Needs torch (`pip install -e ".[torch]"`): importing this
module without it raises ImportError.

`ORIGINALS[name]()` builds the original of the registered dlcore model `name` with the
constructor arguments of `KWARGS[name]` on the dlcore side (the registry's defaults when
absent).
"""
import torch

tnn, F = torch.nn, torch.nn.functional


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
  Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1), device=X.device)
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


# registered dlcore model -> PyTorch constructor of the original.
ORIGINALS = {
    "logistic_regression": Logistic,
    "raw_two_layer": RawTwoLayer,
    "sequential_net": lambda: tnn.Sequential(tnn.Linear(2, 4), tnn.Tanh(), tnn.Linear(4, 1)),
    "module_net": ModuleNet,
    "mlp": lambda: tnn.Sequential(tnn.Linear(2, 10), tnn.Tanh(), tnn.Linear(10, 10), tnn.Tanh(),
                                  tnn.Linear(10, 10), tnn.Tanh(), tnn.Linear(10, 1)),
    "two_layer_net": TwoLayerNet,
    "two_layer_sequential": lambda: tnn.Sequential(tnn.Linear(1000, 100, bias=False), tnn.ReLU(),
                                                   tnn.Linear(100, 10, bias=False)),
    "spiral_mlp": SpiralMLP,
    "basic_mlp": BasicMLP,
    "mnist_mlp": MnistNet,
    "centered_layer": MyLayer,
    "list_dense": MyListDense,
    "dict_dense": MyDictDense,
    "corr2d_conv": lambda: Conv2D((1, 2)),
    "lenet": LeNet,
    "alexnet": AlexNet,
    "cnn": CNN,
    "lstm_tagger": LSTMTagger,
    "lstm_regressor": lambda: LSTMRegressor(32, 2),
    "vae": VAE,
    "gan_discriminator": gan_discriminator,
    "gan_generator": gan_generator,
    "cgan_generator": CGANGenerator,
    "cgan_discriminator": CGANDiscriminator,
    "dcgan_generator": DCGANGenerator,
    "dcgan_discriminator": DCGANDiscriminator,
}
# dlcore constructor arguments that make the registered model equal its original above.
KWARGS = {
    "mlp": {"widths": (10, 10, 10, 1), "activation": "tanh"},
    "corr2d_conv": {"kernel_size": (1, 2)},
    "lstm_regressor": {"hidden_dim": 32, "num_layers": 2},
}
