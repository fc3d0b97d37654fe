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


from dlcore.interop.originals import KWARGS, ORIGINALS, LeNet, SpiralMLP  # noqa: E402


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


HAS_BATCHNORM = {"mnist_mlp", "dcgan_generator", "dcgan_discriminator"}


def inputs(name):
  """(torch inputs, flax inputs) for the original of `name` and its dlcore model."""
  x2 = torch.randn(5, 2)
  if name in ("logistic_regression", "raw_two_layer", "sequential_net", "module_net", "mlp",
              "spiral_mlp"):
    return (x2,), (flat(x2),)
  if name in ("two_layer_net", "two_layer_sequential"):
    x = torch.randn(4, 1000)
    return (x,), (flat(x),)
  if name == "basic_mlp":
    x = torch.randn(3, 784)
    return (x,), (flat(x),)
  if name == "centered_layer":
    v = torch.tensor([[1.0, 2, 3, 4, 5]])
    return (v,), (flat(v),)
  x4 = torch.randn(3, 4)
  if name == "list_dense":
    return (x4,), (flat(x4),)
  if name == "dict_dense":
    return (x4, "linear3"), (flat(x4), "linear3")
  if name == "corr2d_conv":
    x = torch.randn(6, 8)
    return (x,), (flat(x),)
  if name == "lstm_tagger":
    s = torch.tensor([0, 3, 2, 9, 1])
    return (s,), (jnp.asarray(s.numpy())[None],)
  if name == "lstm_regressor":
    seq = torch.randn(4, 30, 1)
    return (seq,), (flat(seq),)
  if name == "vae":
    img = torch.rand(3, 1, 28, 28)
    return (img,), (nhwc(img),)
  if name == "gan_discriminator":
    img = images(4)
    return (img.view(4, -1),), (nhwc(img),)
  if name == "gan_generator":
    z = torch.randn(4, 64)
    return (z,), (flat(z),)
  y = torch.tensor([0, 3, 9, 5])
  if name == "cgan_generator":
    z = torch.randn(4, 64)
    return (z, y), (flat(z), flat(y))
  if name == "cgan_discriminator":
    img = images(4)
    return (img, y), (nhwc(img), flat(y))
  if name == "dcgan_generator":
    z = torch.randn(6, 100)
    return (z,), (flat(z),)
  size, n = {"mnist_mlp": (28, 8), "lenet": (32, 2), "alexnet": (224, 1), "cnn": (28, 3),
             "dcgan_discriminator": (28, 6)}[name]
  img = images(n, size)
  return (img,), (nhwc(img),)


# name -> (torch module, dlcore kwargs, torch inputs, flax inputs)
def case(name):
  net = ORIGINALS[name]()
  if name in HAS_BATCHNORM:
    randomize_bn(net)
  return (net, KWARGS.get(name, {}), *inputs(name))


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
  model = models.build(name, **KWARGS.get(name, {}))
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


def test_every_registered_model_has_a_parity_case():
  missing = []
  for name in models.names():
    try:
      case(name)
    except KeyError:  # no original in ORIGINALS, or no inputs written for it
      missing.append(name)
  assert not missing, f"models without a PyTorch parity case: {missing}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "alexnet" else n
                                  for n in models.names()])
def test_forward_parity(name):
  torch.manual_seed(1)
  net, kwargs, t_in, f_in = case(name)
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


# ---- the other way: dlcore variables -> the original's state_dict ------------------------
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "alexnet" else n
                                  for n in sorted(ORIGINALS)])
def test_to_state_dict_loads_strictly_into_the_original_with_equal_outputs(name):
  """dlcore's own (random, non-trivial) variables, exported: the PyTorch original loads them
  with strict=True and computes dlcore's outputs (eval mode) to 1e-5."""
  from dlcore.interop.torch import to_state_dict
  from tests.test_export import random_variables

  torch.manual_seed(3)
  net, kwargs, t_in, f_in = case(name)
  variables = random_variables(name, seed=4, **kwargs)
  sd = to_state_dict(name, variables, **kwargs)
  net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  net.eval()
  with torch.no_grad():
    want = as_numpy(net(*t_in), name)
  got = flax_forward(name, variables, f_in, train=False)
  got = [np.asarray(g) for g in got] if isinstance(got, tuple) else np.asarray(got)
  for w, g in (zip(want, got) if isinstance(want, list) else [(want, got)]):
    np.testing.assert_allclose(np.reshape(g, np.shape(w)), w, rtol=1e-5, atol=1e-5,
                               err_msg=name)


def test_pt_export_is_tensors_only_and_imports_back(tmp_path):
  from dlcore.checkpoint import load_model, save_model
  from dlcore.interop import __main__ as icli
  from tests.test_export import random_variables

  v = random_variables("cnn")
  folder = save_model(str(tmp_path / "model"), "cnn", v, input_shape=(28, 28, 1))
  assert icli.main(["export", folder, str(tmp_path / "cnn.pt")]) == 0
  sd = torch.load(str(tmp_path / "cnn.pt"), weights_only=True)
  net = ORIGINALS["cnn"]()
  net.load_state_dict(sd, strict=True)
  assert icli.main(["import", str(tmp_path / "cnn.pt"), "cnn", str(tmp_path / "back")]) == 0
  model, back = load_model(str(tmp_path / "back"))
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(v)):
    assert np.array_equal(np.asarray(a), b)
  # A pickle holding an object, not tensors, is refused without running it.
  import argparse
  torch.save({"weights": sd, "note": argparse.Namespace(run=True)}, str(tmp_path / "obj.pt"))
  assert icli.main(["import", str(tmp_path / "obj.pt"), "cnn", str(tmp_path / "x")]) == 4
