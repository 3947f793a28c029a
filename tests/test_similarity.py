"""Linear CKA against numpy formulas and its known invariances."""

import jax
import numpy as np
import pytest

from cnnjax.analysis import similarity


def numpy_cka(x, y):
  """Kornblith et al. 2019, eq. for linear CKA via centred Gram matrices."""
  x = x.reshape(len(x), -1).astype(np.float64)
  y = y.reshape(len(y), -1).astype(np.float64)
  n = len(x)
  h = np.eye(n) - np.ones((n, n)) / n
  k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
  return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def numpy_hsic1(x, y):
  """Song et al. 2012 unbiased HSIC, written with explicit Gram matrices."""
  x = x.reshape(len(x), -1).astype(np.float64)
  y = y.reshape(len(y), -1).astype(np.float64)
  n = len(x)
  k, l = x @ x.T, y @ y.T
  np.fill_diagonal(k, 0.0)
  np.fill_diagonal(l, 0.0)
  one = np.ones(n)
  return (np.trace(k @ l)
          + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
          - 2.0 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


@pytest.mark.parametrize('n,dx,dy', [(12, 40, 30),    # Gram-space branch
                                     (60, 5, 7)])     # feature-space branch
def test_linear_cka_matches_numpy_in_both_branches(n, dx, dy):
  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(n, dx)) + 0.5, 0).astype(np.float32)
  y = (x[:, :min(dx, dy)] @ rng.normal(size=(min(dx, dy), dy))
       + rng.normal(size=(n, dy))).astype(np.float32)
  np.testing.assert_allclose(float(similarity.linear_cka(x, y)),
                             numpy_cka(x, y), rtol=1e-4)
  unbiased = (numpy_hsic1(x, y) /
              np.sqrt(numpy_hsic1(x, x) * numpy_hsic1(y, y)))
  np.testing.assert_allclose(float(similarity.linear_cka(x, y, True)),
                             unbiased, rtol=1e-3)
  np.testing.assert_allclose(float(similarity.hsic(x, y, True)),
                             numpy_hsic1(x, y), rtol=1e-3)


def test_cka_invariances_and_identity():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(30, 8)).astype(np.float32) + 4.0
  y = np.tanh(x @ rng.normal(size=(8, 6))).astype(np.float32)
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  base = float(similarity.linear_cka(x, y))
  np.testing.assert_allclose(float(similarity.linear_cka(x, x)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      float(similarity.linear_cka((x @ q).astype(np.float32), y)), base,
      rtol=1e-4)
  np.testing.assert_allclose(float(similarity.linear_cka(x * 37.0, y * 0.01)),
                             base, rtol=1e-4)
  anisotropic = (x * np.linspace(0.1, 10, 8)).astype(np.float32)
  assert abs(float(similarity.linear_cka(anisotropic, y)) - base) > 1e-3


def test_minibatch_statistics_sum_to_loop_reference():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 9)).astype(np.float32)
  y = (x @ rng.normal(size=(9, 4)) + rng.normal(size=(40, 4))).astype(
      np.float32)
  total = sum(np.asarray(similarity.cka_statistics(x[i:i + 10], y[i:i + 10]),
                         np.float64) for i in range(0, 40, 10))
  want = [sum(numpy_hsic1(a[i:i + 10], b[i:i + 10]) for i in range(0, 40, 10))
          for a, b in ((x, y), (x, x), (y, y))]
  np.testing.assert_allclose(total, want, rtol=1e-3)
  np.testing.assert_allclose(float(similarity.cka_from_statistics(total)),
                             want[0] / np.sqrt(want[1] * want[2]), rtol=1e-3)


def test_cka_matrix_orders_rows_and_columns_by_keys():
  rng = np.random.default_rng(3)
  a = {'pool5': rng.normal(size=(16, 2, 2, 3)).astype(np.float32),
       'fc7': rng.normal(size=(16, 5)).astype(np.float32)}
  b = {'fc7': a['fc7'] * 2.0, 'pool5': a['pool5'] + 1.0,
       'fc6': rng.normal(size=(16, 4)).astype(np.float32)}
  matrix = similarity.cka_matrix(a, b)
  assert matrix.shape == (2, 3)
  want = np.array([[numpy_cka(x, y) for y in b.values()] for x in a.values()])
  np.testing.assert_allclose(matrix, want, rtol=1e-4)
  np.testing.assert_allclose([matrix[0, 1], matrix[1, 0]], [1.0, 1.0],
                             rtol=1e-5)
  with pytest.raises(ValueError, match='same examples'):
    similarity.cka_matrix(a, {'fc7': np.ones((15, 5), np.float32)})


def test_sharded_rows_match_unsharded():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(40, 6)).astype(np.float32)
  y = (x @ rng.normal(size=(6, 3))).astype(np.float32) + 1.0
  rows = jax.sharding.NamedSharding(jax.make_mesh((8,), ('data',)),
                                    jax.sharding.PartitionSpec('data'))
  # The unbiased estimator runs every term of the biased one and more.
  np.testing.assert_allclose(
      np.asarray(similarity.cka_statistics(jax.device_put(x, rows),
                                           jax.device_put(y, rows))),
      [numpy_hsic1(x, y), numpy_hsic1(x, x), numpy_hsic1(y, y)], rtol=1e-4)
