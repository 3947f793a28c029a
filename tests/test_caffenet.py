"""CaffeNet against a numpy transcription of Caffe; focused layer checks."""

import caffe_numpy_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models import caffenet

TINY_WIDTH = 0.0625  # conv channels 6, 16, 24, 24, 16; fc 256


def param_shapes(model, image_size):
  return jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  )['params']


def to_our_layout(caffe_params):
  """Caffe (O, I, kh, kw) -> HWIO and (out, in) -> (in, out), by hand."""
  ours = {}
  for name, (weights, bias) in caffe_params.items():
    kernel = (weights.transpose(2, 3, 1, 0) if weights.ndim == 4
              else weights.T)
    ours[name] = {'kernel': jnp.asarray(kernel), 'bias': jnp.asarray(bias)}
  return ours


@pytest.mark.parametrize('image_size,batch', [(71, 2), (99, 2), (227, 1)])
def test_every_blob_matches_numpy_reference(image_size, batch):
  # 71 px: every pooling has ceil != floor (16->8, 8->4, 4->2).
  model = caffenet.CaffeNet(num_classes=5, width=TINY_WIDTH)
  rng = np.random.default_rng(image_size)
  caffe_params = ref.random_caffe_params(rng, param_shapes(model, image_size))
  images = rng.uniform(-128, 128, (batch, image_size, image_size, 3))
  images = images.astype(np.float32)

  logits, out = jax.jit(model.apply)({'params': to_our_layout(caffe_params)},
                                     images)
  expected = ref.forward(images.transpose(0, 3, 1, 2), caffe_params)

  assert set(out) == set(caffenet.BLOBS)
  for name in caffenet.BLOBS:
    ref.assert_close(ref.to_nchw(out[name]), expected[name], name=name)
  ref.assert_close(logits, expected['fc8'], name='logits')
  # LRN must be active for this test to cover it: activations are large.
  assert np.max(np.abs(expected['pool1'] - expected['norm1'])) > 1.0


def test_full_size_blob_shapes():
  model = caffenet.CaffeNet()
  images = jax.ShapeDtypeStruct((2, 227, 227, 3), jnp.float32)
  params = param_shapes(model, 227)
  _, out = jax.eval_shape(lambda p, x: model.apply({'params': p}, x),
                          params, images)
  expected = {
      'conv1': (55, 55, 96), 'pool1': (27, 27, 96), 'norm1': (27, 27, 96),
      'conv2': (27, 27, 256), 'pool2': (13, 13, 256), 'norm2': (13, 13, 256),
      'conv3': (13, 13, 384), 'conv4': (13, 13, 384), 'conv5': (13, 13, 256),
      'pool5': (6, 6, 256), 'fc6': (4096,), 'fc7': (4096,), 'fc8': (1000,)}
  assert {k: v.shape[1:] for k, v in out.items()} == expected
  assert params['fc6']['kernel'].shape == (9216, 4096)


def test_param_count_matches_caffenet():
  params = param_shapes(caffenet.CaffeNet(), 227)
  assert caffenet.count_params(params) == 60_965_224


def test_lrn_hand_worked_values():
  # One pixel, 7 channels; alpha/n = 2e-5, window c-2..c+2 clipped.
  x = np.array([100., 200., 0., 0., 50., 0., 300.], np.float32)
  y = np.asarray(caffenet.local_response_norm(jnp.asarray(x)[None, None,
                                                                None]))[0, 0, 0]
  # c=0: 100^2+200^2 = 5e4 -> scale 2; c=1 the same window sum;
  # c=4 and c=6: 50^2+300^2 = 92500 -> scale 2.85.
  expected = [100 * 2 ** -0.75, 200 * 2 ** -0.75, 0, 0, 50 * 2.85 ** -0.75, 0,
              300 * 2.85 ** -0.75]
  np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_grouped_conv_keeps_halves_apart():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 9, 9, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  y = caffenet.grouped_conv2d(x, kernel, 1, 1, 2)
  x_changed = x.at[..., 4:].add(1.0)   # only input half 1 changes
  y_changed = caffenet.grouped_conv2d(x_changed, kernel, 1, 1, 2)
  np.testing.assert_array_equal(y[..., :3], y_changed[..., :3])
  assert np.min(np.abs(y[..., 3:] - y_changed[..., 3:]).sum((1, 2))) > 0
  # Same as XLA's own grouped convolution.
  expected = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_caffe_flatten_is_channel_major():
  h, w, c = 2, 3, 4
  x = np.arange(h * w * c, dtype=np.float32).reshape(1, h, w, c)
  flat = np.asarray(caffenet.caffe_flatten(jnp.asarray(x)))[0]
  for ci in range(c):
    for yi in range(h):
      for xi in range(w):
        assert flat[ci * h * w + yi * w + xi] == x[0, yi, xi, ci]


def test_fc6_row_selects_pool5_in_chw_order():
  model = caffenet.CaffeNet(num_classes=3, width=TINY_WIDTH)
  rng = np.random.default_rng(1)
  params = to_our_layout(ref.random_caffe_params(rng, param_shapes(model,
                                                                   227)))
  # Column j of fc6 picks pool5 at (c_j, y_j, x_j) through row c*36+y*6+x.
  fc6 = np.zeros(params['fc6']['kernel'].shape, np.float32)
  picks = rng.integers(0, [16, 6, 6], size=(fc6.shape[1], 3))
  for j, (c, y, x) in enumerate(picks):
    fc6[c * 36 + y * 6 + x, j] = 1.0
  params['fc6'] = {'kernel': fc6, 'bias': np.zeros(fc6.shape[1], np.float32)}
  images = rng.uniform(-128, 128, (1, 227, 227, 3)).astype(np.float32)
  _, out = jax.jit(model.apply)({'params': params}, images)
  pool5 = np.asarray(out['pool5'])[0]
  assert pool5.shape == (6, 6, 16)
  picked = pool5[picks[:, 1], picks[:, 2], picks[:, 0]]
  assert np.count_nonzero(picked) > fc6.shape[1] // 4
  np.testing.assert_allclose(out['fc6'][0], picked, rtol=1e-6)


def test_max_pool_rounds_up_and_clips_last_window():
  # 8x8 (ceil 4, floor 3); all negative so zero padding would show up.
  x = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1) - 1000
  y = np.asarray(caffenet.max_pool_ceil(jnp.asarray(x)))[0, :, :, 0]
  assert y.shape == (4, 4)
  for r in range(4):
    for c in range(4):
      # The largest value of a window is its (clipped) bottom-right corner.
      assert y[r, c] == min(2 * r + 2, 7) * 8 + min(2 * c + 2, 7) - 1000


def test_caffe_init_statistics():
  params = caffenet.init_params(caffenet.CaffeNet(width=0.25),
                                jax.random.key(3))
  stds = {'conv1': 0.01, 'conv2': 0.01, 'conv3': 0.01, 'conv4': 0.01,
          'conv5': 0.01, 'fc6': 0.005, 'fc7': 0.005, 'fc8': 0.01}
  biases = {'conv1': 0, 'conv2': 1, 'conv3': 0, 'conv4': 1, 'conv5': 1,
            'fc6': 1, 'fc7': 1, 'fc8': 0}
  for name, std in stds.items():
    kernel = np.asarray(params[name]['kernel'])
    assert kernel.size > 8000, name  # enough samples for 5 % tolerance
    assert abs(kernel.std() / std - 1) < 0.05, (name, kernel.std())
    assert abs(kernel.mean()) < 0.1 * std, (name, kernel.mean())
    np.testing.assert_array_equal(params[name]['bias'], biases[name])


def test_stop_gradient_after_pool5_leaves_conv_without_gradient():
  model = caffenet.CaffeNet(num_classes=3, width=TINY_WIDTH,
                            stop_gradient_after='pool5')
  rng = np.random.default_rng(4)
  params = to_our_layout(ref.random_caffe_params(rng, param_shapes(model,
                                                                   71)))
  images = jnp.asarray(rng.uniform(-128, 128, (2, 71, 71, 3)), jnp.float32)

  def loss(p):
    logits, _ = model.apply({'params': p}, images)
    return jnp.sum(logits ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
    assert not np.any(np.asarray(grads[name]['kernel'])), name
  assert np.any(np.asarray(grads['fc6']['kernel']))
