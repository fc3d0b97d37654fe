import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlcore import models

# Parameter counts of the PyTorch originals (sum of p.numel()) with the registry's defaults.
EXPECTED_PARAMS = {
    "logistic_regression": 2 * 1 + 1,
    "raw_two_layer": 2 * 4 + 4 + 4 * 1 + 1,
    "sequential_net": 2 * 4 + 4 + 4 + 1,
    "module_net": 2 * 4 + 4 + 4 + 1,
    "mlp": (2 * 10 + 10) + (10 * 10 + 10) * 2 + 10 + 1,
    "two_layer_net": 1000 * 100 + 100 * 10,
    "two_layer_sequential": 1000 * 100 + 100 * 10,
}
OUTPUT_SHAPES = {"two_layer_net": (10,), "two_layer_sequential": (10,)}


def test_every_registered_model_has_an_expected_count():
  assert set(EXPECTED_PARAMS) <= set(models.names())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_shape_and_parameter_count(name):
  model = models.build(name)
  x = jnp.ones((3, *models.example_shape(name)))
  variables = model.init(jax.random.PRNGKey(0), x)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  assert count == EXPECTED_PARAMS[name]
  assert model.apply(variables, x, train=False).shape == (3, *OUTPUT_SHAPES.get(name, (1,)))


def test_torch_default_init_bounds():
  """Linear(in, out): kernel and bias within +-1/sqrt(in), as torch.nn.Linear."""
  model = models.build("two_layer_net", use_bias=True)
  params = model.init(jax.random.PRNGKey(1), jnp.ones((1, 1000)))["params"]
  bound = 1 / np.sqrt(1000)
  for leaf in jax.tree.leaves(params["linear1"]):
    assert np.abs(leaf).max() <= bound
    assert np.abs(leaf).max() > 0.9 * bound  # uniform over the whole range, not tiny


def test_sequential_layers_are_indexed_like_pytorch():
  model = models.build("sequential_net")
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))["params"]
  assert set(params) == {"layers_0", "layers_2"}
  assert params["layers_0"]["kernel"].shape == (2, 4)  # PyTorch weight (4, 2), transposed


def test_unknown_model_names_the_choices():
  with pytest.raises(KeyError, match="registered models are: .*mlp"):
    models.build("resnet152")


def test_mlp_dropout_only_in_training():
  model = models.build("mlp", widths=(64, 1), activation="relu", dropout=0.5)
  x = jnp.ones((4, 2))
  v = model.init(jax.random.PRNGKey(0), x)
  a = model.apply(v, x, train=False)
  np.testing.assert_array_equal(a, model.apply(v, x, train=False))
  b = model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(a, b)


def test_batchnorm_is_pytorchs_unbiased_running_variance():
  """dlcore's BatchNorm normalises like flax's but keeps PyTorch's running statistics."""
  from dlcore.models.layers import BatchNorm
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 3, 4)) * 2 + 1
  ours, theirs = BatchNorm(momentum=0.9), nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  v_ours = ours.init(jax.random.PRNGKey(1), x, use_running_average=False)
  v_theirs = theirs.init(jax.random.PRNGKey(1), x, use_running_average=False)
  assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_theirs)
  y, new = ours.apply(v_ours, x, use_running_average=False, mutable=["batch_stats"])
  y_ref, _ = theirs.apply(v_theirs, x, use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  flat = np.asarray(x).reshape(-1, 4)
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0, ddof=1),
                             rtol=1e-5)
  # Evaluation uses the running statistics.
  y_eval = ours.apply({**v_ours, **new}, x, use_running_average=True)
  want = (flat - 0.1 * flat.mean(0)) / np.sqrt(0.9 + 0.1 * flat.var(0, ddof=1) + 1e-5)
  np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 4), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet", "mnist_mlp", "dcgan_generator", "vae"])
def test_an_init_compiled_to_run_once_gives_the_default_programs_values(name):
  """create_train_state compiles the init at LLVM level 1 (half the compile time); the
  values are those of the default level, bit for bit."""
  from dlcore.models import registry
  from dlcore.train.state import RUN_ONCE
  model = registry.build(name)
  xs = [jnp.asarray(a) for a in registry.example_inputs(name)]
  train = {"train": False} if name in ("lenet", "mnist_mlp") else {}
  init = jax.jit(lambda k, *x: model.init({"params": k, "dropout": k, "noise": k}, *x, **train))
  lowered = init.lower(jax.random.PRNGKey(3), *xs)
  default = lowered.compile()(jax.random.PRNGKey(3), *xs)
  once = lowered.compile(compiler_options=RUN_ONCE)(jax.random.PRNGKey(3), *xs)
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(once), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_init_reads_only_its_example_inputs_shape():
  """`train_classifier` initialises on zeros of the pipeline's output shape (no eager op to
  compile): every registered model with one float input has the same state on zeros as on
  random inputs, bit for bit. AlexNet (60M parameters, slow here) was checked by hand on
  2026-12-04; `centered_layer` has no parameters."""
  import optax

  from dlcore.models import registry
  from dlcore.train import create_train_state
  names = [n for n in registry.names() if len(registry.example_inputs(n)) == 1
           and registry.example_inputs(n)[0].dtype.kind == "f"]
  assert {"lenet", "cnn", "mnist_mlp", "vae", "alexnet", "dcgan_generator"} <= set(names)
  rng = np.random.default_rng(0)
  for name in sorted(set(names) - {"alexnet", "centered_layer"}):
    model = registry.build(name)
    (x,) = registry.example_inputs(name)
    real = rng.normal(size=x.shape).astype(x.dtype)
    a = create_train_state(model, optax.sgd(0.1), real, seed=3)
    b = create_train_state(model, optax.sgd(0.1), np.zeros_like(real), seed=3)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)


@pytest.mark.parametrize("opt,seed", [("adam", 3), ("momentum", 3), ("adagrad", 3),
                                      ("rmsprop", 3), ("injected", 3), ("chained", 3),
                                      ("schedule", 3), ("branching", 3), ("adam", -1),
                                      ("adam", 2**31 + 5)])
def test_create_train_state_equals_its_op_by_op_construction(opt, seed):
  """The keys and the optimizer's init run as one program each (fewer programs to compile):
  the state is the op-by-op one, leaf for leaf (values, dtypes, weak types) and the same
  tree, and it keeps the optimizer it was given; a seed outside int32 too."""
  import optax
  from flax.training import train_state

  from dlcore import optim
  from dlcore.train import create_train_state
  tx = {"adam": lambda: optim.make_optimizer("adam", 1e-3),
        "momentum": lambda: optim.make_optimizer("momentum", 0.01),
        "adagrad": lambda: optim.make_optimizer("adagrad", 0.1),
        "rmsprop": lambda: optim.make_optimizer("rmsprop", 1e-3),
        "injected": lambda: optim.injected(optax.adam, learning_rate=1e-3),
        "chained": lambda: optim.make_optimizer("nesterov", 0.01, weight_decay=1e-4),
        "schedule": lambda: optax.inject_hyperparams(optax.sgd)(
            learning_rate=optax.warmup_cosine_decay_schedule(0.02, 0.1, 10, 100)),
        # a factory that branches in Python on an injected value: its init cannot be traced
        "branching": lambda: optim.injected(
            lambda learning_rate, weight_decay: optim.make_optimizer(
                "adam", learning_rate, weight_decay=weight_decay),
            learning_rate=1e-3, weight_decay=1e-4)}[opt]()
  model, x = models.build("mnist_mlp"), np.zeros((2, 28, 28, 1), np.float32)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init({"params": init_key, "dropout": init_key}, jnp.asarray(x), train=False)
  want = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
  got = create_train_state(model, tx, x, seed)
  assert got.tx is tx
  np.testing.assert_array_equal(np.asarray(got.rng), np.asarray(run_key))
  assert got.step.dtype == jnp.int32 and int(got.step) == 0
  for part in ("params", "opt_state"):
    a, b = getattr(want, part), getattr(got, part)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      assert (u.dtype, u.shape, u.weak_type) == (v.dtype, v.shape, v.weak_type)
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
