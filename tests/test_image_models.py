"""Seed 004 layers and nets, chapter 6 convolution arithmetic, the chapter 3 BN MLP across
eager / jit / pmap, and AlexNet's one step at 224x224 on CPU."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import models
from dlcore.data.transforms import ImagePipeline
from dlcore.models.custom import conv_matrix, conv_output_size, corr2d, pool2d
from dlcore.models.layers import BatchNorm, Conv2d, NamedSequential
from dlcore.models.mlp import flatten
from dlcore.models.summary import count_params
from dlcore.train import Runner, create_train_state, make_train_step
from dlcore.train.classify import xent_loss
from tests.helpers import max_abs_diff


def abstract_params(name, shape, **kwargs):
  model = models.build(name, **kwargs)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init({"params": jax.random.PRNGKey(0),
                                              "dropout": jax.random.PRNGKey(0)}, x), x)


@pytest.mark.parametrize("name,shape,count", [
    ("basic_mlp", (784,), 203_530), ("lenet", (32, 32, 1), 61_706),
    ("alexnet", (224, 224, 1), 46_764_746),
    ("mnist_mlp", (28, 28, 1), 267_410)])  # PyTorch counts BatchNorm's weight and bias too
def test_parameter_counts_equal_pytorch(name, shape, count):
  assert count_params(abstract_params(name, shape)["params"]) == count


def test_lenet_layout():
  params = abstract_params("lenet", (32, 32, 1))["params"]
  assert len(jax.tree.leaves(params)) == 10
  assert params["conv1"]["kernel"].shape == (5, 5, 1, 6)  # PyTorch (6, 1, 5, 5), OIHW
  with pytest.raises(ValueError, match="32x32"):
    models.build("lenet").init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def test_centered_list_and_dict_layers():
  out = models.build("centered_layer").apply({}, jnp.array([1.0, 2, 3, 4, 5]))
  np.testing.assert_allclose(out, [-2, -1, 0, 1, 2])
  x = jnp.ones((3, 4))
  ld = models.build("list_dense")
  v = ld.init(jax.random.PRNGKey(0), x)
  p = v["params"]
  assert sorted(p) == ["params_0", "params_1", "params_2", "params_3"]
  np.testing.assert_allclose(ld.apply(v, x),
                             x @ p["params_0"] @ p["params_1"] @ p["params_2"] @ p["params_3"],
                             rtol=1e-5)
  dd = models.build("dict_dense")
  v = dd.init(jax.random.PRNGKey(0), x)
  assert {k: v["params"][k].shape for k in v["params"]} == {
      "linear1": (4, 4), "linear2": (4, 1), "linear3": (4, 2)}
  np.testing.assert_allclose(dd.apply(v, x, "linear3"), x @ v["params"]["linear3"], rtol=1e-6)
  with pytest.raises(KeyError, match="linear4"):
    dd.apply(v, x, "linear4")


def test_corr2d_and_pool2d_reproduce_the_seed():
  X = jnp.arange(9.0).reshape(3, 3)
  np.testing.assert_allclose(corr2d(X, jnp.array([[0.0, 1], [2, 3]])), [[19, 25], [37, 43]])
  np.testing.assert_allclose(pool2d(X, (2, 2)), [[4, 5], [7, 8]])
  np.testing.assert_allclose(pool2d(X, (2, 2), "avg"), [[2, 3], [5, 6]])
  # corr2d agrees with XLA's convolution (which is also a cross-correlation).
  key = jax.random.PRNGKey(1)
  x, k = jax.random.normal(key, (7, 9)), jax.random.normal(jax.random.fold_in(key, 1), (3, 2))
  lax = jax.lax.conv_general_dilated(x[None, None], k[None, None], (1, 1), "VALID")[0, 0]
  np.testing.assert_allclose(corr2d(x, k), lax, rtol=1e-5, atol=1e-5)


def test_corr2d_conv_layer_learns_the_edge_kernel():
  from experiments.model_building import learn_edge_kernel

  result = learn_edge_kernel()
  np.testing.assert_allclose(result["weight"], [[1.0, -1.0]], atol=0.02)
  assert result["loss_last"] < 1e-3 * result["loss_first"]


def test_demos_are_four_programs_with_the_op_by_op_numbers():
  """model_building's demos compute their numbers in one compiled program and the edge
  kernel's descent in another (58 programs op by op): the same bits as op by op."""
  import json
  import os
  import subprocess
  import sys

  from experiments import model_building as mb

  code = ("import json; from dlcore import timing; timing.compiles()\n"
          "from experiments.model_building import demos\n"
          "out = demos(0); print(json.dumps({'programs': timing.compiles(), 'out': out}))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, env={**os.environ, "DLCORE_JAX_CACHE": "0"})
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.splitlines()[-1])
  assert got["programs"] <= 4, got["programs"]
  # The numbers as the demos computed them op by op (each init and apply compiled alone, the
  # descent a compiled loss and host-driven updates).
  key = jax.random.PRNGKey(0)
  init = jax.jit(mb._variables, static_argnums=0)
  mlp = models.build("basic_mlp")
  x = jax.random.uniform(key, (2, 784))
  values = mb._demo_values(key)
  np.testing.assert_array_equal(values["mlp_output"], jax.jit(mlp.apply)(init(mlp, x, key), x))
  net = nn.Sequential([nn.Dense(128), models.build("centered_layer")])
  xs = jax.random.uniform(key, (4, 8))
  mean = float(jax.jit(net.apply)(jax.jit(net.init)(key, xs), xs).mean())
  assert got["out"]["4.2"]["mean_after_dense"] == mean
  X = jnp.ones((6, 8)).at[:, 2:6].set(0.0)
  Y = corr2d(X, jnp.array([[1.0, -1.0]]))
  conv = models.build("corr2d_conv", kernel_size=(1, 2))
  params = conv.init(jax.random.PRNGKey(0), X)["params"]
  loss = jax.jit(jax.value_and_grad(
      lambda p: jnp.sum((conv.apply({"params": p}, X) - Y) ** 2)))
  first = float(loss(params)[0])
  for _ in range(60):
    params = jax.tree.map(lambda p, g: p - 0.01 * g, params, loss(params)[1])
  learned = got["out"]["4.4"]["conv2d_learned"]
  assert (learned["loss_first"], learned["loss_last"]) == (first, float(loss(params)[0]))
  assert learned["weight"] == np.round(np.asarray(params["weight"]), 3).tolist()


def test_seed_conv_output_shapes():
  x = jnp.zeros((1, 8, 8, 1))
  key = jax.random.PRNGKey(0)
  for conv, want in ((Conv2d(1, 1, 3, padding=1), (8, 8)),
                     (Conv2d(1, 1, (5, 3), padding=(2, 1)), (8, 8)),
                     (Conv2d(1, 1, (3, 5), stride=(3, 4), padding=(0, 1)), (2, 2))):
    assert conv.apply(conv.init(key, x), x).shape[1:3] == want


@pytest.mark.parametrize("n,k,p,s,d", [(8, 3, 1, 1, 1), (28, 5, 0, 1, 1), (224, 11, 0, 4, 1),
                                       (9, 3, 2, 2, 2), (10, 4, 1, 3, 1)])
def test_output_size_formula_matches_flax(n, k, p, s, d):
  conv = nn.Conv(1, (k, k), strides=(s, s), padding=((p, p), (p, p)), kernel_dilation=(d, d))
  x = jnp.zeros((1, n, n, 1))
  y = conv.apply(conv.init(jax.random.PRNGKey(0), x), x)
  assert y.shape[1] == conv_output_size(n, k, p, s, d)


def test_groups_divide_the_kernel():
  for groups in (1, 2, 4):
    conv = nn.Conv(8, (3, 3), feature_group_count=groups)
    kernel = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 4)))["params"]["kernel"]
    assert kernel.shape == (3, 3, 4 // groups, 8)


@pytest.mark.parametrize("stride,padding,n", [(1, 0, 6), (2, 0, 7), (2, 1, 6), (1, 1, 6)])
def test_transposed_convolution_is_the_transposed_matrix(stride, padding, n):
  key = jax.random.PRNGKey(stride * 10 + padding)
  kernel = np.asarray(jax.random.normal(key, (3, 3)))
  x = jax.random.normal(jax.random.fold_in(key, 1), (n, n))
  c = conv_matrix(kernel, (n, n), stride=stride, padding=padding)

  def conv(x):
    return jax.lax.conv_general_dilated(x[None, None], kernel[None, None], (stride, stride),
                                        [(padding, padding)] * 2)[0, 0]

  y, vjp = jax.vjp(conv, x)
  np.testing.assert_allclose(y.ravel(), c @ np.asarray(x).ravel(), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(jax.random.fold_in(key, 2), y.shape)
  want = c.T @ np.asarray(g).ravel()
  # The gradient of the convolution is multiplication by C^T ...
  np.testing.assert_allclose(vjp(g)[0].ravel(), want, rtol=1e-5, atol=1e-5)
  if padding == 0:
    # ... and so is the transposed convolution, with the kernel flipped (transpose_kernel).
    t = jax.lax.conv_transpose(g[None, :, :, None], kernel[:, :, None, None], (stride, stride),
                               "VALID", transpose_kernel=True)[0, :, :, 0]
    np.testing.assert_allclose(t.ravel(), want, rtol=1e-5, atol=1e-5)
    flax_t = nn.ConvTranspose(1, (3, 3), strides=(stride, stride), padding="VALID",
                              use_bias=False, transpose_kernel=True)
    t = flax_t.apply({"params": {"kernel": kernel[:, :, None, None]}}, g[None, :, :, None])
    np.testing.assert_allclose(t.ravel(), want, rtol=1e-5, atol=1e-5)


def test_cnn_shapes_and_features():
  model = models.build("cnn")
  x = jnp.zeros((3, 28, 28, 1))
  v = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(v, x).shape == (3, 10)
  assert model.apply(v, x, method=model.features).shape == (3, 128)


def _bn_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
          "y": rng.integers(0, 10, n).astype(np.int32)}


def _bn_step(mode, devices=None, model=None):
  runner = Runner(mode, devices=devices)
  model = model or models.build("mnist_mlp")
  pipe = ImagePipeline("pm1")
  batch = _bn_batch()
  state = create_train_state(model, optax.sgd(0.1, momentum=0.9), pipe(batch["x"][:2]), 0)
  step = runner.compile(make_train_step(xent_loss, preprocess=pipe))
  state = runner.put_state(state)
  for _ in range(3):
    state, _ = step(state, runner.put_batch(batch))
  return runner.get_state(state)


def test_batchnorm_mlp_same_in_eager_jit_pmap_sharded():
  ref = _bn_step("jit")
  for mode, devices in (("eager", None), ("pmap", 4)):  # 2 devices: tests/test_modes.py
    other = _bn_step(mode, devices)
    assert max_abs_diff(ref.params, other.params) < 2e-5, (mode, devices)
    assert max_abs_diff(ref.batch_stats, other.batch_stats) < 2e-5, (mode, devices)


def test_pmap_without_synced_batchnorm_differs():
  """The check above can fail: flax's own BatchNorm (no axis name) normalises each device's
  slice with its own statistics under pmap, and the step differs from one device's."""
  def model(flax_bn):
    bn = lambda: flax_bn(momentum=0.9, epsilon=1e-5)  # noqa: E731
    return NamedSequential((("flatten", flatten), ("fc1", nn.Dense(16)), ("bn1", bn()),
                            ("relu", nn.relu), ("fc2", nn.Dense(10))))
  ref = _bn_step("jit", model=model(nn.BatchNorm))
  assert max_abs_diff(ref.params, _bn_step("pmap", 4, model=model(nn.BatchNorm)).params) > 1e-4
  # ... and dlcore's BatchNorm in the same net agrees.
  ours = _bn_step("jit", model=model(BatchNorm))
  assert max_abs_diff(ours.params, _bn_step("pmap", 4, model=model(BatchNorm)).params) < 2e-5


@pytest.mark.slow
def test_alexnet_one_training_step_at_224_on_cpu():
  model = models.build("alexnet")
  pipe = ImagePipeline("unit", size=224, resize="bilinear")
  batch = _bn_batch(2)
  state = create_train_state(model, optax.sgd(0.01), pipe(batch["x"][:1]), 0)
  before = jax.tree.map(np.asarray, state.params["fc_6"])
  step = jax.jit(make_train_step(xent_loss, preprocess=pipe))
  state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 1
  assert max_abs_diff(before, state.params["fc_6"]) > 0
  # Dropout is on in training and off in evaluation.
  x = pipe(batch["x"])
  v = {"params": state.params}
  np.testing.assert_array_equal(model.apply(v, x), model.apply(v, x))


@pytest.mark.parametrize("shape,k,s", [((3, 28, 28, 6), 2, None), ((2, 13, 13, 5), 3, 2),
                                       ((2, 9, 11, 4), (2, 3), (1, 2))])
def test_max_pool2d_equals_reduce_window(shape, k, s):
  """The strided-views max pool equals flax's `nn.max_pool` in value and gradient (no ties
  in this input: a permutation of distinct values)."""
  from dlcore.models.layers import max_pool2d
  size = int(np.prod(shape))
  x = jnp.asarray(np.random.default_rng(0).permutation(size).reshape(shape), jnp.float32)
  kk = (k, k) if isinstance(k, int) else k
  ss = kk if s is None else ((s, s) if isinstance(s, int) else s)
  ref = lambda x: nn.max_pool(x, kk, strides=ss)  # noqa: E731
  ours = lambda x: max_pool2d(x, k, s)  # noqa: E731
  np.testing.assert_array_equal(ours(x), ref(x))
  w = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x).shape), jnp.float32)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
  g_ours = jax.grad(lambda x: jnp.sum(ours(x) * w))(x)
  np.testing.assert_allclose(g_ours, g_ref, atol=1e-6)


@pytest.mark.parametrize("shape,k,dtype", [((3, 28, 28, 6), 2, jnp.float32),
                                           ((2, 9, 11, 4), 2, jnp.float32),   # floor mode
                                           ((2, 3, 10, 10, 3), 3, jnp.float32),  # members axis
                                           ((4, 8, 8, 5), 2, jnp.bfloat16),
                                           ((4, 8, 8, 5), 2, jnp.float16)])
def test_max_pool2d_vjp_is_autodiffs_bit_for_bit(shape, k, dtype):
  """Non-overlapping pools take their gradient from a custom VJP; it must be autodiff's
  gradient of the chain of maxima bit for bit, ties (split in halves), zeros of either sign
  and the floor-mode remainder included: default numbers do not move."""
  from dlcore.models import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.maximum(rng.integers(-2, 3, shape), 0) * rng.choice([1, 1.5], shape), dtype)
  h, w = shape[-3], shape[-2]
  chain = lambda x: layers._chain_max(layers._pool_views(x, k, k, k, k, h // k, w // k))  # noqa: E731
  out = chain(x)
  np.testing.assert_array_equal(layers.max_pool2d(x, k), out)
  g = jnp.asarray(rng.standard_normal(out.shape) * rng.choice([0, 1, -1e-30], out.shape), dtype)
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum((f(x) * g).astype(jnp.float32))))(x)  # noqa: E731
  ours, ref = np.asarray(grad(lambda x: layers.max_pool2d(x, k))), np.asarray(grad(chain))
  assert not np.isin(ref[ref != 0], np.asarray(g, ref.dtype)).all()  # some ties were split
  bits = np.uint16 if ref.itemsize == 2 else np.uint32
  np.testing.assert_array_equal(ours.view(bits), ref.view(bits))
  if len(shape) == 5:  # members as the step runs them: vmapped, the VJP per member
    per = lambda f: np.asarray(jax.jit(jax.vmap(jax.grad(  # noqa: E731
        lambda x, g: jnp.sum((f(x) * g).astype(jnp.float32)))))(x, g))
    np.testing.assert_array_equal(per(lambda x: layers.max_pool2d(x, k)).view(bits),
                                  per(chain).view(bits))


def _equals_xla_conv(conv, xshape, kshape, strides, padding):
  """`conv(x, k, strides, padding)` against `lax.conv_general_dilated`: values, both
  gradients jitted, and the kernel's gradient vmapped over a members axis."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(xshape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(kshape), jnp.float32)
  ref = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = lambda x, k: conv(x, k, strides, padding)  # noqa: E731
  np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  w = jnp.asarray(rng.standard_normal(ref(x, k).shape), jnp.float32)
  g_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * w), argnums=(0, 1))(x, k)
  g_ours = jax.jit(jax.grad(lambda x, k: jnp.sum(ours(x, k) * w), argnums=(0, 1)))(x, k)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  members = jax.vmap(jax.grad(lambda x, k: jnp.sum(ours(x, k) * w), argnums=1))(
      jnp.stack([x, 2 * x]), jnp.stack([k, k]))
  np.testing.assert_allclose(members[0], g_ref[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(members[1], 2 * g_ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_shift_conv_rounds_once_in_half_precision(dtype):
  """In bfloat16 / float16 the taps are summed in float32 and rounded once, as XLA's
  convolution does: within one unit in the last place of the float32 result, rounded."""
  from dlcore.models.layers import shift_conv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 14, 14, 1)), dtype)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, 32)), dtype)
  pads = ((1, 1), (1, 1))
  exact = jax.lax.conv_general_dilated(x.astype(jnp.float32), k.astype(jnp.float32), (1, 1),
                                       pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = jax.jit(lambda x, k: shift_conv(x, k, (1, 1), pads))(x, k)
  assert ours.dtype == dtype
  ulp = float(jnp.finfo(dtype).eps)
  np.testing.assert_allclose(np.float32(ours), np.float32(exact.astype(dtype)),
                             rtol=ulp, atol=ulp * float(jnp.abs(exact).max()) / 4)


@pytest.mark.parametrize("xshape,kshape,strides,padding", [
    ((3, 14, 14, 1), (3, 3, 1, 32), (1, 1), ((1, 1), (1, 1))),     # the CNN's conv1
    ((2, 12, 12, 1), (4, 4, 1, 16), (2, 2), "SAME"),               # DCGAN D conv1
    ((2, 9, 10, 1), (3, 2, 1, 16), (2, 1), ((1, 0), (2, 1))),      # uneven strides and pads
])
def test_shift_conv_equals_xla_conv(xshape, kshape, strides, padding):
  """`shift_conv` is the same function as `lax.conv_general_dilated`: values and both
  gradients (the input's feeds a GAN generator through its discriminator)."""
  from dlcore.models.layers import shift_conv
  _equals_xla_conv(shift_conv, xshape, kshape, strides, padding)


@pytest.mark.parametrize("xshape,kshape,strides,padding", [
    ((3, 12, 12, 1), (5, 5, 1, 6), (1, 1), ((0, 0), (0, 0))),      # LeNet conv1
    pytest.param((2, 23, 23, 1), (11, 11, 1, 4), (4, 4), ((0, 0), (0, 0)),  # AlexNet conv_0
                 marks=pytest.mark.slow),
    ((2, 9, 9, 3), (4, 4, 3, 5), (2, 2), "SAME"),                  # DCGAN D conv1, 3 channels
    ((2, 8, 10, 2), (3, 3, 2, 4), (2, 1), ((1, 0), (2, 1))),       # uneven strides and pads
])
def test_patch_conv_equals_xla_conv(xshape, kshape, strides, padding):
  """`patch_conv` is the same function as `lax.conv_general_dilated`: values and both
  gradients."""
  from dlcore.models.layers import patch_conv
  _equals_xla_conv(patch_conv, xshape, kshape, strides, padding)


@pytest.mark.parametrize("xshape,kshape,padding,dtype", [
    ((3, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0)), jnp.float32),  # LeNet conv2
    ((2, 9, 11, 3), (3, 2, 3, 5), ((1, 0), (2, 1)), jnp.float32),    # uneven pads, 3 channels
    ((2, 8, 8, 4), (3, 3, 4, 8), "SAME", jnp.float32),
    ((3, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0)), jnp.bfloat16),
])
def test_scatter_grad_conv_is_xlas_with_a_col2im_input_gradient(xshape, kshape, padding, dtype):
  """`scatter_grad_conv`: XLA's convolution and kernel gradient bit for bit, the input
  gradient equal to autodiff's up to float rounding (vmapped over members too)."""
  from dlcore.models.layers import scatter_grad_conv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(xshape), dtype)
  k = jnp.asarray(rng.standard_normal(kshape), dtype)
  ref = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = lambda x, k: scatter_grad_conv(x, k, (1, 1), padding)  # noqa: E731
  np.testing.assert_array_equal(jax.jit(ours)(x, k), jax.jit(ref)(x, k))
  w = jnp.asarray(rng.standard_normal(ref(x, k).shape), dtype)
  grad = lambda f: jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k) * w), argnums=(0, 1)))  # noqa
  (dx, dk), (dx_ref, dk_ref) = grad(ours)(x, k), grad(ref)(x, k)
  np.testing.assert_array_equal(dk, dk_ref)
  assert dx.dtype == dx_ref.dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.float32(dx), np.float32(dx_ref), rtol=tol,
                             atol=tol * float(jnp.abs(dx_ref).max()))
  members = jax.vmap(jax.grad(lambda x, k: jnp.sum(ours(x, k) * w)))(
      jnp.stack([x, x]), jnp.stack([k, 2 * k]))
  np.testing.assert_allclose(np.float32(members[0]), np.float32(dx_ref), rtol=tol,
                             atol=tol * float(jnp.abs(dx_ref).max()))
  np.testing.assert_allclose(np.float32(members[1]), np.float32(2 * dx_ref), rtol=tol,
                             atol=2 * tol * float(jnp.abs(dx_ref).max()))


def test_auto_conv_routes_few_channel_stride_one_convs_to_scatter_grad(monkeypatch):
  """LeNet's conv2 (6 -> 16) takes `scatter_grad_conv`; one channel, the CNN's 32 -> 64 and
  strided convolutions do not."""
  from dlcore.models import layers
  calls = []
  real = layers.scatter_grad_conv
  monkeypatch.setattr(layers, "scatter_grad_conv",
                      lambda *a: calls.append(a[1].shape) or real(*a))
  for name, shape in (("lenet", (2, 32, 32, 1)), ("cnn", (2, 28, 28, 1))):
    model = models.build(name)
    model.init(jax.random.PRNGKey(0), jnp.zeros(shape))
  assert calls == [(5, 5, 6, 16)]
  nhwc = ("NHWC", "HWIO", "NHWC")
  layers.auto_conv(jnp.zeros((1, 8, 8, 4)), jnp.zeros((2, 2, 4, 3)), (2, 2), "VALID",
                   dimension_numbers=nhwc)  # strided
  layers.auto_conv(jnp.zeros((1, 8, 8, 4)), jnp.zeros((2, 2, 4, 3)), (1, 1), "VALID",
                   dimension_numbers=nhwc, precision=jax.lax.Precision.HIGHEST)
  assert calls == [(5, 5, 6, 16)]


def test_auto_conv_routes_by_channels(monkeypatch):
  """`Conv2d` uses patches for 1 input channel on CPU and XLA's convolution otherwise; the
  LeNet built on it gives the same outputs as one forced onto XLA's convolution."""
  from dlcore.models import layers
  calls = []
  real = layers.patch_conv
  monkeypatch.setattr(layers, "patch_conv", lambda *a: calls.append(a[1].shape) or real(*a))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 1)), jnp.float32)
  model = models.build("lenet")
  params = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(params, x)
  assert calls == [(5, 5, 1, 6)] * 2  # conv1 at init and at apply; conv2 (6 channels) not
  monkeypatch.setattr(layers, "PATCH_CONV_MAX_CHANNELS", 0)  # every conv on XLA's kernel
  monkeypatch.setattr(layers, "SCATTER_GRAD_MAX_CHANNELS", 0)
  calls.clear()
  np.testing.assert_allclose(model.apply(params, x), out, rtol=1e-5, atol=1e-6)
  assert calls == []


def test_auto_conv_routes_one_channel_many_features_to_shift_conv(monkeypatch):
  """The CNN's conv1 (1 -> 32) runs as `shift_conv`, LeNet's (1 -> 6) stays on patches; the
  CNN gives the same outputs as one forced onto XLA's convolution."""
  from dlcore.models import layers
  calls = []
  real = layers.shift_conv
  monkeypatch.setattr(layers, "shift_conv", lambda *a: calls.append(a[1].shape) or real(*a))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 28, 28, 1)), jnp.float32)
  model = models.build("cnn")
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  assert calls == [(3, 3, 1, 32)] * 2
  calls.clear()
  lenet = models.build("lenet")
  lenet.apply(lenet.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1))), jnp.zeros((2, 32, 32, 1)))
  assert calls == []
  nhwc = ("NHWC", "HWIO", "NHWC")  # strided, and more than 9 taps: patches, not shifts
  layers.auto_conv(jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 32)), (2, 2), "VALID",
                   dimension_numbers=nhwc)
  layers.auto_conv(jnp.zeros((1, 8, 8, 1)), jnp.zeros((5, 5, 1, 32)), (1, 1), "VALID",
                   dimension_numbers=nhwc)
  assert calls == []
  monkeypatch.setattr(layers, "PATCH_CONV_MAX_CHANNELS", 0)  # every conv on XLA's kernel
  monkeypatch.setattr(layers, "SCATTER_GRAD_MAX_CHANNELS", 0)
  np.testing.assert_allclose(model.apply(variables, x), out, rtol=1e-5, atol=1e-6)
  assert calls == []


def test_chunked_keeps_each_example_in_place():
  """The whole chunks through lax.map, the rest in one call, joined in order (pytrees too)."""
  from dlcore.train.steps import chunked
  x = jnp.arange(250 * 3, dtype=jnp.float32).reshape(250, 3)
  f = lambda b: {"y": b * 2.0 + jnp.arange(3.0), "s": b.sum(-1)}  # noqa: E731
  for chunk in (None, 100, 125, 250, 400):
    out = jax.jit(lambda b, c=chunk: chunked(f, b, c))(x)
    np.testing.assert_array_equal(out["y"], f(x)["y"])
    np.testing.assert_array_equal(out["s"], f(x)["s"])


def test_lenet_test_forward_in_chunks_gives_the_same_bits():
  """model_building's LeNet evaluates 100 examples at a time: its test loss, accuracy and
  logits equal the whole batch's bit for bit (only the layout changes, 4x faster on CPU)."""
  from dlcore.train.classify import evaluate_classifier, predict_logits
  from experiments import model_building
  from dlcore.harness import cli
  size, resize, *_ = model_building.TRAINING["lenet"]
  cfg = cli.parse(model_building.Config, [], "")
  chunk = model_building.eval_chunk(cfg)
  assert chunk == 100
  for precision in ("bfloat16", "float16"):  # their logits' last bits move: whole batches
    assert model_building.eval_chunk(cli.parse(model_building.Config,
                                               ["--precision", precision], "")) is None
  model = models.build("lenet")
  pipeline = ImagePipeline("pm1", size=size, resize=resize)
  rng = np.random.default_rng(0)
  test = {"x": rng.integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8),
          "y": rng.integers(0, 10, 1000).astype(np.int32)}
  state = create_train_state(model, optax.adam(1e-3), pipeline(jnp.asarray(test["x"][:2])), 0)
  whole = evaluate_classifier(state, test, pipeline)
  assert evaluate_classifier(state, test, pipeline, chunk=chunk) == whole
  np.testing.assert_array_equal(predict_logits(state, test["x"], pipeline, chunk=chunk),
                                predict_logits(state, test["x"], pipeline))


def test_reference_kernels_give_forward_mode_autodiff():
  """A custom VJP has no forward mode: `jax.jvp` through LeNet (its pools, its conv2) fails,
  and inside `reference_kernels` it works and agrees with the custom VJPs (<u, J t> =
  <J^T u, t>); the module's settings come back afterwards."""
  from dlcore.models import layers
  rng = np.random.default_rng(0)
  x, t = (jnp.asarray(rng.standard_normal((2, 32, 32, 1)), jnp.float32) for _ in range(2))
  model = models.build("lenet")
  variables = model.init(jax.random.PRNGKey(0), x)
  f = lambda x: model.apply(variables, x)  # noqa: E731
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(f, (x,), (t,))
  with layers.reference_kernels():
    out, tangent = jax.jvp(f, (x,), (t,))
  assert (layers.SHIFT_CONV_MIN_FEATURES, layers.SCATTER_GRAD_MAX_CHANNELS,
          layers.TILE_POOL_VJP) == (16, 8, True)
  u = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  out_vjp, vjp = jax.vjp(f, x)
  np.testing.assert_allclose(out, out_vjp, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.vdot(u, tangent), jnp.vdot(vjp(u)[0], t), rtol=1e-4)
