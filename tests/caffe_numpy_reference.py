"""A plain numpy CaffeNet in Caffe's own layout, the reference for the tests.

Written directly from Caffe's layer definitions (NCHW blobs, weights
(out, in/groups, kh, kw) and (out, in), float64), sharing no code with
`cnnjax.models.caffenet`: loops over kernel offsets, groups, pooling
windows and LRN channels.
"""

import math

import numpy as np

# name -> (stride, pad, groups), per the bvlc_reference_caffenet prototxt.
CONV = {'conv1': (4, 0, 1), 'conv2': (1, 2, 2), 'conv3': (1, 1, 1),
        'conv4': (1, 1, 2), 'conv5': (1, 1, 2)}


def conv(x, weights, bias, stride, pad, groups):
  """Caffe convolution: x [N, C, H, W], weights [O, C/groups, kh, kw]."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  n, _, h, w = x.shape
  out_c, in_per_group, kh, kw = weights.shape
  out_per_group = out_c // groups
  out_h = (h - kh) // stride + 1
  out_w = (w - kw) // stride + 1
  y = np.zeros((n, out_c, out_h, out_w))
  for g in range(groups):
    xg = x[:, g * in_per_group:(g + 1) * in_per_group]
    wg = weights[g * out_per_group:(g + 1) * out_per_group]
    for i in range(kh):
      for j in range(kw):
        patch = xg[:, :, i:i + stride * (out_h - 1) + 1:stride,
                   j:j + stride * (out_w - 1) + 1:stride]
        y[:, g * out_per_group:(g + 1) * out_per_group] += np.einsum(
            'nchw,oc->nohw', patch, wg[:, :, i, j])
  return y + bias[None, :, None, None]


def max_pool(x, size=3, stride=2):
  """Caffe max pooling: ceil output size, last windows clipped to the input."""
  _, _, h, w = x.shape
  out_h = math.ceil((h - size) / stride) + 1
  out_w = math.ceil((w - size) / stride) + 1
  y = np.empty(x.shape[:2] + (out_h, out_w))
  for r in range(out_h):
    for c in range(out_w):
      window = x[:, :, r * stride:min(r * stride + size, h),
                 c * stride:min(c * stride + size, w)]
      y[:, :, r, c] = window.max(axis=(2, 3))
  return y


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  """Caffe ACROSS_CHANNELS LRN; channels outside [0, C) count as zero."""
  channels = x.shape[1]
  y = np.empty_like(x)
  for c in range(channels):
    lo, hi = max(0, c - size // 2), min(channels, c + size // 2 + 1)
    scale = k + alpha / size * np.sum(x[:, lo:hi] ** 2, axis=1)
    y[:, c] = x[:, c] / scale ** beta
  return y


def forward(images_nchw, caffe_params):
  """All blobs of CaffeNet (test phase) for [N, 3, H, W] BGR mean-subtracted.

  Args:
    images_nchw: float array [N, 3, H, W].
    caffe_params: name -> (weights, bias) in Caffe layout.

  Returns:
    Blob name -> float64 array (NCHW for spatial blobs, [N, D] for fc).
  """
  relu = lambda v: np.maximum(v, 0)
  blobs = {}

  def run_conv(name, x):
    blobs[name] = relu(conv(x, *caffe_params[name], *CONV[name]))
    return blobs[name]

  x = np.asarray(images_nchw, np.float64)
  x = run_conv('conv1', x)
  blobs['pool1'] = x = max_pool(x)
  blobs['norm1'] = x = lrn(x)
  x = run_conv('conv2', x)
  blobs['pool2'] = x = max_pool(x)
  blobs['norm2'] = x = lrn(x)
  x = run_conv('conv3', x)
  x = run_conv('conv4', x)
  x = run_conv('conv5', x)
  blobs['pool5'] = x = max_pool(x)
  x = x.reshape(x.shape[0], -1)  # Caffe's C,H,W order
  for name in ('fc6', 'fc7'):
    weights, bias = caffe_params[name]
    blobs[name] = x = relu(x @ weights.T + bias)
  weights, bias = caffe_params['fc8']
  blobs['fc8'] = x @ weights.T + bias
  return blobs


def to_nchw(blob):
  """Our NHWC blob in the reference's layout (fc blobs are unchanged)."""
  blob = np.asarray(blob)
  return blob.transpose(0, 3, 1, 2) if blob.ndim == 4 else blob


def assert_close(actual, expected, rel=1e-4, name=''):
  """Max abs error within `rel` of the blob's largest magnitude.

  Scale-relative, since ReLU and cancellation leave entries near zero where
  an elementwise relative test means nothing.
  """
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  scale = np.max(np.abs(expected))
  assert scale > 0, f'{name}: reference is all zero, the test is void'
  error = np.max(np.abs(actual - expected))
  assert error <= rel * scale, f'{name}: max error {error} vs scale {scale}'


def caffe_shape(our_shape):
  """HWIO -> (O, I, kh, kw); (in, out) -> (out, in); biases unchanged."""
  if len(our_shape) == 4:
    return (our_shape[3], our_shape[2], our_shape[0], our_shape[1])
  return tuple(reversed(our_shape))


def random_caffe_params(rng, our_shapes):
  """Random Caffe-layout weights for a model whose params have `our_shapes`.

  He-scaled weights and N(0, 0.5) biases keep activations O(10..100) through
  every layer (so LRN matters), where Caffe's 0.01 init would fade them to
  the biases and hide layout errors in the deep layers.

  Args:
    rng: np.random.Generator.
    our_shapes: {'conv1': {'kernel': shape-like, 'bias': ...}, ...} (e.g.
      `jax.eval_shape` of `model.init`'s params).
  """
  params = {}
  for name, leaves in our_shapes.items():
    shape = caffe_shape(tuple(leaves['kernel'].shape))
    fan_in = int(np.prod(shape[1:]))
    weights = rng.normal(0, math.sqrt(2 / fan_in), shape)
    bias = rng.normal(0, 0.5, tuple(leaves['bias'].shape))
    params[name] = (weights.astype(np.float32), bias.astype(np.float32))
  return params
