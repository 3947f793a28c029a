"""CaffeNet's hand-written backward passes against independent references.

Pooling against a loop transcription of Caffe's MaxPoolBackward (first
maximum in scan order), LRN and the whole network against XLA autodiff of
the plain definitions (reduce_window pooling after the ReLU, LRN with
`jnp.power`), init against SPEC 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models import caffenet

TINY_WIDTH = 0.0625


def caffe_max_pool_backward(x, top_diff, size=3, stride=2):
  """Caffe's MaxPoolForward mask + MaxPoolBackward, NHWC, loops."""
  batch, height, width, channels = x.shape
  out_h, out_w = top_diff.shape[1:3]
  bottom_diff = np.zeros_like(x)
  for b in range(batch):
    for c in range(channels):
      for ph in range(out_h):
        for pw in range(out_w):
          best, where = -np.inf, None
          for h in range(ph * stride, min(ph * stride + size, height)):
            for w in range(pw * stride, min(pw * stride + size, width)):
              if x[b, h, w, c] > best:  # Caffe: strictly greater
                best, where = x[b, h, w, c], (h, w)
          bottom_diff[(b,) + where + (c,)] += top_diff[b, ph, pw, c]
  return bottom_diff


@pytest.mark.parametrize('size', [8, 9, 13])
def test_max_pool_gradient_goes_to_first_maximum(size):
  rng = np.random.default_rng(size)
  # Few distinct values: most windows hold tied maxima. 8 and 13 have a
  # clipped last window (ceil mode), 9 does not.
  x = rng.integers(-2, 3, (2, size, size, 3)).astype(np.float32)
  pooled_shape = caffenet.max_pool_ceil(jnp.asarray(x)).shape
  top_diff = rng.normal(size=pooled_shape).astype(np.float32)
  _, vjp = jax.vjp(caffenet.max_pool_ceil, jnp.asarray(x))
  (grad,) = jax.jit(vjp)(jnp.asarray(top_diff))
  np.testing.assert_allclose(grad, caffe_max_pool_backward(x, top_diff),
                             rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_hand_worked():
  # One 3x3 window (5x5 input -> 2x2 output); window (0, 0) has its
  # maximum 7 twice, at (0, 2) and (2, 0): the first in scan order wins.
  x = np.array([[1, 0, 7, 0, 0],
                [0, 0, 0, 0, 0],
                [7, 0, 0, 0, 9],
                [0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0]], np.float32)[None, :, :, None]
  top_diff = np.array([[1., 10.], [100., 1000.]], np.float32)[None, :, :, None]
  _, vjp = jax.vjp(caffenet.max_pool_ceil, jnp.asarray(x))
  grad = np.asarray(vjp(jnp.asarray(top_diff))[0])[0, :, :, 0]
  expected = np.zeros((5, 5), np.float32)
  expected[0, 2] = 1           # window (0, 0): first 7
  expected[2, 4] = 10 + 1000   # windows (0, 1) and (1, 1): the 9
  expected[2, 0] = 100         # window (1, 0): rows 2-4, cols 0-2
  np.testing.assert_array_equal(grad, expected)


def plain_lrn(x, size=caffenet.LRN_SIZE, alpha=caffenet.LRN_ALPHA,
              beta=caffenet.LRN_BETA, k=caffenet.LRN_K):
  """LRN straight from the definition (a band matrix sums the squares)."""
  channels = np.arange(x.shape[-1])
  band = (np.abs(channels[:, None] - channels[None, :]) <= size // 2)
  total = jnp.square(x) @ jnp.asarray(band, x.dtype)
  return x / jnp.power(k + alpha / size * total, beta)


@pytest.mark.parametrize('beta', [caffenet.LRN_BETA, 0.6])
def test_lrn_gradient_matches_autodiff_of_definition(beta):
  rng = np.random.default_rng(7)
  # Large activations so the normalisation term is far from 1.
  x = jnp.asarray(rng.normal(0, 150, (2, 3, 4, 9)), jnp.float32)
  top_diff = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  lrn = lambda v: caffenet.local_response_norm(v, 5, 1e-4, beta, 1.0)
  y, vjp = jax.vjp(lrn, x)
  y_ref, vjp_ref = jax.vjp(lambda v: plain_lrn(v, beta=beta), x)
  np.testing.assert_allclose(y, y_ref, rtol=2e-6, atol=1e-4)
  grad, grad_ref = vjp(top_diff)[0], vjp_ref(top_diff)[0]
  assert np.max(np.abs(grad_ref)) > 0.1
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)


def plain_caffenet(params, images, stop_after=None):
  """CaffeNet from the plain definitions: ReLU, then reduce_window pooling."""
  def cut(name, v):
    return jax.lax.stop_gradient(v) if name == stop_after else v

  def conv(name, x, stride, pad, groups):
    y = jax.lax.conv_general_dilated(
        x, params[name]['kernel'], (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
    return cut(name, jax.nn.relu(y + params[name]['bias']))

  def pool(name, x):
    h, w = x.shape[1:3]
    pad_h = (-(-(h - 3) // 2)) * 2 + 3 - h
    pad_w = (-(-(w - 3) // 2)) * 2 + 3 - w
    return cut(name, jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
        ((0, 0), (0, pad_h), (0, pad_w), (0, 0))))

  x = pool('pool1', conv('conv1', images, 4, 0, 1))
  x = cut('norm1', plain_lrn(x))
  x = pool('pool2', conv('conv2', x, 1, 2, 2))
  x = cut('norm2', plain_lrn(x))
  x = conv('conv3', x, 1, 1, 1)
  x = conv('conv4', x, 1, 1, 2)
  x = pool('pool5', conv('conv5', x, 1, 1, 2))
  x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
  for name in ('fc6', 'fc7'):
    x = cut(name, jax.nn.relu(x @ params[name]['kernel'] +
                              params[name]['bias']))
  return x @ params['fc8']['kernel'] + params['fc8']['bias']


@pytest.mark.parametrize('image_size,stop_after', [
    (71, None), (71, 'conv1')])
def test_network_gradients_match_autodiff_of_definition(image_size,
                                                         stop_after):
  model = caffenet.CaffeNet(num_classes=5, width=TINY_WIDTH,
                            stop_gradient_after=stop_after)
  rng = np.random.default_rng(image_size)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, image_size, image_size, 3), jnp.float32))['params']
  # He-scaled weights and spread biases keep every layer active (and the
  # LRN far from identity), unlike Caffe's small init.
  params = {}
  for name, leaves in shapes.items():
    fan_in = int(np.prod(leaves['kernel'].shape[:-1]))
    params[name] = {
        'kernel': jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in),
                                         leaves['kernel'].shape), jnp.float32),
        'bias': jnp.asarray(rng.normal(0, 0.5, leaves['bias'].shape),
                            jnp.float32)}
  images = jnp.asarray(rng.uniform(-128, 128, (2, image_size, image_size, 3)),
                       jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)

  def loss(logits):
    return jnp.sum(weights * logits)

  grads = jax.jit(jax.grad(
      lambda p: loss(model.apply({'params': p}, images)[0])))(params)
  expected = jax.jit(jax.grad(
      lambda p: loss(plain_caffenet(p, images, stop_after))))(params)
  # 'conv1' cuts the pre-activation that feeds pool1: conv1 gets nothing.
  frozen = ('conv1',) if stop_after == 'conv1' else ()
  for name in caffenet.PARAM_LAYERS:
    for leaf in ('kernel', 'bias'):
      got, want = np.asarray(grads[name][leaf]), np.asarray(expected[name][leaf])
      scale = np.max(np.abs(want))
      if name in frozen:
        assert scale == 0 and not np.any(got), name
        continue
      assert scale > 0, (name, leaf)
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale,
                                 err_msg=f'{name}/{leaf}')


def test_pre_activation_pooling_keeps_every_blob():
  model = caffenet.CaffeNet(num_classes=3, width=TINY_WIDTH)
  params = caffenet.init_params(model, jax.random.key(0), 67)
  images = jnp.asarray(np.random.default_rng(0).uniform(
      -100, 100, (1, 67, 67, 3)), jnp.float32)
  _, out = jax.jit(model.apply)({'params': params}, images)
  # pool1 is the pooled conv1 blob (post-ReLU), as in Caffe.
  conv1 = np.asarray(out['conv1'])
  assert conv1.min() == 0 and conv1.max() > 0
  np.testing.assert_array_equal(
      out['pool1'], caffenet.max_pool_ceil(jnp.asarray(conv1)))


def test_init_params_is_one_deterministic_draw_with_caffe_biases():
  model = caffenet.CaffeNet(num_classes=4, width=TINY_WIDTH)
  first = caffenet.init_params(model, jax.random.key(5), 67)
  again = caffenet.init_params(model, jax.random.key(5), 67)
  other = caffenet.init_params(model, jax.random.key(6), 67)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, 67, 67, 3), jnp.float32))['params']
  assert jax.tree_util.tree_map(lambda a: a.shape, first) == (
      jax.tree_util.tree_map(lambda a: a.shape, shapes))
  kernels = [np.asarray(first[name]['kernel']) for name in first]
  for name in first:
    np.testing.assert_array_equal(first[name]['kernel'],
                                  again[name]['kernel'])
    assert not np.array_equal(first[name]['kernel'], other[name]['kernel'])
  # Layers come from disjoint parts of the draw: no two repeat each other.
  unit = [k.ravel()[:100] / caffenet._caffe_init(name)[0]
          for k, name in zip(kernels, first)]
  for i in range(len(unit)):
    for j in range(i):
      assert not np.allclose(unit[i], unit[j]), (i, j)
  # Traceable: train.py takes shapes with jax.eval_shape and a traced key.
  traced = jax.eval_shape(
      lambda: caffenet.init_params(model, jax.random.key(1), 67))
  assert traced['fc8']['kernel'].shape == first['fc8']['kernel'].shape


def test_compiler_options_only_on_cpu():
  assert caffenet.compiler_options('gpu') == {}
  options = caffenet.compiler_options('cpu')
  assert options
  # Accepted by XLA and the numbers do not change (float tolerance).
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 64)), jnp.float32)
  y = jax.jit(lambda a: a @ a.T, compiler_options=options)(x)
  np.testing.assert_allclose(y, np.asarray(x) @ np.asarray(x).T, rtol=1e-4,
                             atol=1e-4)
