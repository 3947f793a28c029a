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


def _ranking(score):
  """Example indices by score descending, ties in example order (MATLAB's
  stable `sort(-score)`), [N]."""
  return jnp.argsort(score, descending=True, stable=True)


def _segment_suffix_max(values, segments):
  """Max of values[q] over q >= p within p's (contiguous) segment, [N]."""
  def combine(earlier, later):
    (v1, s1), (v2, s2) = earlier, later
    return jnp.where(s1 == s2, jnp.maximum(v1, v2), v2), s2
  flipped, _ = jax.lax.associative_scan(combine, (values[::-1],
                                                  segments[::-1]))
  return flipped[::-1]


def _filter_ap(score, labels, sorted_labels, count, need_index, reachable):
  """11-point AP of one filter's scores for every class, [C].

  Precision only peaks at the ranks of positives, so each class needs the
  ranks of its own examples, not a [N, C] table: grouping the ranked
  labels by class lists every class's ranks ascending; the k-th positive
  of a class at rank r has precision k / r, and "max precision at recall
  >= t" is the suffix max from its m(t)-th positive on.
  """
  num = score.shape[0]
  ranked_labels = labels[_ranking(score)]                    # [N]
  # Ranks grouped by class, ascending: one sort of the int keys
  # class * N + rank (a single-operand int sort is several times faster
  # than a stable argsort on XLA:CPU; callers keep C * N < 2^31).
  ranks = jnp.sort(ranked_labels * num + jnp.arange(num, dtype=jnp.int32)
                   ) % num                                   # [N]
  precision = count / (ranks + 1).astype(jnp.float32)        # [N]
  best_from = _segment_suffix_max(precision, sorted_labels)  # [N]
  return jnp.where(reachable, best_from[need_index], 0.0).mean(axis=0)


def _filter_ap_kernel(scores, labels, table, num_classes: int,
                      filter_chunk: int):
  num = labels.shape[0]
  positives = jnp.bincount(labels, length=num_classes)       # [C]
  start = jnp.cumsum(positives) - positives                  # [C] segments
  sorted_labels = jnp.sort(labels)                           # [N]
  count = (jnp.arange(1, num + 1) - start[sorted_labels]).astype(
      jnp.float32)                                           # k-th of class
  need = table[:, positives]                                 # [11, C]
  reachable = need <= positives                              # [11, C]
  need_index = jnp.clip(start + jnp.maximum(need, 1) - 1, 0, num - 1)
  per_filter = functools.partial(
      _filter_ap, labels=labels, sorted_labels=sorted_labels, count=count,
      need_index=need_index, reachable=reachable)
  return jax.lax.map(per_filter, scores.T, batch_size=filter_chunk)  # [F, C]


@functools.partial(jax.jit, static_argnames=('num_classes', 'filter_chunk'))
def _filter_ap_all(scores, labels, table, num_classes: int,
                   filter_chunk: int):
  # Ranking needs all examples of a filter together: rows sharded over
  # devices are gathered by the compiler.
  kernel = functools.partial(_filter_ap_kernel, num_classes=num_classes,
                             filter_chunk=filter_chunk)
  return entropy.with_auto_axes(kernel, scores, labels, table)


def _as_scores(scores):
  """[N, F] scores as given; [N, H, W, F] maps -> their spatial max."""
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim == 4:
    return scores.max(axis=(1, 2))
  if scores.ndim != 2:
    raise ValueError('expected scores [N, F] or maps [N, H, W, F], got shape '
                     f'{tuple(scores.shape)}')
  return scores


def filter_average_precision(scores, labels, num_classes: int,
                             filter_chunk: int = 64):
  """11-point VOC AP of every filter's response as a classifier of every class.

  As VOCevalcls: examples ranked by score descending (ties keep example
  order, as MATLAB's stable sort), precision tp / rank, recall tp / npos,
  AP = mean over t in 0:0.1:1 of max precision at recall >= t (0 if none).

  Args:
    scores: [N, F] responses (pass pool5 maps [N, H, W, F] to use their
      spatial max, SPEC 6).
    labels: [N] int class of each example (GT box), in [0, num_classes).
    num_classes: C.
    filter_chunk: filters ranked at once (memory: a few filter_chunk x N).

  Returns:
    [F, C] float32.
  """
  scores = _as_scores(scores)                                # [N, F]
  labels = jnp.asarray(labels, jnp.int32)
  if num_classes * scores.shape[0] >= 2**31:
    raise ValueError(f'{scores.shape[0]} examples x {num_classes} classes '
                     'overflow the int32 sort keys')
  table = jnp.asarray(recall_count_table(scores.shape[0]))
  return _filter_ap_all(scores, labels, table, num_classes,
                        min(filter_chunk, scores.shape[1]))


def _pr_curves_kernel(scores, labels, filters, num_classes: int):
  positives = jnp.bincount(labels, length=num_classes)       # [C]
  ranks = jnp.arange(1, scores.shape[0] + 1, dtype=jnp.float32)

  def one(filter_index, class_index):
    ranked_labels = labels[_ranking(scores[:, filter_index])]  # [N]
    true_pos = jnp.cumsum(ranked_labels == class_index)      # [N]
    npos = positives[class_index]
    recall = jnp.where(npos > 0, true_pos / jnp.maximum(npos, 1), 0.0)
    return true_pos / ranks, recall

  classes = jnp.broadcast_to(jnp.arange(filters.shape[0])[:, None],
                             filters.shape)                  # [C, k]
  return jax.vmap(jax.vmap(one))(filters, classes)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _pr_curves(scores, labels, filters, num_classes: int):
  kernel = functools.partial(_pr_curves_kernel, num_classes=num_classes)
  return entropy.with_auto_axes(kernel, scores, labels, filters)


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
  return _pr_curves(_as_scores(scores), jnp.asarray(labels, jnp.int32),
                    jnp.asarray(filters, jnp.int32), num_classes)
