"""CaffeNet ("Alex-Net" of the study), exactly as Caffe's bvlc_reference_caffenet.

Input: NHWC float32, BGR, raw 0..255 minus the ImageNet mean (the data layer
does that). `model.apply` returns `(logits, out)` where `out` maps every Caffe
blob name to its value; jit prunes the blobs a caller does not use, so a probe
only has to name a layer.
"""

from __future__ import annotations

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


def grouped_conv2d(x, kernel, stride: int, pad: int, groups: int):
  """Caffe grouped convolution as separate convolutions on channel slices.

  Output half g sees only input half g. The kernel keeps the HWIO layout with
  I = in_channels / groups (XLA's feature_group_count layout); on CPU separate
  convolutions are ~3x faster than feature_group_count.
  """
  if groups == 1:
    return conv2d(x, kernel, stride, pad)
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate(
      [conv2d(xg, kg, stride, pad) for xg, kg in zip(xs, ks)], axis=-1)


def max_pool_ceil(x, window: int = 3, stride: int = 2):
  """Caffe max pooling: output size rounds up (equals VALID at 227 input)."""
  h, w = x.shape[1], x.shape[2]
  out_h = -(-(h - window) // stride) + 1
  out_w = -(-(w - window) // stride) + 1
  pad_h = (out_h - 1) * stride + window - h
  pad_w = (out_w - 1) * stride + window - w
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
      ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def local_response_norm(x, size: int = LRN_SIZE, alpha: float = LRN_ALPHA,
                        beta: float = LRN_BETA, k: float = LRN_K):
  """Caffe ACROSS_CHANNELS LRN: x / (k + alpha/n * sum of squares)^beta."""
  half = size // 2
  sq = jnp.pad(jnp.square(x), ((0, 0), (0, 0), (0, 0), (half, half)))
  channels = x.shape[-1]
  window_sum = sum(sq[..., i:i + channels] for i in range(size))
  return x / jnp.power(k + (alpha / size) * window_sum, beta)


def caffe_flatten(x):
  """[B, H, W, C] -> [B, C*H*W] in Caffe's C,H,W order (fc6's row order)."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class CaffeConv(nn.Module):
  """Convolution + ReLU with Caffe's init; `kernel` is HWIO, I = in/groups."""
  features: int
  kernel_size: int
  stride: int
  pad: int
  groups: int
  init_std: float
  init_bias: float

  @nn.compact
  def __call__(self, x):
    in_per_group = x.shape[-1] // self.groups
    kernel = self.param(
        'kernel', nn.initializers.normal(self.init_std),
        (self.kernel_size, self.kernel_size, in_per_group, self.features))
    bias = self.param('bias', nn.initializers.constant(self.init_bias),
                      (self.features,))
    y = grouped_conv2d(x, kernel, self.stride, self.pad, self.groups) + bias
    return jax.nn.relu(y)


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

    def record(name, value):
      if name == self.stop_gradient_after:
        value = jax.lax.stop_gradient(value)
      out[name] = value
      return value

    def conv(name, x):
      channels, ksize, stride, pad, groups, std, bias = _CONV_SPECS[name]
      return CaffeConv(scaled_channels(channels, self.width, groups > 1),
                       ksize, stride, pad, groups, std, bias, name=name)(x)

    x = record('conv1', conv('conv1', images))              # [B, 55, 55, 96]
    x = record('pool1', max_pool_ceil(x))                   # [B, 27, 27, 96]
    x = record('norm1', local_response_norm(x))
    x = record('conv2', conv('conv2', x))                   # [B, 27, 27, 256]
    x = record('pool2', max_pool_ceil(x))                   # [B, 13, 13, 256]
    x = record('norm2', local_response_norm(x))
    x = record('conv3', conv('conv3', x))                   # [B, 13, 13, 384]
    x = record('conv4', conv('conv4', x))                   # [B, 13, 13, 384]
    x = record('conv5', conv('conv5', x))                   # [B, 13, 13, 256]
    x = record('pool5', max_pool_ceil(x))                   # [B, 6, 6, 256]
    x = caffe_flatten(x)                                    # [B, 9216]
    for name in ('fc6', 'fc7'):
      features, std, bias = _FC_SPECS[name]
      x = CaffeDense(scaled_channels(features, self.width, False), std, bias,
                     name=name)(x)
      x = record(name, jax.nn.relu(x))                      # [B, 4096]
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = CaffeDense(self.num_classes, _FC8_STD, 0.0, name='fc8')(x)
    record('fc8', logits)                                   # [B, num_classes]
    return logits, out


def init_params(model: CaffeNet, rng, image_size: int = 227):
  """Caffe-initialised parameters for `model` (shapes from a 1-image trace)."""
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.jit(model.init)(rng, dummy)['params']


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
