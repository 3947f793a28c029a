"""How many filters does a class need? Greedy subsets (seeds 3.4, SPEC 6).

Per class: a linear SVM on spatial-max pool5 features (one dimension per
filter) ranks the filters by |w| of that class (seeds fig 3-3); the SVM is
then retrained on the top-k filters for every k of SUBSET_SIZES and scored
by GT-box classification AP on the test boxes (fig 3-4). Reported: the
number of filters reaching 50% and 90% of the full AP (Table 3.1) and the
overlap of the classes' top-50 filter sets (fig 3-5).

All SVMs are solved together: the ranking SVMs of the C classes in one
call, and the S x C retrained SVMs in one call of the same compiled solver,
with the subsets given as feature masks ([S, F, C]: a masked-out filter's
weight is exactly 0, which is the SVM trained on the remaining filters).
Features are scaled once, to mean L2 norm 20 on the training boxes over all
filters (SPEC 4), so every subset sees the same feature values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cnnjax import metrics
from cnnjax.analysis import ablations
from cnnjax.analysis import probes

SUBSET_SIZES = (1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128,
                256)
REACH_FRACTIONS = (0.5, 0.9)                      # seeds Table 3.1 rows
TOP_OVERLAP = 50                                  # seeds fig 3-5


def subset_sizes(num_filters: int,
                 sizes: Sequence[int] = SUBSET_SIZES) -> np.ndarray:
  """The study's k list clipped to the layer, always ending at all filters.

  Clipping maps every k > F to F (duplicates dropped), so a width-scaled
  demo net with F = 8 gets [1, 2, 3, 5, 8]; a layer wider than the list's
  largest k gets F appended, so the last subset is always the full feature.
  """
  clipped = {min(int(k), num_filters) for k in sizes if k > 0}
  clipped.add(num_filters)
  return np.array(sorted(clipped), np.int32)


def rank_filters(weights) -> np.ndarray:
  """Filters by decreasing |w| per class ([F, C] -> [C, F]), ties by index."""
  magnitude = np.abs(np.asarray(weights, np.float64))        # [F, C]
  return np.argsort(-magnitude, axis=0, kind='stable').T.astype(np.int32)


def subset_masks(ranking, sizes) -> np.ndarray:
  """Feature masks of every class's top-k filters, for every k.

  Args:
    ranking: [C, F] filters of each class, most important first.
    sizes: [S] subset sizes k.

  Returns:
    [S, F, C] float32, entry (s, f, c) = 1 if filter f is among class c's
    top sizes[s] filters.
  """
  ranking = np.asarray(ranking)
  num_classes, num_filters = ranking.shape
  position = np.empty_like(ranking)                          # [C, F]
  np.put_along_axis(position, ranking,
                    np.broadcast_to(np.arange(num_filters), ranking.shape),
                    axis=1)
  sizes = np.asarray(sizes)
  return (position.T[None] < sizes[:, None, None]).astype(np.float32)


def filters_to_reach(ap, full_ap, sizes, fraction: float) -> np.ndarray:
  """The smallest k of `sizes` whose AP reaches `fraction` of the full AP.

  Args:
    ap: [C, S] AP of each class with each subset size.
    full_ap: [C] AP with all filters.
    sizes: [S] increasing subset sizes.
    fraction: e.g. 0.5 or 0.9.

  Returns:
    [C] int32 (-1 where no size reaches it, which cannot happen when the
    last size is the full feature and full_ap its AP).
  """
  ap = np.asarray(ap)
  reached = ap >= fraction * np.asarray(full_ap)[:, None]    # [C, S]
  first = np.argmax(reached, axis=1)
  return np.where(reached.any(axis=1), np.asarray(sizes)[first],
                  -1).astype(np.int32)


def top_overlap(ranking, top: int = TOP_OVERLAP) -> np.ndarray:
  """Fraction of class i's top filters also in class j's top filters.

  Args:
    ranking: [C, F] filters of each class, most important first.
    top: set size (clipped to F).

  Returns:
    [C, C] float64; the diagonal is 1. Entry (i, j) = |T_i & T_j| / |T_i|.
  """
  ranking = np.asarray(ranking)
  num_classes, num_filters = ranking.shape
  top = min(top, num_filters)
  member = np.zeros((num_classes, num_filters))
  np.put_along_axis(member, ranking[:, :top], 1.0, axis=1)   # [C, F]
  return member @ member.T / top


def _one_vs_rest(labels, num_classes: int) -> np.ndarray:
  """GT-box targets [N, C]: +1 for the box's class, -1 for the others."""
  return np.where(np.asarray(labels)[:, None] == np.arange(num_classes), 1.0,
                  -1.0)


def greedy_filter_subsets(train_features, train_labels, test_features,
                          test_labels, num_classes: int,
                          sizes: Sequence[int] = SUBSET_SIZES,
                          top: int = TOP_OVERLAP,
                          **svm_options) -> dict[str, Any]:
  """The whole seeds 3.4 experiment on one net.

  Args:
    train_features: [N, F] spatial-max pool5 features of the training GT
      boxes (or pool5 maps [N, H, W, F]: their spatial max is taken).
    train_labels: [N] class of each training box.
    test_features: [M, F] (or maps) of the test boxes.
    test_labels: [M] classes.
    num_classes: C.
    sizes: the k list (clipped to F by `subset_sizes`).
    top: size of the filter sets compared by the overlap matrix.
    **svm_options: passed to the solver (C, pos_weight, bias_scale, tol,
      max_iter, seed; SPEC 4 defaults).

  Returns:
    dict of numpy arrays: 'sizes' [S]; 'weights' [F, C] of the ranking SVMs;
    'ranking' [C, F]; 'ap' [C, S] test AP per class and subset size;
    'full_ap' [C] (the last size: all filters); 'reach_50', 'reach_90' [C]
    (Table 3.1); 'overlap' [C, C] (fig 3-5); 'scale' the feature factor.
  """
  train = np.asarray(ablations.sp_max(train_features)
                     if np.ndim(train_features) == 4 else train_features,
                     np.float32)                             # [N, F]
  test = np.asarray(ablations.sp_max(test_features)
                    if np.ndim(test_features) == 4 else test_features,
                    np.float32)                              # [M, F]
  scale = probes.scale_features(train)
  train, test = train * scale, test * scale
  targets = _one_vs_rest(train_labels, num_classes)         # [N, C]
  weights, _ = probes.fit_linear_svm(train, targets, **svm_options)
  ranking = rank_filters(weights)                            # [C, F]
  chosen = subset_sizes(train.shape[1], sizes)               # [S]
  masks = subset_masks(ranking, chosen)                      # [S, F, C]
  subset_w, subset_b = probes.fit_linear_svm_subsets(
      train, targets, masks, **svm_options)                  # [S, F, C], [S, C]
  test_targets = _one_vs_rest(test_labels, num_classes)     # [M, C]
  ap = np.stack([
      metrics.cls_map(np.asarray(probes.predict(w, b, test)), test_targets)[0]
      for w, b in zip(subset_w, subset_b)], axis=1)          # [C, S]
  full_ap = ap[:, -1]
  result = {'sizes': chosen, 'weights': np.asarray(weights),
            'ranking': ranking, 'ap': ap, 'full_ap': full_ap,
            'overlap': top_overlap(ranking, top), 'scale': scale}
  for fraction in REACH_FRACTIONS:
    result[f'reach_{round(fraction * 100)}'] = filters_to_reach(
        ap, full_ap, chosen, fraction)
  return result
