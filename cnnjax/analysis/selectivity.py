"""Grandmother cells: per-filter precision curves and AP (seeds chapter 3).

Two questions of SPEC 6 about single pool5 filters:

- Precision (fig 3-1): for class c, P(c | score >= t) as t sweeps the
  filter's thresholds; its area (the mean over the grid, as AuE) is the
  filter's selectivity for c. It is computed from the same [F, T, C]
  threshold statistics as the entropy (`entropy.threshold_statistics`), so
  it streams and shards the same way. Default sample set: 'spmax', one
  score per example (the figure counts examples, and section 3.3 scores
  examples by their spatial max too); 'label' and 'weighted' are one
  argument away.
- AP (fig 3-2): the filter's spatial-max response is the score of every GT
  box for class c; 11-point VOC AP of that ranking, for every filter and
  class at once ([F, C]), and the PR curves of the best filters per class.
  Rankings are sorts of [N, F] scores, done on the host in numpy (whose
  SIMD sorts beat XLA:CPU's by ~15x); O(F N log N).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import metrics
from cnnjax.analysis import entropy

TOP_FILTERS = 5                                   # seeds figs 3-1 and 3-2


@jax.jit
def precision_from_statistics(statistics):
  """[F, T, C] threshold statistics -> precision P(c | score >= t), [F, T, C].

  A threshold no sample reaches (or with zero total weight) has precision 0.
  """
  counts = jnp.asarray(statistics, jnp.float32)
  total = counts.sum(axis=-1, keepdims=True)                 # [F, T, 1]
  return jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), 0.0)


@jax.jit
def selectivity(precision):
  """Area under each precision curve, threshold axis scaled to [0, 1].

  [F, T, C] -> [F, C], the mean over the threshold grid.
  """
  return jnp.mean(jnp.asarray(precision, jnp.float32), axis=1)


def precision_curves(acts, labels, num_classes: int, method: str = 'spmax',
                     num_thresholds: int = 100, thresholds: str = 'linear',
                     valid=None,
                     chunk_elements: int = entropy.DEFAULT_CHUNK_ELEMENTS):
  """Precision curves of every filter for every class (fig 3-1).

  Args: as `entropy.threshold_statistics` (default method 'spmax').

  Returns:
    (thresholds [F, T] float32, precision [F, T, C] float32, samples [F, T]
    float64: how many samples (examples for 'spmax') reach each threshold,
    the x-axis of the seeds' figure).
  """
  grid, statistics = entropy.threshold_statistics(
      acts, labels, num_classes, method, num_thresholds, thresholds, valid,
      chunk_elements)
  return grid, precision_from_statistics(statistics), statistics.sum(-1)


@functools.partial(jax.jit, static_argnames=('k',))
def top_filters(values, k: int = TOP_FILTERS):
  """The k highest-valued filters per class, best first.

  Args:
    values: [F, C] (selectivity or AP).
    k: how many (clipped to F).

  Returns:
    [C, k] int32 filter indices; ties go to the lower filter index.
  """
  values = jnp.asarray(values, jnp.float32)
  return jax.lax.top_k(values.T, min(k, values.shape[0]))[1]


def recall_count_table(max_positives: int) -> np.ndarray:
  """Smallest true-positive count m with m / npos >= t, per recall point.

  The devkit compares float64 recall with MATLAB's float64 levels 0:0.1:1
  (`metrics.RECALL_LEVELS`: 3/10 does not reach 0.30000000000000004);
  tabulating the integer count reproduces that comparison exactly inside a
  float32 kernel.

  Returns:
    [11, max_positives + 1] int32, column npos; npos = 0 gets
    max_positives + 1 (no rank reaches it: the AP of a class without
    positives is 0).
  """
  npos = np.arange(max_positives + 1, dtype=np.float64)[None]      # [1, P+1]
  points = metrics.RECALL_LEVELS[:, None]                          # [11, 1]
  with np.errstate(divide='ignore', invalid='ignore'):
    need = np.ceil(points * npos)
    need = np.where((need - 1) / npos >= points, need - 1, need)
    need = np.where(need / npos < points, need + 1, need)
  need[:, 0] = max_positives + 1
  return need.astype(np.int32)


def rankings(scores) -> np.ndarray:
  """Example indices by score descending, ties in example order, per filter.

  The devkit ranks with MATLAB's stable `sort(-score)`. A stable argsort of
  floats is the slow kind of sort; instead each example gets one int64 key,
  (order-preserving image of -score) * 2^32 + index, and a plain sort of the
  keys (vectorised: SIMD sorting networks in numpy, ~10x faster than a
  stable argsort, and ~15x faster than XLA:CPU's sort) yields the ranking in
  the low 32 bits. -0.0 ties with 0.0, as in the float comparison.

  Args:
    scores: [N, f] float32 responses.

  Returns:
    [f, N] int64: row j lists the examples from best to worst on filter j.
  """
  scores = np.asarray(scores, np.float32) + np.float32(0.0)  # -0.0 -> 0.0
  bits = scores.T.view(np.int32)                             # [f, N]
  ascending = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)
  keys = (~ascending).astype(np.int64) << 32                 # descending
  keys |= np.arange(scores.shape[0], dtype=np.int64)
  keys.sort(axis=-1)
  return keys & np.int64(0xFFFFFFFF)


def _class_segments(labels, num_classes: int):
  """Examples grouped by class: per class its first slot and its size, and
  per slot the rank of the class's positive it holds (1-based)."""
  positives = np.bincount(labels, minlength=num_classes)     # [C]
  start = np.cumsum(positives) - positives                   # [C]
  count = np.arange(1, labels.shape[0] + 1) - np.repeat(start, positives)
  return positives, start, count                             # [C], [C], [N]


def _filters_ap(scores, labels, positives, start, count, need, reachable):
  """11-point AP of a chunk of filters for every class, [f, C] float64.

  Precision only peaks at positives, so each class needs the ranks of its
  own examples, not an [N, C] table: sorting the keys class * N + rank
  lists every class's ranks ascending in its segment; the k-th positive of
  a class at rank r has precision k / r, and "max precision at recall >= t"
  is the max over the class's segment from its m(t)-th positive on.
  """
  num = labels.shape[0]
  ranked_labels = labels[rankings(scores)]                   # [f, N]
  grouped = ranked_labels * num + np.arange(num, dtype=np.int64)
  grouped.sort(axis=-1)
  precision = count / (grouped % num + 1)                    # [f, N]
  ap = np.zeros((scores.shape[1], len(positives)))
  for c in np.flatnonzero(positives):
    segment = precision[:, start[c]:start[c] + positives[c]]  # [f, n_c]
    best_from = np.maximum.accumulate(segment[:, ::-1], axis=1)[:, ::-1]
    levels = np.maximum(need[reachable[:, c], c], 1) - 1    # m(t)-th slot
    ap[:, c] = best_from[:, levels].sum(axis=1) / len(need)
  return ap


def filter_average_precision(scores, labels, num_classes: int,
                             chunk_elements: int = 1 << 21) -> np.ndarray:
  """11-point VOC AP of every filter's response as a classifier of every class.

  As VOCevalcls: examples ranked by score descending (ties keep example
  order, as MATLAB's stable sort), precision tp / rank, recall tp / npos,
  AP = mean over t in 0:0.1:1 of max precision at recall >= t (0 if none).
  Cost: one int64 sort and one of ranks per filter, O(F N log N); runs on
  the host in numpy, whose sorts beat XLA:CPU's several times (the [N, F]
  scores are small; device arrays are fetched).

  Args:
    scores: [N, F] responses (pass pool5 maps [N, H, W, F] to use their
      spatial max, SPEC 6).
    labels: [N] int class of each example (GT box), in [0, num_classes).
    num_classes: C.
    chunk_elements: filters ranked at once x N (bounds memory: a few
      8-byte arrays of that size).

  Returns:
    [F, C] float32.

  Raises:
    ValueError: labels of the wrong shape or outside [0, num_classes).
  """
  scores = _as_scores(scores)                                # [N, F]
  labels = _check_labels(labels, scores.shape[0], num_classes)
  positives, start, count = _class_segments(labels, num_classes)
  need = recall_count_table(scores.shape[0])[:, positives]   # [11, C]
  reachable = need <= positives                              # [11, C]
  chunk = max(1, chunk_elements // max(1, scores.shape[0]))
  return np.concatenate(
      [_filters_ap(scores[:, j:j + chunk], labels, positives, start, count,
                   need, reachable)
       for j in range(0, scores.shape[1], chunk)]).astype(np.float32)


def _as_scores(scores) -> np.ndarray:
  """[N, F] scores as given; [N, H, W, F] maps -> their spatial max."""
  if len(scores.shape) == 4:
    scores = entropy.spatial_max(scores)
  elif len(scores.shape) != 2:
    raise ValueError('expected scores [N, F] or maps [N, H, W, F], got shape '
                     f'{tuple(scores.shape)}')
  return np.asarray(scores, np.float32)


def _check_labels(labels, num_rows: int, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels).astype(np.int64)
  if labels.shape != (num_rows,):
    raise ValueError(f'labels have shape {labels.shape}, expected '
                     f'({num_rows},)')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'labels must lie in [0, {num_classes}), got '
                     f'[{labels.min()}, {labels.max()}]')
  return labels


def pr_curves(scores, labels, filters, num_classes: int):
  """Precision and recall along the ranking of chosen filters (fig 3-2).

  Args:
    scores: [N, F] responses or [N, H, W, F] maps (spatial max taken).
    labels: [N] int classes.
    filters: [C, k] filter indices per class (e.g. `top_filters(ap)`).
    num_classes: C.

  Returns:
    (precision [C, k, N], recall [C, k, N]) float32: entry n is the value
    after the n+1 top-scoring examples (recall 0 for a class without
    positives).
  """
  scores = _as_scores(scores)                                # [N, F]
  labels = _check_labels(labels, scores.shape[0], num_classes)
  filters = np.asarray(filters)                              # [C, k]
  order = rankings(scores[:, filters.reshape(-1)])           # [C*k, N]
  classes = np.arange(filters.shape[0]).repeat(filters.shape[1])
  true_pos = np.cumsum(labels[order] == classes[:, None], axis=1)
  npos = np.bincount(labels, minlength=num_classes)[classes][:, None]
  precision = true_pos / np.arange(1, scores.shape[0] + 1)
  recall = np.where(npos > 0, true_pos / np.maximum(npos, 1), 0.0)
  shape = filters.shape + (scores.shape[0],)
  return (precision.reshape(shape).astype(np.float32),
          recall.reshape(shape).astype(np.float32))
