"""CaffeNet ("Alex-Net" of the study), exactly as Caffe's bvlc_reference_caffenet.

Input: NHWC float32, BGR, raw 0..255 minus the ImageNet mean (the data layer
does that). `model.apply` returns `(logits, out)` where `out` maps every Caffe
blob name to its value; jit prunes the blobs a caller does not use, so a probe
only has to name a layer.

Speed on CPU (bench/README.md): the two layers whose XLA autodiff is slow
on CPU have hand-written backward passes with Caffe's own semantics (max
pooling sends each gradient to the first maximum of its window, in Caffe's
scan order, with one scatter; LRN uses Caffe's closed-form gradient).
Pooling runs on the convolutions' raw outputs, group by group, with the
bias and ReLU after it (max commutes with both, bit for bit), so neither
inference nor training touches a full-resolution bias, ReLU or
concatenation; its forward pass is rows-then-columns maxima of strided
slices, which XLA fuses into the LRN after it. Jit steps with
`compiler_options()`: on CPU it is worth more than all the rest.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Blob names in forward order (Caffe's in-place ReLUs: conv/fc blobs are post-ReLU).
BLOBS = ('conv1', 'pool1', 'norm1', 'conv2', 'pool2', 'norm2', 'conv3',
         'conv4', 'conv5', 'pool5', 'fc6', 'fc7', 'fc8')
# The study's seven "layers" (post-ReLU; pool1/pool2 taken before LRN).
STUDY_LAYERS = ('pool1', 'pool2', 'conv3', 'conv4', 'pool5', 'fc6', 'fc7')
# Parameterised layers in forward order.
PARAM_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

# (out_channels, kernel, stride, pad, groups, init std, init bias) per SPEC 1.
_CONV_SPECS = {
    'conv1': (96, 11, 4, 0, 1, 0.01, 0.0),
    'conv2': (256, 5, 1, 2, 2, 0.01, 1.0),
    'conv3': (384, 3, 1, 1, 1, 0.01, 0.0),
    'conv4': (384, 3, 1, 1, 2, 0.01, 1.0),
    'conv5': (256, 3, 1, 1, 2, 0.01, 1.0),
}
_FC_SPECS = {'fc6': (4096, 0.005, 1.0), 'fc7': (4096, 0.005, 1.0)}
_FC8_STD = 0.01

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0

# XLA:CPU hands matmuls and convolutions to YNNPACK by default; on CaffeNet's
# shapes its own (Eigen) kernels are faster: the training step 1.6x,
# inference 1.4x (batch 32 and 128, bench/bench_steps.py).
_CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def compiler_options(backend: Optional[str] = None) -> dict[str, str]:
  """`jax.jit(..., compiler_options=...)` for CaffeNet on `backend`.

  Args:
    backend: 'cpu', 'gpu', ...; the default backend when None.

  Returns:
    XLA options that speed CaffeNet up on CPU; empty on other backends.
  """
  backend = jax.default_backend() if backend is None else backend
  return dict(_CPU_COMPILER_OPTIONS) if backend == 'cpu' else {}


def scaled_channels(channels: int, width: float, grouped: bool) -> int:
  """Channel count of a width-scaled layer (even where the layer is grouped)."""
  if grouped:
    return max(2, int(round(channels * width / 2)) * 2)
  return max(1, int(round(channels * width)))


def conv2d(x, kernel, stride: int, pad: int):
  """Cross-correlation, NHWC input, HWIO kernel, symmetric zero padding."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _group_convs(x, kernel, stride: int, pad: int, groups: int):
  """Output of each group of a Caffe grouped convolution, as a list.

  Output group g sees only input group g. The kernel keeps the HWIO layout
  with I = in_channels / groups (XLA's feature_group_count layout); on CPU
  separate convolutions are ~3x faster than feature_group_count.
  """
  xs = jnp.split(x, groups, axis=-1) if groups > 1 else [x]
  ks = jnp.split(kernel, groups, axis=-1) if groups > 1 else [kernel]
  return [conv2d(xg, kg, stride, pad) for xg, kg in zip(xs, ks)]


def grouped_conv2d(x, kernel, stride: int, pad: int, groups: int):
  """Caffe grouped convolution as separate convolutions on channel slices."""
  return jnp.concatenate(_group_convs(x, kernel, stride, pad, groups), axis=-1)


def _ceil_pool_geometry(size: int, window: int, stride: int):
  """(output size, bottom/right padding) of Caffe's ceil-mode pooling."""
  out = -(-(size - window) // stride) + 1
  return out, (out - 1) * stride + window - size


def _max_pool_axis(x, axis: int, window: int, stride: int):
  """Ceil-mode max pooling along one axis: the max of `window` strided views."""
  out, pad = _ceil_pool_geometry(x.shape[axis], window, stride)
  if pad:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    x = jnp.pad(x, widths, constant_values=-jnp.inf)  # never a maximum
  views = [jax.lax.slice_in_dim(x, start, start + stride * (out - 1) + 1,
                                stride, axis) for start in range(window)]
  return functools.reduce(jnp.maximum, views)


def _max_pool_forward(x, window: int, stride: int):
  # Rows, then columns: 2 x window maxima per output instead of window^2,
  # as slices XLA fuses; ~4x faster than reduce_window on CPU, same values.
  return _max_pool_axis(_max_pool_axis(x, 1, window, stride), 2, window,
                        stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_ceil(x, window: int = 3, stride: int = 2):
  """Caffe max pooling: output size rounds up (equals VALID at 227 input).

  The gradient goes to the first maximum of each window in Caffe's scan
  order (rows, then columns), as Caffe's backward pass does, with one
  scatter; XLA's own pooling gradient costs ~9% more of a batch-128
  training step on CPU.
  """
  return _max_pool_forward(x, window, stride)


def _max_pool_fwd(x, window, stride):
  return _max_pool_forward(x, window, stride), x


def _first_max_positions(x, window: int, stride: int):
  """Flat index, within its image, of each window's first maximum.

  Returns:
    int32 [B, OH, OW, C]: (row * W + col) * C + channel in x.
  """
  _, height, width, channels = x.shape
  out_h, pad_h = _ceil_pool_geometry(height, window, stride)
  out_w, pad_w = _ceil_pool_geometry(width, window, stride)
  padded = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)),
                   constant_values=-jnp.inf)  # never a maximum
  best = shift = None
  for dy in range(window):
    for dx in range(window):
      view = jax.lax.slice(
          padded, (0, dy, dx, 0),
          (padded.shape[0], dy + stride * (out_h - 1) + 1,
           dx + stride * (out_w - 1) + 1, channels),
          (1, stride, stride, 1))                            # [B, OH, OW, C]
      if best is None:
        best, shift = view, jnp.zeros(view.shape, jnp.int32)
      else:
        larger = view > best  # strict: ties keep the earlier position
        best = jnp.where(larger, view, best)
        shift = jnp.where(larger, (dy * width + dx) * channels, shift)
  rows = stride * jnp.arange(out_h, dtype=jnp.int32)[:, None, None]
  cols = stride * jnp.arange(out_w, dtype=jnp.int32)[:, None]
  window_start = ((rows * width + cols) * channels
                  + jnp.arange(channels, dtype=jnp.int32))   # [OH, OW, C]
  return window_start + shift


def _max_pool_bwd(window, stride, x, g):
  batch = x.shape[0]
  per_image = x.size // batch
  positions = _first_max_positions(x, window, stride).reshape(batch, -1)
  # Flat indices into the whole batch: a 1-D scatter shards like any
  # elementwise op, where batched scatter dims trip XLA's sharding rules.
  positions = positions + per_image * jnp.arange(batch, dtype=jnp.int32)[:, None]
  dx = jnp.zeros((x.size,), g.dtype).at[positions.reshape(-1)].add(
      g.reshape(-1), mode='promise_in_bounds')               # [B*H*W*C]
  return (dx.reshape(x.shape),)

max_pool_ceil.defvjp(_max_pool_fwd, _max_pool_bwd)


def _channel_window_sum(v, size: int):
  """Sum over channels c-size//2..c+size//2, zero outside [0, C)."""
  half = size // 2
  channels = v.shape[-1]
  padded = jnp.pad(v, ((0, 0),) * (v.ndim - 1) + ((half, half),))
  return sum(padded[..., i:i + channels] for i in range(size))


def _negative_power(scale, beta: float):
  """scale ** -beta; Caffe's beta 0.75 as rsqrt(s) * s ** -0.25 (no pow)."""
  if beta == 0.75:
    inv_sqrt = jax.lax.rsqrt(scale)
    return inv_sqrt * jnp.sqrt(inv_sqrt)
  return jnp.power(scale, -beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def local_response_norm(x, size: int = LRN_SIZE, alpha: float = LRN_ALPHA,
                        beta: float = LRN_BETA, k: float = LRN_K):
  """Caffe ACROSS_CHANNELS LRN: x / (k + alpha/n * sum of squares)^beta.

  The backward pass is Caffe's closed form: XLA's autodiff of the shifted
  sums is ~6x slower on CPU (~8% of a batch-128 training step).
  """
  return _lrn_fwd(x, size, alpha, beta, k)[0]


def _lrn_fwd(x, size, alpha, beta, k):
  scale = k + (alpha / size) * _channel_window_sum(jnp.square(x), size)
  y = x * _negative_power(scale, beta)
  return y, (x, y, scale)


def _lrn_bwd(size, alpha, beta, k, residuals, g):
  # dx_j = g_j s_j^-beta - 2 alpha beta / n * x_j * sum_{c near j} g_c y_c / s_c
  del k
  x, y, scale = residuals
  return (g * _negative_power(scale, beta)
          - (2 * alpha * beta / size) * x
          * _channel_window_sum(g * y / scale, size),)


local_response_norm.defvjp(_lrn_fwd, _lrn_bwd)


def caffe_flatten(x):
  """[B, H, W, C] -> [B, C*H*W] in Caffe's C,H,W order (fc6's row order)."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class CaffeConv(nn.Module):
  """Convolution + bias with Caffe's init; `kernel` is HWIO, I = in/groups.

  Returns the pre-activation (the caller applies the ReLU) and, with
  `pool`, its Caffe max pooling. Pooling runs group by group on the
  convolutions' outputs with the bias added after it: max(z + b) equals
  max(z) + b bit for bit (rounding is monotonic), and the full-resolution
  bias add and concatenation are left out unless their blob is used. The
  gradient goes to the first maximum of z, which is that of z + b unless
  rounding ties two values of a window once b is added.
  """
  features: int
  kernel_size: int
  stride: int
  pad: int
  groups: int
  init_std: float
  init_bias: float
  pool: bool = False

  @nn.compact
  def __call__(self, x):
    in_per_group = x.shape[-1] // self.groups
    kernel = self.param(
        'kernel', nn.initializers.normal(self.init_std),
        (self.kernel_size, self.kernel_size, in_per_group, self.features))
    bias = self.param('bias', nn.initializers.constant(self.init_bias),
                      (self.features,))
    groups = _group_convs(x, kernel, self.stride, self.pad, self.groups)
    pre = jnp.concatenate(groups, axis=-1) + bias             # [B, H, W, F]
    if not self.pool:
      return pre, None
    pooled = jnp.concatenate([max_pool_ceil(g) for g in groups], axis=-1)
    return pre, pooled + bias                                 # [B, H', W', F]


class CaffeDense(nn.Module):
  """Inner product with Caffe's Gaussian init; `kernel` is (in, out)."""
  features: int
  init_std: float
  init_bias: float

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.normal(self.init_std),
                        (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.constant(self.init_bias),
                      (self.features,))
    return x @ kernel + bias


def _caffe_init(name: str) -> tuple[float, float]:
  """(Gaussian std of the weights, constant bias) of layer `name` (SPEC 1)."""
  if name in _CONV_SPECS:
    return _CONV_SPECS[name][5:]
  if name in _FC_SPECS:
    return _FC_SPECS[name][1:]
  if name == 'fc8':
    return _FC8_STD, 0.0
  raise KeyError(f'CaffeNet has no layer {name!r}')


class CaffeNet(nn.Module):
  """bvlc_reference_caffenet; `width` scales every hidden layer for demos.

  `stop_gradient_after` names a blob whose value is cut from autodiff: with
  frozen layers below it (FC-FT: 'pool5') the backward pass below the
  boundary is not computed at all.
  """
  num_classes: int = 1000
  width: float = 1.0
  dropout_rate: float = 0.5
  stop_gradient_after: Optional[str] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    out = {}

    def cut(name, value):
      if name == self.stop_gradient_after:
        value = jax.lax.stop_gradient(value)
      return value

    def record(name, value):
      out[name] = value = cut(name, value)
      return value

    def conv(name, x, pool=False):
      channels, ksize, stride, pad, groups, _, _ = _CONV_SPECS[name]
      std, bias = _caffe_init(name)
      return CaffeConv(scaled_channels(channels, self.width, groups > 1),
                       ksize, stride, pad, groups, std, bias, pool=pool,
                       name=name)(x)

    def conv_relu(name, x):
      return record(name, jax.nn.relu(conv(name, x)[0]))

    def conv_relu_pool(conv_name, pool_name, x):
      # pool(relu(z)) == relu(pool(z)) exactly, and the first maximum is
      # the same wherever the gradient is not zeroed by the ReLU.
      pre, pooled = conv(conv_name, x, pool=True)
      record(conv_name, jax.nn.relu(pre))  # computed only if asked for
      return record(pool_name, jax.nn.relu(cut(conv_name, pooled)))

    x = conv_relu_pool('conv1', 'pool1', images)            # [B, 27, 27, 96]
    x = record('norm1', local_response_norm(x))
    x = conv_relu_pool('conv2', 'pool2', x)                 # [B, 13, 13, 256]
    x = record('norm2', local_response_norm(x))
    x = conv_relu('conv3', x)                               # [B, 13, 13, 384]
    x = conv_relu('conv4', x)                               # [B, 13, 13, 384]
    x = conv_relu_pool('conv5', 'pool5', x)                 # [B, 6, 6, 256]
    x = caffe_flatten(x)                                    # [B, 9216]
    for name in ('fc6', 'fc7'):
      std, bias = _caffe_init(name)
      x = CaffeDense(scaled_channels(_FC_SPECS[name][0], self.width, False),
                     std, bias, name=name)(x)
      x = record(name, jax.nn.relu(x))                      # [B, 4096]
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    std, bias = _caffe_init('fc8')
    logits = CaffeDense(self.num_classes, std, bias, name='fc8')(x)
    record('fc8', logits)                                   # [B, num_classes]
    return logits, out


def init_params(model: CaffeNet, rng, image_size: int = 227):
  """Caffe-initialised parameters for `model` (SPEC 1: Gaussian weights).

  All weights come from one Gaussian draw split into the layers (the same
  distribution as `model.init`, another stream): one random op compiles in
  about a second, where `model.init` compiles one per layer.

  Args:
    model: the CaffeNet whose shapes (width, num_classes) to initialise.
    rng: a jax PRNG key.
    image_size: input side the shapes are traced at (fc6 depends on it).

  Returns:
    {layer: {'kernel', 'bias'}} float32 arrays.
  """
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), dummy)['params']
  layers = tuple((name, tuple(shapes[name]['kernel'].shape),
                  tuple(shapes[name]['bias'].shape)) for name in shapes)
  return _draw_caffe_init(layers, rng)


@functools.partial(jax.jit, static_argnums=0)
def _draw_caffe_init(layers, rng):
  sizes = [int(np.prod(kernel_shape)) for _, kernel_shape, _ in layers]
  normal = jax.random.normal(rng, (sum(sizes),), jnp.float32)
  params, start = {}, 0
  for (name, kernel_shape, bias_shape), size in zip(layers, sizes):
    std, bias = _caffe_init(name)
    params[name] = {
        'kernel': normal[start:start + size].reshape(kernel_shape) * std,
        'bias': jnp.full(bias_shape, bias, jnp.float32)}
    start += size
  return params


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
