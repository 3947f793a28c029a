"""Precision curves, selectivity and per-filter AP against loop references."""

import jax
import numpy as np

from cnnjax import metrics
from cnnjax.analysis import selectivity


def quantised(rng, shape):
  """Post-ReLU-like scores on a coarse grid: many ties, exact thresholds."""
  return (np.maximum(rng.integers(-6, 17, size=shape), 0) / 4.0).astype(
      np.float32)


def test_precision_curves_and_selectivity_match_loop():
  rng = np.random.default_rng(0)
  acts = quantised(rng, (30, 2, 2, 4))
  acts[..., 1] = 0.0                                   # all-zero filter
  labels = rng.integers(0, 3, 30)
  for method in ('spmax', 'label'):
    grid, precision, samples = selectivity.precision_curves(
        acts, labels, 3, method, num_thresholds=17)
    scores = acts.reshape(30, 4, 4)
    if method == 'spmax':
      scores = scores.max(axis=1, keepdims=True)
    want = np.zeros((4, 17, 3))
    want_samples = np.zeros((4, 17))
    for f in range(4):
      s = scores[..., f]
      for j, t in enumerate(grid[f]):
        above = s >= t
        want_samples[f, j] = above.sum()
        for c in range(3):
          hits = (above & (labels[:, None] == c)).sum()
          want[f, j, c] = hits / above.sum() if above.sum() else 0.0
    np.testing.assert_allclose(np.asarray(precision), want, atol=1e-6)
    np.testing.assert_array_equal(samples, want_samples)
    np.testing.assert_allclose(selectivity.selectivity(precision),
                               want.mean(axis=1), atol=1e-6)
  # The all-zero filter: every threshold is 0, reached by all examples.
  np.testing.assert_allclose(
      np.asarray(precision)[1, 0], np.bincount(labels, minlength=3) / 30,
      atol=1e-6)


def test_top_filters_orders_by_value_with_ties_to_lower_index():
  values = np.array([[0.1, 0.9], [0.5, 0.2], [0.5, 0.9], [0.3, 0.0]])
  np.testing.assert_array_equal(selectivity.top_filters(values, 3),
                                [[1, 2, 3], [0, 2, 1]])
  rng = np.random.default_rng(1)
  values = rng.integers(0, 4, size=(12, 5)).astype(np.float32)
  want = np.argsort(-values, axis=0, kind='stable')[:5].T
  np.testing.assert_array_equal(selectivity.top_filters(values), want)


def test_recall_count_table_matches_brute_force_devkit_comparison():
  table = selectivity.recall_count_table(40)
  for npos in range(1, 41):
    for k, level in enumerate(metrics.RECALL_LEVELS):
      need = next(m for m in range(npos + 1) if m / npos >= level)
      assert table[k, npos] == need, (k, npos)
  assert table[3, 10] == 4                 # 3/10 < 0.30000000000000004
  assert table[6, 10] == 6                 # 1 - 0.4 == 0.6 exactly
  assert np.all(table[:, 0] == 41)         # no positives: unreachable


def devkit_ap(scores, labels, num_classes):
  """Per filter and class, VOCevalcls' AP (the numpy devkit transcription)."""
  return np.array([[metrics.cls_average_precision(scores[:, f],
                                                  np.where(labels == c, 1, -1))
                    for c in range(num_classes)]
                   for f in range(scores.shape[1])])


def test_filter_average_precision_matches_devkit_reference():
  rng = np.random.default_rng(2)
  acts = quantised(rng, (40, 2, 3, 7))
  acts[..., 4] = 0.0                       # all ties: ranking is example order
  acts[..., 5] -= 2.0                      # negative scores rank below zero
  acts[::3, :, :, 6] = -0.0                # -0.0 ties with 0.0, as floats do
  labels = rng.integers(0, 4, 40)
  labels[labels == 3] = 0                  # class 3 has no positive
  labels[:10] = np.tile([0, 1, 2, 1, 1], 2)
  # 4 filters per chunk: two chunks, the second one short.
  ap = selectivity.filter_average_precision(acts, labels, 4,
                                            chunk_elements=4 * 40)
  scores = acts.max(axis=(1, 2))
  assert np.any(np.signbit(scores[:, 6]) & (scores[:, 6] == 0))
  want = devkit_ap(scores, labels, 4)
  np.testing.assert_allclose(ap, want, atol=1e-6)
  assert ap.shape == (7, 4) and np.all(ap[:, 3] == 0.0)
  # Rows sharded over the 8 devices: the same ranking, the same AP.
  rows = jax.sharding.NamedSharding(jax.make_mesh((8,), ('data',)),
                                    jax.sharding.PartitionSpec('data'))
  np.testing.assert_array_equal(
      selectivity.filter_average_precision(jax.device_put(scores, rows),
                                           jax.device_put(labels, rows), 4),
      ap)


def test_filter_average_precision_on_continuous_scores_and_one_class():
  rng = np.random.default_rng(4)
  scores = rng.normal(size=(300, 5)).astype(np.float32)
  labels = rng.integers(0, 6, 300)
  labels[labels == 5] = 2                  # 5 classes used, 6 declared
  np.testing.assert_allclose(
      selectivity.filter_average_precision(scores, labels, 6),
      devkit_ap(scores, labels, 6), atol=1e-6)
  # A single positive: AP is the precision at its rank, at every level.
  labels = np.zeros(300, int)
  labels[17] = 1
  ap = selectivity.filter_average_precision(scores, labels, 2)
  rank = 1 + np.sum(scores > scores[17], axis=0)
  np.testing.assert_allclose(ap[:, 1], 1 / rank, atol=1e-6)


def test_pr_curves_match_loop():
  rng = np.random.default_rng(3)
  scores = quantised(rng, (25, 5))
  labels = rng.integers(0, 3, 25)
  ap = selectivity.filter_average_precision(scores, labels, 3)
  chosen = np.asarray(selectivity.top_filters(ap, 2))             # [3, 2]
  precision, recall = selectivity.pr_curves(scores, labels, chosen, 3)
  for c in range(3):
    for j, f in enumerate(chosen[c]):
      order = np.argsort(-scores[:, f], kind='stable')
      tp = np.cumsum(labels[order] == c)
      np.testing.assert_allclose(precision[c, j], tp / np.arange(1, 26),
                                 atol=1e-6)
      np.testing.assert_allclose(recall[c, j], tp / np.sum(labels == c),
                                 atol=1e-6)

