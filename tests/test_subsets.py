"""Greedy filter subsets (seeds 3.4) against loops and per-problem SVMs."""

import numpy as np
import pytest

from cnnjax import metrics
from cnnjax.analysis import probes
from cnnjax.analysis import subsets

_TIGHT = 1e-4


def test_subset_sizes_clip_to_the_layer():
  np.testing.assert_array_equal(subsets.subset_sizes(256),
                                subsets.SUBSET_SIZES)
  np.testing.assert_array_equal(subsets.subset_sizes(8), [1, 2, 3, 5, 8])
  assert subsets.subset_sizes(384)[-2:].tolist() == [256, 384]


def test_ranking_and_masks_match_loops():
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(9, 4))
  weights[3, 0] = -weights[5, 0]                    # |w| tie: lower index first
  ranking = subsets.rank_filters(weights)
  sizes = np.array([1, 3, 9])
  masks = subsets.subset_masks(ranking, sizes)
  for c in range(4):
    order = sorted(range(9), key=lambda f: (-abs(weights[f, c]), f))
    assert ranking[c].tolist() == order
    for s, k in enumerate(sizes):
      for f in range(9):
        assert masks[s, f, c] == float(f in order[:k])


def test_filters_to_reach_and_overlap_hand_worked():
  ap = np.array([[0.1, 0.3, 0.5, 0.6],
                 [0.7, 0.7, 0.8, 0.8]])
  sizes = np.array([1, 2, 5, 8])
  full = ap[:, -1]
  # 50%: class 0 needs 0.3 -> k = 2; class 1 needs 0.4 -> k = 1.
  np.testing.assert_array_equal(
      subsets.filters_to_reach(ap, full, sizes, 0.5), [2, 1])
  # 90%: class 0 needs 0.54 -> k = 8; class 1 needs 0.72 -> k = 5.
  np.testing.assert_array_equal(
      subsets.filters_to_reach(ap, full, sizes, 0.9), [8, 5])
  np.testing.assert_array_equal(
      subsets.filters_to_reach(ap, [0.9, 0.8], sizes, 0.9), [-1, 5])
  ranking = np.array([[0, 1, 2, 3, 4, 5],
                      [1, 2, 0, 3, 4, 5],
                      [3, 4, 5, 0, 1, 2]])
  np.testing.assert_allclose(subsets.top_overlap(ranking, 2),
                             [[1, .5, 0], [.5, 1, 0], [0, 0, 1]])
  np.testing.assert_allclose(subsets.top_overlap(ranking, 3)[0, 1], 1.0)


def _boxes(rng, num, num_classes=3, num_filters=8):
  """spMax-like features: each class drives two filters of its own."""
  labels = rng.integers(0, num_classes, num)
  drive = np.zeros((num_classes, num_filters))
  for c in range(num_classes):
    drive[c, 2 * c:2 * c + 2] = [1.2, 0.6]
  features = np.maximum(rng.normal(size=(num, num_filters)) + drive[labels], 0)
  return features.astype(np.float32), labels


@pytest.fixture(scope='module')
def experiment():
  rng = np.random.default_rng(1)
  (train, train_labels), (test, test_labels) = _boxes(rng, 150), _boxes(rng, 90)
  result = subsets.greedy_filter_subsets(train, train_labels, test,
                                         test_labels, 3, tol=_TIGHT)
  return result, train, train_labels, test, test_labels


def test_greedy_subsets_match_per_problem_svms(experiment):
  result, train, train_labels, test, test_labels = experiment
  np.testing.assert_array_equal(result['sizes'], [1, 2, 3, 5, 8])
  np.testing.assert_array_equal(result['ranking'],
                                subsets.rank_filters(result['weights']))
  # The filter a class drives hardest is its most important one.
  np.testing.assert_array_equal(result['ranking'][:, 0], [0, 2, 4])
  scale = 20.0 / np.linalg.norm(train.astype(np.float64), axis=1).mean()
  np.testing.assert_allclose(result['scale'], scale, rtol=1e-6)
  for c in range(3):
    targets = np.where(train_labels == c, 1.0, -1.0)[:, None]
    test_targets = np.where(test_labels == c, 1, -1)
    for s, k in enumerate(result['sizes']):
      cols = result['ranking'][c, :k]
      w, b = probes.fit_linear_svm_sklearn(train[:, cols] * scale, targets,
                                           tol=_TIGHT, max_iter=100_000)
      scores = (test[:, cols] * scale) @ w[:, 0] + b[0]
      want = metrics.cls_average_precision(scores, test_targets)
      np.testing.assert_allclose(result['ap'][c, s], want, atol=1e-3,
                                 err_msg=f'class {c}, k={k}')
  np.testing.assert_array_equal(result['full_ap'], result['ap'][:, -1])
  np.testing.assert_array_equal(
      result['reach_90'], subsets.filters_to_reach(
          result['ap'], result['full_ap'], result['sizes'], 0.9))
  assert result['overlap'].shape == (3, 3)
  np.testing.assert_allclose(np.diag(result['overlap']), 1.0)


def test_greedy_subsets_take_spatial_max_of_maps(experiment):
  result, train, train_labels, test, test_labels = experiment
  # Maps whose spatial max is the feature: the same experiment.
  rng = np.random.default_rng(2)
  def as_maps(features):
    maps = features[:, None, None, :] * rng.uniform(0, 1, (1, 2, 2, 1))
    maps[:, 1, 0, :] = features
    return maps.astype(np.float32)
  from_maps = subsets.greedy_filter_subsets(as_maps(train), train_labels,
                                            as_maps(test), test_labels, 3,
                                            tol=_TIGHT)
  np.testing.assert_array_equal(from_maps['ranking'], result['ranking'])
  np.testing.assert_allclose(from_maps['ap'], result['ap'], atol=1e-6)
