"""NNX access to every registered model, pytorch/examples' VAE names, example inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlcore import models
from dlcore import nnx as dlnnx
from dlcore.interop.torch import ConversionError, convert


def _inputs(name, batch=3):
  """The registry's example inputs, filled with random values of the right kind."""
  rng = np.random.default_rng(0)
  out = []
  for a in models.example_inputs(name, batch):
    out.append(rng.integers(0, 2, a.shape).astype(a.dtype) if a.dtype.kind == "i"
               else rng.standard_normal(a.shape).astype(a.dtype))
  return tuple(out)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "alexnet" else n
                                  for n in models.names()])
def test_every_model_runs_from_nnx_with_the_same_outputs(name):
  model = models.build(name)
  inputs = _inputs(name, batch=1 if name == "alexnet" else 3)  # AlexNet: 224x224 inputs
  # Compiled on both sides: AlexNet's op-by-op init and forward would take seconds.
  variables = jax.jit(lambda *a: model.init({"params": jax.random.PRNGKey(1)}, *a,
                                            train=False))(*inputs)
  net = dlnnx.to_nnx(name, *inputs, variables=variables)
  assert isinstance(net, nnx.Module)
  want = jax.jit(lambda v, *a: model.apply(v, *a, train=False))(variables, *inputs)
  got = nnx.jit(lambda m, *a: m(*a, train=False))(net, *inputs)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
  count = lambda tree: sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(tree))  # noqa: E731
  assert count(nnx.state(net, nnx.Param)) == count(variables.get("params", {}))


def test_nnx_gradients_equal_linen_gradients():
  model = models.build("mnist_mlp")
  x, = _inputs("mnist_mlp", 8)
  variables = model.init(jax.random.PRNGKey(2), x, train=False)
  net = dlnnx.to_nnx(model, x, variables=variables)
  loss = lambda out: jnp.mean(out ** 2)  # noqa: E731
  want = jax.grad(lambda p: loss(model.apply({**variables, "params": p}, x, train=False)))(
      variables["params"])
  got = nnx.grad(lambda m: loss(m(x, train=False)))(net)
  np.testing.assert_allclose(np.asarray(got["fc1"]["kernel"].value),
                             np.asarray(want["fc1"]["kernel"]), rtol=1e-5, atol=1e-7)


def test_nnx_rejects_variables_of_another_shape():
  x, = _inputs("mnist_mlp")
  other = models.build("mnist_mlp", n_hidden_1=30).init(jax.random.PRNGKey(0), x, train=False)
  with pytest.raises(ValueError, match="structure or shapes"):
    dlnnx.to_nnx("mnist_mlp", x, variables=other)


def _torch_linear(rng, n_in, n_out):
  bound = 1 / np.sqrt(n_in)
  return (rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
          rng.uniform(-bound, bound, (n_out,)).astype(np.float32))


def test_vae_converts_from_pytorch_examples_names():
  """pytorch/examples' vae/main.py: fc1 784-400, fc21 / fc22 400-20 (mu, log_var), fc3
  20-400, fc4 400-784; compared with the same forward pass written in NumPy."""
  rng = np.random.default_rng(0)
  sizes = {"fc1": (784, 400), "fc21": (400, 20), "fc22": (400, 20), "fc3": (20, 400),
           "fc4": (400, 784)}
  sd = {}
  for k, (n_in, n_out) in sizes.items():
    sd[f"{k}.weight"], sd[f"{k}.bias"] = _torch_linear(rng, n_in, n_out)
  x = rng.uniform(0, 1, (5, 28, 28, 1)).astype(np.float32)
  logits, mu, log_var = models.build("vae").apply(convert("vae", sd), x, train=False)
  lin = lambda h, k: h @ sd[f"{k}.weight"].T + sd[f"{k}.bias"]  # noqa: E731
  h = np.maximum(lin(x.reshape(5, -1), "fc1"), 0)
  want_mu, want_log_var = lin(h, "fc21"), lin(h, "fc22")
  want_logits = lin(np.maximum(lin(want_mu, "fc3"), 0), "fc4")  # z = mu in inference
  np.testing.assert_allclose(mu, want_mu, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log_var, want_log_var, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  # The seed's names give the same model.
  seed_names = {"fc1": "fc1", "fc21": "fc2", "fc22": "fc3", "fc3": "fc4", "fc4": "fc5"}
  renamed = {f"{seed_names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in sd.items()}
  np.testing.assert_allclose(models.build("vae").apply(convert("vae", renamed), x,
                                                       train=False)[0], logits, rtol=1e-6)
  with pytest.raises(ConversionError, match="fc22"):
    convert("vae", {k: v for k, v in sd.items() if not k.startswith("fc22")})


def test_example_inputs_fit_every_model():
  for name in models.names():
    inputs = models.example_inputs(name)
    jax.eval_shape(lambda args: models.build(name).init(jax.random.PRNGKey(0), *args), inputs)
