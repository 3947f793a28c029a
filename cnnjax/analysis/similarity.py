"""Representation similarity: linear CKA (Kornblith et al. 2019).

Linear CKA between two representations X [N, D1], Y [N, D2] of the same
examples is HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)) with linear kernels.
It compares layers of different widths, is invariant to orthogonal
transforms and isotropic scaling of either side, and is 1 for X = Y; here
it answers "how much did finetuning change layer l" (pretrained vs FT
layer by layer) and "which layers of two nets correspond".

The core quantity sum_ij <x_i, x_j><y_i, y_j> is computed either in feature
space (||X^T Y||_F^2, a [D1, D2] intermediate) or in example space (the
Gram matrices, [N, N]), whichever intermediate is smaller: pool1 (69,984
values) against fc7 on 5K boxes uses Grams, fc6 against fc7 on 15K boxes
uses features.

Two estimators: the biased HSIC of Kornblith et al. (centred features), and
the unbiased HSIC_1 of Song et al. (2012), whose sums over minibatches give
the minibatch CKA of Nguyen et al. (2021): stream batches through
`cka_statistics`, add, then `cka_from_statistics`.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.analysis import entropy


def _flat(x):
  """[N, ...] -> [N, D] float32 (the order of features does not matter)."""
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(x.shape[0], -1)


def _matmul(a, b):
  # Full float32 products: GPUs would otherwise default to TF32 matmuls,
  # whose 10-bit mantissa visibly moves CKA values.
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _gram_product_sum(x, y):
  """sum_ij <x_i, x_j> <y_i, y_j> = ||X^T Y||_F^2 = <X X^T, Y Y^T>."""
  n, dx = x.shape
  dy = y.shape[1]
  if dx * dy <= n * n:
    return jnp.sum(jnp.square(_matmul(x.T, y)))             # [Dx, Dy]
  return jnp.sum(_matmul(x, x.T) * _matmul(y, y.T))         # [N, N]


def _hsic_kernel(x, y, unbiased: bool):
  x, y = _flat(x), _flat(y)
  # Both estimators are invariant to translating the features; centring
  # first avoids float32 cancellation between large uncentred terms.
  x = x - x.mean(axis=0)
  y = y - y.mean(axis=0)
  n = x.shape[0]
  if not unbiased:
    return _gram_product_sum(x, y) / (n - 1) ** 2
  x_sq = jnp.sum(x * x, axis=1)                              # diag(K), [N]
  y_sq = jnp.sum(y * y, axis=1)                              # diag(L), [N]
  trace = _gram_product_sum(x, y) - jnp.dot(x_sq, y_sq)      # tr(K~ L~)
  k_rows = _matmul(x, x.sum(axis=0)) - x_sq                  # K~ 1, [N]
  l_rows = _matmul(y, y.sum(axis=0)) - y_sq                  # L~ 1, [N]
  return (trace + k_rows.sum() * l_rows.sum() / ((n - 1) * (n - 2))
          - 2.0 / (n - 2) * jnp.dot(k_rows, l_rows)) / (n * (n - 3))


@functools.partial(jax.jit, static_argnames=('unbiased',))
def hsic(x, y, unbiased: bool = False):
  """Linear-kernel HSIC between two representations of the same examples.

  Args:
    x: [N, ...] features (flattened to [N, D1]).
    y: [N, ...] features (flattened to [N, D2]).
    unbiased: Song et al.'s unbiased HSIC_1 (needs N >= 4) instead of the
      biased tr(KHLH) / (N - 1)^2.

  Returns:
    Scalar float32. Inputs may be sharded over devices on the example axis.
  """
  kernel = functools.partial(_hsic_kernel, unbiased=unbiased)
  return entropy.with_auto_axes(kernel, x, y)


def linear_cka(x, y, unbiased: bool = False):
  """Linear CKA of two representations of the same N examples, in [0, 1].

  Args:
    x: [N, ...] and y: [N, ...] features.
    unbiased: use the unbiased HSIC estimator (Nguyen et al. 2021).

  Returns:
    Scalar float32 (NaN if either side is constant over the examples).
  """
  return hsic(x, y, unbiased) / jnp.sqrt(hsic(x, x, unbiased) *
                                         hsic(y, y, unbiased))


@jax.jit
def cka_statistics(x, y):
  """Unbiased HSIC (xy, xx, yy) of one minibatch, [3]; sums over batches.

  Minibatch CKA (Nguyen et al. 2021) is `cka_from_statistics` of the sum:
  it streams a set of any size at the memory of one batch (N >= 4).
  """
  return jnp.stack([hsic(x, y, True), hsic(x, x, True), hsic(y, y, True)])


def cka_from_statistics(statistics):
  """CKA from summed `cka_statistics`: xy / sqrt(xx * yy)."""
  statistics = jnp.asarray(statistics)
  return statistics[0] / jnp.sqrt(statistics[1] * statistics[2])


def cka_matrix(feats_a: Mapping[str, np.ndarray],
               feats_b: Mapping[str, np.ndarray],
               unbiased: bool = False) -> np.ndarray:
  """Layer-by-layer linear CKA between two nets on the same examples.

  Args:
    feats_a: layer name -> [N, ...] features of net A (e.g. pretrained).
    feats_b: layer name -> [N, ...] features of net B (e.g. finetuned).
    unbiased: use the unbiased HSIC estimator.

  Returns:
    [len(feats_a), len(feats_b)] float64; rows follow feats_a's key order,
    columns feats_b's.

  Raises:
    ValueError: layers with different numbers of examples.
  """
  sizes = {name: np.shape(v)[0] for name, v in
           list(feats_a.items()) + list(feats_b.items())}
  if len(set(sizes.values())) > 1:
    raise ValueError('every layer needs the same examples; row counts: '
                     f'{sizes}')
  self_a = {name: float(hsic(v, v, unbiased)) for name, v in feats_a.items()}
  self_b = {name: float(hsic(v, v, unbiased)) for name, v in feats_b.items()}
  matrix = np.zeros((len(feats_a), len(feats_b)))
  for i, (name_a, x) in enumerate(feats_a.items()):
    for j, (name_b, y) in enumerate(feats_b.items()):
      matrix[i, j] = float(hsic(x, y, unbiased)) / np.sqrt(
          self_a[name_a] * self_b[name_b])
  return matrix
