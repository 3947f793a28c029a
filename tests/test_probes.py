"""The batched SVM solver reaches sklearn's (liblinear's) optimum of SPEC 4."""

import numpy as np
import pytest

from cnnjax import metrics
from cnnjax.analysis import probes

# Every fit below has N <= 256 examples, D = 16 and K = 3 (S * K = 6 for the
# subsets): two compiled solvers for the whole file.
_DIM, _CLASSES, _TIGHT = 16, 3, 1e-4


def _data(rng, num):
  """ReLU features around class centres, 15% label noise, mean norm ~20."""
  centres = np.random.default_rng(99).normal(size=(_CLASSES, _DIM)) * 1.5
  labels = rng.integers(0, _CLASSES, num)
  features = np.maximum(0.0, rng.normal(size=(num, _DIM)) + centres[labels])
  noisy = rng.random(num) < 0.15
  labels[noisy] = rng.integers(0, _CLASSES, noisy.sum())
  targets = np.where(labels[:, None] == np.arange(_CLASSES), 1.0, -1.0)
  return (features * 4.0).astype(np.float32), targets


@pytest.fixture(scope='module')
def train_test():
  rng = np.random.default_rng(0)
  return _data(rng, 240), _data(rng, 300)


def _relative_gap(ours, reference):
  return np.abs(ours - reference) / reference


def test_primal_objective_hand_worked():
  # w = (1, -1), b = 0.5 -> w_B = b / 10 = 0.05.
  # Margins y * (w.x + b): (+1)(2 - 0 + .5) = 2.5 -> hinge 0;
  # (-1)(0 - 1 + .5) = 0.5 -> hinge 0.5; (+1)(0 + .5) = 0.5 -> hinge 0.5.
  # 0.5 * (1 + 1 + 0.0025) + C * (0 + 1 * 0.5 + 2 * 0.5), C = 0.1.
  features = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  targets = np.array([[1.0], [-1.0], [1.0]])
  objective = probes.primal_objective(np.array([[1.0], [-1.0]]),
                                      np.array([0.5]), features, targets,
                                      C=0.1)
  np.testing.assert_allclose(objective, [0.5 * 2.0025 + 0.1 * 1.5])
  masked = probes.primal_objective(
      np.array([[1.0], [-1.0]]), np.array([0.5]), features, targets, C=0.1,
      sample_mask=np.array([[True], [False], [True]]))
  np.testing.assert_allclose(masked, [0.5 * 2.0025 + 0.1 * 1.0])


def test_matches_sklearn_objective_and_ap(train_test):
  (x, y), (test_x, test_y) = train_test
  weights, biases = probes.fit_linear_svm(x, y, tol=_TIGHT)
  sk_weights, sk_biases = probes.fit_linear_svm_sklearn(
      x, y, tol=_TIGHT, max_iter=100_000)
  ours = probes.primal_objective(weights, biases, x, y)
  reference = probes.primal_objective(sk_weights, sk_biases, x, y)
  assert np.all(_relative_gap(ours, reference) < 1e-3), (ours, reference)
  labels = test_y.astype(np.int8)
  ap, _ = metrics.cls_map(np.asarray(probes.predict(weights, biases, test_x)),
                          labels)
  sk_ap, _ = metrics.cls_map(test_x @ sk_weights + sk_biases, labels)
  np.testing.assert_allclose(ap, sk_ap, atol=0.005)
  assert np.all(ap > 0.6)
  # R-CNN's tolerance 0.1 stops early but close to the optimum.
  loose = probes.primal_objective(*probes.fit_linear_svm(x, y), x, y)
  assert np.all(loose >= reference * (1 - 1e-3))
  assert np.all(_relative_gap(loose, reference) < 0.05)


def test_sample_mask_trains_each_problem_on_its_rows(train_test):
  (x, y), _ = train_test
  mask = np.random.default_rng(1).random(y.shape) < 0.7
  weights, biases = probes.fit_linear_svm(x, y, tol=_TIGHT, sample_mask=mask)
  sk_weights, sk_biases = probes.fit_linear_svm_sklearn(
      x, y, tol=_TIGHT, max_iter=100_000, sample_mask=mask)
  ours = probes.primal_objective(weights, biases, x, y, sample_mask=mask)
  reference = probes.primal_objective(sk_weights, sk_biases, x, y,
                                      sample_mask=mask)
  assert np.all(_relative_gap(ours, reference) < 1e-3)
  # Left-out rows change the solution: the full-data optimum is worse here.
  full = probes.fit_linear_svm_sklearn(x, y, tol=_TIGHT, max_iter=100_000)
  assert np.all(probes.primal_objective(*full, x, y, sample_mask=mask) >
                reference * (1 + 1e-3))


def test_feature_subsets_match_sklearn_on_the_columns(train_test):
  (x, y), _ = train_test
  rng = np.random.default_rng(2)
  shared = np.zeros((2, _DIM), bool)           # [S, D]: same for every class.
  shared[0, :4] = True
  shared[1, ::2] = True
  per_class = rng.random((2, _DIM, _CLASSES)) < 0.4   # [S, D, K].
  for masks in (shared, per_class):
    weights, biases = probes.fit_linear_svm_subsets(x, y, masks, tol=_TIGHT)
    weights, biases = np.asarray(weights), np.asarray(biases)
    assert weights.shape == (2, _DIM, _CLASSES)
    assert biases.shape == (2, _CLASSES)
    for s in range(2):
      mask = masks[s] if masks.ndim == 3 else masks[s][:, None]
      mask = np.broadcast_to(mask, (_DIM, _CLASSES))
      assert np.all(weights[s][~mask] == 0.0)
      sk_weights, sk_biases = probes.fit_linear_svm_sklearn(
          x, y, tol=_TIGHT, max_iter=100_000, feature_mask=mask)
      ours = probes.primal_objective(weights[s], biases[s], x, y)
      reference = probes.primal_objective(sk_weights, sk_biases, x, y)
      assert np.all(_relative_gap(ours, reference) < 1e-3), (s, ours,
                                                              reference)


def test_padding_reuses_the_compiled_solver(train_test):
  (x, y), _ = train_test
  probes.fit_linear_svm(x, y)
  compiled = probes._dual_coordinate_descent._cache_size()
  weights, _ = probes.fit_linear_svm(x[:200], y[:200],
                                     sample_mask=y[:200] < 2)
  assert probes._dual_coordinate_descent._cache_size() == compiled
  assert weights.shape == (_DIM, _CLASSES)


def test_predict_and_scale_features():
  rng = np.random.default_rng(3)
  features = rng.random((50, 7)).astype(np.float32)
  weights, biases = rng.normal(size=(7, 2)), rng.normal(size=2)
  np.testing.assert_allclose(probes.predict(weights, biases, features),
                             features @ weights + biases, rtol=1e-5,
                             atol=1e-5)
  scale = probes.scale_features(features)
  norms = np.linalg.norm(features * scale, axis=1)
  assert norms.mean() == pytest.approx(20.0, rel=1e-6)
  # Rows of equal norm 5: any sample gives the factor 4.
  unit = features / np.linalg.norm(features, axis=1, keepdims=True) * 5
  assert probes.scale_features(unit, sample=10) == pytest.approx(4.0)
  # A sample is a subset of rows: its factor lies within the rows' range.
  sampled = probes.scale_features(features, sample=5, seed=1)
  assert 20 / norms.max() * scale <= sampled <= 20 / norms.min() * scale
  assert sampled != scale


def test_warns_without_convergence_and_rejects_bad_targets(train_test):
  (x, y), _ = train_test
  with pytest.warns(RuntimeWarning, match='did not reach tol'):
    probes.fit_linear_svm(x, y, tol=1e-9, max_iter=1)
  with pytest.raises(ValueError, match='-1 or \\+1'):
    probes.fit_linear_svm(x, np.where(y > 0, 1.0, 0.0))
