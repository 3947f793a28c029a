"""Entropy curves, AuE and MCAuE against numpy loops of SPEC 6."""

import math

import jax
import numpy as np
import pytest

from cnnjax.analysis import entropy
from cnnjax.features import store as store_lib


def loop_entropy_curves(acts, labels, num_classes, method, thresholds):
  """SPEC 6 literally: per filter and threshold, histogram and entropy."""
  acts = np.asarray(acts, np.float32)
  if acts.ndim == 2:
    acts = acts[:, None, None, :]
  n, h, w, f = acts.shape
  curves = np.zeros((f, thresholds.shape[1]))
  for k in range(f):
    maps = acts[..., k].reshape(n, h * w)
    if method == 'spmax':
      scores, sample_labels = maps.max(axis=1), labels
    else:
      scores, sample_labels = maps.reshape(-1), np.repeat(labels, h * w)
    for j, t in enumerate(thresholds[k]):
      keep = scores >= t
      weights = scores[keep] if method == 'weighted' else None
      hist = np.bincount(sample_labels[keep], weights=weights,
                         minlength=num_classes).astype(np.float64)
      if hist.sum() <= 0:
        continue                                  # empty set: entropy 0
      p = hist[hist > 0] / hist.sum()
      curves[k, j] = -(p * np.log2(p)).sum()
  return curves


def quantised_acts(rng, shape, zero_filter=None):
  """Post-ReLU-like values on a 1/8 grid: many ties, exact thresholds."""
  acts = np.maximum(rng.integers(-12, 41, size=shape), 0) / 8.0
  acts = acts.astype(np.float32)
  if zero_filter is not None:
    acts[..., zero_filter] = 0.0
  return acts


@pytest.mark.parametrize('method', entropy.METHODS)
def test_entropy_curves_match_loop_with_ties_and_zero_filter(method):
  rng = np.random.default_rng(0)
  acts = quantised_acts(rng, (24, 3, 3, 5), zero_filter=2)
  acts[:, :, :, 3] = np.maximum(acts[:, :, :, 3], 5.0)    # a filter min=max=5
  labels = rng.integers(0, 4, 24)
  labels[0] = 3
  # Every filter's range is [0, 5] or constant, so a 41-point grid lands on
  # the 1/8 lattice exactly: equality ties are exercised at every threshold.
  got = entropy.entropy_curves(acts, labels, 4, method, num_thresholds=41)
  lo, hi = entropy.score_range(acts, method)
  ref_thresholds = np.stack([np.linspace(a, b, 41) for a, b in zip(lo, hi)])
  want = loop_entropy_curves(acts, labels, 4, method, ref_thresholds)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)
  assert np.all(np.asarray(got)[2] == 0.0) or method != 'weighted'


def test_statistics_match_loop_counts_on_continuous_data_in_chunks():
  rng = np.random.default_rng(1)
  acts = np.maximum(rng.normal(size=(37, 4, 4, 6)), 0).astype(np.float32)
  labels = rng.integers(0, 5, 37)
  for method in entropy.METHODS:
    # 2 rows per chunk: 19 chunks, the last one padded.
    grid, stats = entropy.threshold_statistics(
        acts, labels, 5, method, num_thresholds=30, chunk_elements=2 * 96)
    if method == 'weighted':              # a given grid: the label one
      label_grid, _ = entropy.threshold_statistics(acts, labels, 5, 'label',
                                                   num_thresholds=30)
      np.testing.assert_array_equal(label_grid, grid)
      _, given = entropy.threshold_statistics(
          acts, labels, 5, method, thresholds=label_grid,
          chunk_elements=2 * 96)
      np.testing.assert_array_equal(given, stats)
    scores = acts.reshape(37, 16, 6)
    if method == 'spmax':
      scores = scores.max(axis=1, keepdims=True)
    want = np.zeros_like(stats)
    for f in range(6):
      s = scores[..., f]                                     # [N, S]
      for j, t in enumerate(grid[f]):
        for c in range(5):
          hit = (s >= t) & (labels[:, None] == c)
          want[f, j, c] = s[hit].sum() if method == 'weighted' else hit.sum()
    np.testing.assert_allclose(stats, want, rtol=1e-5, atol=1e-4)
    if method != 'weighted':
      assert np.array_equal(stats, want)


def test_float16_host_blocks_equal_float32():
  # Float16 blocks go through the staged XLA kernels (spatial max included),
  # float32 ones partly through numpy: values on a 1/8 grid are exact in
  # both, so the curves must agree exactly (8 chunks, the last one padded).
  rng = np.random.default_rng(6)
  acts = quantised_acts(rng, (29, 3, 3, 5), zero_filter=4)
  labels = rng.integers(0, 4, 29)
  for method in entropy.METHODS:
    want = entropy.entropy_curves(acts, labels, 4, method, 25)
    got = entropy.entropy_curves(acts.astype(np.float16), labels, 4, method,
                                 25, chunk_elements=4 * 45)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(
      entropy.spatial_max(acts.astype(np.float16), chunk_elements=3 * 45),
      acts.max(axis=(1, 2)))


def test_linear_thresholds_are_linspace_with_exact_ends():
  lo = np.array([0.0, 0.1, 3.0, -1.5], np.float32)
  hi = np.array([7.3, 0.7, 3.0, 2.25], np.float32)
  grid = entropy.linear_thresholds(lo, hi, 100)
  want = np.stack([np.linspace(a, b, 100) for a, b in zip(lo, hi)])
  np.testing.assert_allclose(grid, want, rtol=1e-6, atol=1e-6)
  assert np.array_equal(grid[:, 0], lo) and np.array_equal(grid[:, -1], hi)


def test_equally_spaced_search_equals_binary_search():
  rng = np.random.default_rng(2)
  acts = (rng.gamma(0.7, size=(50, 3, 3, 7)) * 13.0).astype(np.float32)
  acts[acts < 2.0] = 0.0
  labels = rng.integers(0, 3, 50)
  lo, hi = entropy.score_range(acts, 'label')
  grid = entropy.linear_thresholds(lo, hi, 100)
  assert entropy.grid_search_is_exact(lo, hi, 100)
  fast = entropy.entropy_statistics(acts, labels, grid, 3, 'label',
                                    equally_spaced=True)
  exact = entropy.entropy_statistics(acts, labels, grid, 3, 'label')
  assert np.array_equal(np.asarray(fast), np.asarray(exact))
  # A range tiny next to the magnitude defeats the arithmetic guess.
  assert not entropy.grid_search_is_exact([1000.0], [1000.001], 100)


def test_rank_thresholds_match_loop():
  rng = np.random.default_rng(3)
  acts = quantised_acts(rng, (20, 2, 2, 4), zero_filter=1)
  acts[..., 3] -= 2.0                        # negative scores sort too
  labels = rng.integers(0, 3, 20)
  grid = entropy.rank_thresholds(acts, 'label', 7, filter_chunk=3)
  for f in range(4):
    ordered = np.sort(acts[..., f].reshape(-1))
    ranks = [math.floor(j * 79 / 6 + 0.5) for j in range(7)]
    np.testing.assert_array_equal(grid[f], ordered[ranks])
  got = entropy.entropy_curves(acts, labels, 3, 'label', 7, 'rank')
  want = loop_entropy_curves(acts, labels, 3, 'label', grid)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_empty_threshold_sets_and_zero_weight_give_zero():
  acts = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]], np.float32)  # [N, F]
  labels = np.array([0, 1, 1])
  grid = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]], np.float32)
  for method in ('label', 'weighted'):
    stats = entropy.entropy_statistics(acts, labels, grid, 2, method)
    curves = np.asarray(entropy.entropy_from_statistics(stats))
    want = loop_entropy_curves(acts, labels, 2, method, grid)
    np.testing.assert_allclose(curves, want, atol=1e-6)
    assert curves[1, 2] == 0.0                    # nothing scores >= 4
  weighted = np.asarray(entropy.entropy_from_statistics(
      entropy.entropy_statistics(acts, labels, grid, 2, 'weighted')))
  assert np.all(weighted[0] == 0.0)               # all-zero filter: no weight
  label = np.asarray(entropy.entropy_from_statistics(
      entropy.entropy_statistics(acts, labels, grid, 2, 'label')))
  np.testing.assert_allclose(label[0, 0], -(1 / 3 * math.log2(1 / 3)
                                            + 2 / 3 * math.log2(2 / 3)))
  assert np.all(label[0, 1:] == 0.0)              # zeros never reach 1 or 2


def test_hand_worked_curve_aue_mcaue_and_percent_decrease():
  acts = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)  # [N, F=1]
  labels = np.array([0, 0, 1, 1])
  label_curve = np.asarray(entropy.entropy_curves(acts, labels, 2, 'label', 4))
  h13 = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))  # 0.918296
  np.testing.assert_allclose(label_curve, [[1.0, h13, 0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(entropy.aue(label_curve), [(1 + h13) / 4],
                             atol=1e-6)
  weighted = np.asarray(entropy.entropy_curves(acts, labels, 2, 'weighted', 4))
  h16 = -(1 / 6 * math.log2(1 / 6) + 5 / 6 * math.log2(5 / 6))  # 0.650022
  np.testing.assert_allclose(weighted, [[h16, h16, 0.0, 0.0]], atol=1e-6)

  cumulative = entropy.mcaue(np.array([0.5, 0.2, 0.9, 0.4]))
  np.testing.assert_allclose(cumulative, [0.2, 0.3, 1.1 / 3, 0.5], atol=1e-6)
  # F = 4: 0.1 -> ceil(0.4) = 1 filter, 0.25 -> 1, 0.5 -> 2, 1.0 -> 4.
  np.testing.assert_allclose(entropy.mcaue_at(cumulative), [0.2, 0.2, 0.3, 0.5],
                             atol=1e-6)
  np.testing.assert_allclose(
      entropy.percent_decrease(np.array([0.5, 2.0]), np.array([0.45, 2.5])),
      [10.0, -25.0], atol=1e-4)
  summary = entropy.layer_summary(acts, labels, 2, num_thresholds=4)
  np.testing.assert_allclose(summary['label']['aue'], [(1 + h13) / 4],
                             atol=1e-6)
  np.testing.assert_allclose(summary['weighted']['aue'], [h16 / 2], atol=1e-6)
  np.testing.assert_allclose(summary['spmax']['table'],
                             [(1 + h13) / 4] * 4, atol=1e-6)
  fractions, curve = entropy.mcaue_curve(entropy.mcaue(np.arange(96.0)))
  assert fractions.shape == (30,) and fractions[-1] == 1.0
  # k/30 of 96 filters: ceil(3.2 k); k = 10 -> exactly 32, mean of 0..31.
  np.testing.assert_allclose(curve[9], 15.5)
  np.testing.assert_allclose(curve[0], 1.5)       # 4 filters: mean of 0..3


def test_filters_at_fraction_rule():
  assert entropy.filters_at_fraction(256, 0.1) == 26
  assert entropy.filters_at_fraction(256, 0.25) == 64
  assert entropy.filters_at_fraction(384, 0.1) == 39
  assert entropy.filters_at_fraction(96, 10 / 30) == 32
  assert entropy.filters_at_fraction(5, 0.01) == 1
  with pytest.raises(ValueError, match='fraction'):
    entropy.filters_at_fraction(10, 0.0)


def test_fc_layers_label_equals_spmax_and_bad_inputs_raise():
  rng = np.random.default_rng(4)
  acts = np.maximum(rng.normal(size=(30, 9)), 0).astype(np.float32)
  labels = rng.integers(0, 4, 30)
  np.testing.assert_array_equal(
      entropy.entropy_curves(acts, labels, 4, 'label'),
      entropy.entropy_curves(acts, labels, 4, 'spmax'))
  with pytest.raises(ValueError, match='unknown entropy method'):
    entropy.entropy_curves(acts, labels, 4, 'max')
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\)'):
    entropy.entropy_curves(acts, labels, 3)


def test_streams_a_feature_store_and_its_sharded_arrays(tmp_path):
  assert jax.device_count() == 8
  rng = np.random.default_rng(5)
  acts = quantised_acts(rng, (37, 3, 3, 4))
  labels = rng.integers(0, 3, 37)
  writer = store_lib.FeatureStoreWriter(
      tmp_path, {'pool5': ((3, 3, 4), 'float16')}, num_rows=37, shard_rows=10)
  for k in range(writer.num_shards):
    start, stop = writer.shard_range(k)
    writer.write_shard(k, {'pool5': acts[start:stop]},
                       {'label': labels[start:stop]})
  view = writer.finalize().layer('pool5')
  # Rows padded to 40 on 8 devices, marked by `valid`.
  sharded, valid = view.to_sharded_jax(jax.make_mesh((8,), ('data',)))
  padded_labels = np.pad(labels, (0, 3))
  for method in entropy.METHODS:
    want = entropy.entropy_curves(acts, labels, 3, method, 20)
    streamed = entropy.entropy_curves(view, labels, 3, method, 20,
                                      chunk_elements=5 * 36)
    whole = entropy.entropy_curves(view, labels, 3, method, 20)
    on_devices = entropy.entropy_curves(sharded, padded_labels, 3, method, 20,
                                        valid=valid)
    for got in (streamed, whole, on_devices):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
