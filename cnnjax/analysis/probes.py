"""Linear-SVM probes (SPEC 4): liblinear's solver for many problems at once.

The study trains thousands of linear SVMs: one-vs-rest per class, per layer,
per feature ablation, per filter subset and per hard-negative-mining round.
All of them minimise liblinear's L2-regularised L1-loss (hinge) objective

  0.5 |w|^2 + 0.5 w_B^2 + sum_i C_i max(0, 1 - y_i (w . x_i + B w_B)),

with the bias as an extra, regularised feature of constant value B (so the
intercept is b = B w_B) and per-example costs C_i = C * pos_weight for
positives and C for negatives. `fit_linear_svm` solves P such problems over
the same examples together with liblinear's dual coordinate descent
(Hsieh et al. 2008, liblinear `solve_l2r_l1l2_svc`, shrinking included): one
jitted pass over a random order of the active examples per epoch, each step
updating the example's dual variable in all P problems at once
([P]-vectorised), until every problem meets liblinear's stopping rule
max PG - min PG <= tol.

Masks keep one compiled solver for every use: `sample_mask` [N, P] takes
examples out of single problems (mining caches, subsets), `feature_mask`
[D, P] restricts problems to feature subsets, and the number of examples is
padded to a coarse size bucket, so a growing mining cache recompiles only a
handful of times.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# liblinear skips an update whose projected gradient is this small.
_MIN_PROJECTED_GRADIENT = 1e-12
# Example counts below this are padded up to it (one compile for small sets).
_MIN_PADDED_EXAMPLES = 256


def scale_features(features: np.ndarray, target_norm: float = 20.0,
                   sample: Optional[int] = None, seed: int = 0) -> float:
  """The factor that makes the mean L2 norm of the features `target_norm`.

  R-CNN scales every layer's features so that their mean norm on trainval is
  20, which puts the fixed C = 0.001 and bias feature 10 on the same footing
  for every layer; the same factor is then applied at test time.

  Args:
    features: [N, D] unscaled features.
    target_norm: the wanted mean L2 norm.
    sample: estimate from this many rows drawn without replacement (fixed
      seed); None uses every row.
    seed: seed of the row sample.

  Returns:
    The scale factor (multiply the features by it).

  Raises:
    ValueError: no rows, or every sampled row is zero.
  """
  features = np.asarray(features)
  if features.shape[0] == 0:
    raise ValueError('scale_features: no feature rows')
  if sample is not None and sample < features.shape[0]:
    rows = np.random.default_rng(seed).choice(features.shape[0], sample,
                                              replace=False)
    features = features[np.sort(rows)]
  mean_norm = float(np.linalg.norm(features.astype(np.float64), axis=1).mean())
  if mean_norm == 0.0:
    raise ValueError('scale_features: every sampled feature row is zero')
  return target_norm / mean_norm


def predict(weights, biases, features) -> jax.Array:
  """SVM scores [N, K] = features [N, D] @ weights [D, K] + biases [K]."""
  return jnp.asarray(features, jnp.float32) @ weights + biases


def example_costs(targets: np.ndarray, C: float, pos_weight: float,
                  sample_mask: Optional[np.ndarray] = None) -> np.ndarray:
  """Per-example hinge costs C_i [N, P]: C*pos_weight, C, or 0 if masked out."""
  costs = C * np.where(np.asarray(targets) > 0, pos_weight, 1.0)
  if sample_mask is not None:
    costs = costs * np.asarray(sample_mask, bool)
  return costs


def primal_objective(weights, biases, features, targets, *, C: float = 1e-3,
                     pos_weight: float = 2.0, bias_scale: float = 10.0,
                     sample_mask: Optional[np.ndarray] = None) -> np.ndarray:
  """liblinear's primal objective of each problem, in float64.

  Args:
    weights: [D, P] SVM weights.
    biases: [P] intercepts b = bias_scale * w_B.
    features: [N, D].
    targets: [N, P] in {-1, +1}.
    C, pos_weight, bias_scale: as in `fit_linear_svm`.
    sample_mask: [N, P] bool, examples that belong to each problem.

  Returns:
    [P] objective values 0.5|w|^2 + 0.5 w_B^2 + sum_i C_i hinge_i.
  """
  weights = np.asarray(weights, np.float64)
  biases = np.asarray(biases, np.float64)
  margins = np.asarray(features, np.float64) @ weights + biases   # [N, P]
  hinge = np.maximum(0.0, 1.0 - np.asarray(targets) * margins)
  loss = (example_costs(targets, C, pos_weight, sample_mask) * hinge).sum(0)
  regulariser = 0.5 * ((weights ** 2).sum(0) + (biases / bias_scale) ** 2)
  return regulariser + loss


def _padded_size(num: int) -> int:
  """Rounds `num` up to a quarter-octave bucket (<= 25% padding)."""
  if num <= _MIN_PADDED_EXAMPLES:
    return _MIN_PADDED_EXAMPLES
  step = 2 ** (int(math.log2(num)) - 2)
  return -(-num // step) * step


@functools.partial(jax.jit, static_argnames=('masked_features',))
def _dual_coordinate_descent(features, targets, upper, feature_mask,
                             bias_scale, tol, max_iter, key, *,
                             masked_features: bool):
  """liblinear's dual CD for the L1-loss SVM, P problems sharing the examples.

  Per problem this is `solve_l2r_l1l2_svc` with its shrinking: a variable
  at a bound whose gradient points outside by more than last epoch's
  extreme projected gradient is set aside; once the others meet the
  tolerance, everything is brought back and checked again. An example is
  visited while it is in play in any unfinished problem.

  Args:
    features: [N, D] float32.
    targets: [N, P] in {-1, +1}.
    upper: [N, P] box constraints C_i of the dual variables (0: the example
      is not part of that problem).
    feature_mask: [P, D] 0/1, the features each problem may use (ignored
      unless `masked_features`).
    bias_scale: B, the value of the bias feature.
    tol: liblinear's eps on max PG - min PG.
    max_iter: the most epochs.
    key: PRNG key of the example orders.
    masked_features: whether feature_mask restricts the problems.

  Returns:
    weights [P, D], bias weights w_B [P], epochs run, converged [P].
  """
  num_examples, dim = features.shape
  num_problems = targets.shape[1]
  if masked_features:
    sq_norms = (features * features) @ feature_mask.T             # [N, P]
  else:
    sq_norms = jnp.sum(features * features, axis=1, keepdims=True)  # [N, 1]
  diag = sq_norms + bias_scale ** 2                     # Q_ii, [N, P] or [N, 1]
  in_problem = upper > 0                                          # [N, P]

  def epoch(state):
    weights, bias_w, alpha, shrunk, pg_max_old, pg_min_old, epochs, done, \
        key = state
    key, order_key = jax.random.split(key)
    in_play = in_problem & ~shrunk & ~done[None, :]               # [N, P]
    visit = jnp.any(in_play, axis=1)                              # [N]
    # A fresh random order of the examples in play; the others sort last.
    draw = jax.random.uniform(order_key, (num_examples,))
    order = jnp.argsort(jnp.where(visit, draw, 2.0))              # [N]
    # Each example is visited once per epoch, so its state is read from
    # these snapshots and written to separate buffers: reading and writing
    # one loop-carried buffer would make XLA copy it every step.
    alpha_start = alpha[order]                                    # [N, P]
    in_play_start = in_play[order]                                # [N, P]

    def step(s, carry):
      weights, bias_w, alpha_new, shrunk_new, pg_max, pg_min = carry
      i = order[s]
      x = features[i]                                             # [D]
      y = targets[i]                                              # [P]
      bound = upper[i]                                            # [P]
      a = alpha_start[s]                                          # [P]
      live = in_play_start[s]                                     # [P]
      gradient = y * (weights @ x + bias_scale * bias_w) - 1.0    # [P]
      at_lower, at_upper = a <= 0.0, a >= bound
      shrink = live & ((at_lower & (gradient > pg_max_old)) |
                       (at_upper & (gradient < pg_min_old)))
      projected = jnp.where(
          at_lower, jnp.minimum(gradient, 0.0),
          jnp.where(at_upper, jnp.maximum(gradient, 0.0), gradient))
      counted = live & ~shrink
      projected = jnp.where(counted, projected, 0.0)
      update = jnp.abs(projected) > _MIN_PROJECTED_GRADIENT
      a_new = jnp.where(update,
                        jnp.clip(a - gradient / diag[i], 0.0, bound), a)
      step_size = (a_new - a) * y                                 # [P]
      direction = x[None, :] * feature_mask if masked_features else x[None, :]
      weights = weights + step_size[:, None] * direction          # [P, D]
      bias_w = bias_w + step_size * bias_scale
      alpha_new = alpha_new.at[s].set(a_new)
      shrunk_new = shrunk_new.at[s].set(shrink)
      # Examples set aside (or outside the problem) take no part in the
      # stopping rule, as in liblinear.
      pg_max = jnp.maximum(pg_max, jnp.where(counted, projected, -jnp.inf))
      pg_min = jnp.minimum(pg_min, jnp.where(counted, projected, jnp.inf))
      return weights, bias_w, alpha_new, shrunk_new, pg_max, pg_min

    init = (weights, bias_w, alpha_start, jnp.zeros_like(in_play_start),
            jnp.full((num_problems,), -jnp.inf),
            jnp.full((num_problems,), jnp.inf))
    weights, bias_w, alpha_new, shrunk_new, pg_max, pg_min = jax.lax.fori_loop(
        0, jnp.sum(visit), step, init)
    alpha = alpha.at[order].set(alpha_new)
    shrunk = shrunk | jnp.zeros_like(shrunk).at[order].set(shrunk_new)
    # liblinear's end of an epoch, per problem: within tolerance on the
    # active set -> done if nothing is shrunk, else unshrink and recheck.
    within = pg_max - pg_min <= tol                               # [P]
    any_shrunk = jnp.any(shrunk & in_problem, axis=0)             # [P]
    done = done | (within & ~any_shrunk)
    restart = within & any_shrunk
    shrunk = shrunk & ~restart[None, :]
    pg_max_old = jnp.where(restart | (pg_max <= 0.0), jnp.inf, pg_max)
    pg_min_old = jnp.where(restart | (pg_min >= 0.0), -jnp.inf, pg_min)
    return (weights, bias_w, alpha, shrunk, pg_max_old, pg_min_old,
            epochs + 1, done, key)

  def keep_going(state):
    epochs, done = state[6], state[7]
    return (epochs < max_iter) & ~jnp.all(done)

  init = (jnp.zeros((num_problems, dim), jnp.float32),
          jnp.zeros((num_problems,), jnp.float32),
          jnp.zeros((num_examples, num_problems), jnp.float32),
          jnp.zeros((num_examples, num_problems), bool),
          jnp.full((num_problems,), jnp.inf),
          jnp.full((num_problems,), -jnp.inf),
          jnp.int32(0), jnp.zeros((num_problems,), bool), key)
  state = jax.lax.while_loop(keep_going, epoch, init)
  weights, bias_w, epochs, done = state[0], state[1], state[6], state[7]
  return weights, bias_w, epochs, done


def _solve(features, targets, sample_mask, feature_mask, C, pos_weight,
           bias_scale, tol, max_iter, seed):
  """Validates, pads and runs the jitted solver; feature_mask is [P, D]|None.

  Returns:
    W [D, P] and b [P] as jax arrays.
  """
  features = np.asarray(features, np.float32)
  targets = np.asarray(targets, np.float32)
  num, num_problems = targets.shape
  if features.ndim != 2 or features.shape[0] != num:
    raise ValueError(f'features {features.shape} and targets {targets.shape} '
                     'must be [N, D] and [N, P]')
  if sample_mask is None:
    sample_mask = np.ones(targets.shape, bool)
  sample_mask = np.asarray(sample_mask, bool)
  if sample_mask.shape != targets.shape:
    raise ValueError(f'sample_mask {sample_mask.shape} must match targets '
                     f'{targets.shape}')
  bad = sample_mask & (np.abs(targets) != 1)
  if bad.any():
    raise ValueError(f'targets must be -1 or +1; found {targets[bad][:5]}')
  upper = example_costs(targets, C, pos_weight, sample_mask).astype(np.float32)
  padding = _padded_size(num) - num
  features = np.pad(features, ((0, padding), (0, 0)))
  targets = np.pad(targets, ((0, padding), (0, 0)), constant_values=1.0)
  upper = np.pad(upper, ((0, padding), (0, 0)))
  masked = feature_mask is not None
  mask_arg = (np.asarray(feature_mask, np.float32) if masked
              else np.zeros((0, features.shape[1]), np.float32))
  weights, bias_w, epochs, converged = _dual_coordinate_descent(
      features, targets, upper, mask_arg, np.float32(bias_scale),
      np.float32(tol), np.int32(max_iter), jax.random.key(seed),
      masked_features=masked)
  if not bool(jnp.all(converged)):
    warnings.warn(f'fit_linear_svm: {int(np.sum(~np.asarray(converged)))} of '
                  f'{num_problems} problems did not reach tol={tol} in '
                  f'{int(epochs)} epochs; increase max_iter', RuntimeWarning)
  return weights.T, bias_w * bias_scale


def fit_linear_svm(features, targets, *, C: float = 1e-3,
                   pos_weight: float = 2.0, bias_scale: float = 10.0,
                   tol: float = 0.1, max_iter: int = 1000,
                   sample_mask: Optional[np.ndarray] = None,
                   feature_mask: Optional[np.ndarray] = None,
                   seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """K one-vs-rest linear SVMs (SPEC 4 objective) trained together.

  Args:
    features: [N, D] (already scaled, see `scale_features`).
    targets: [N, K] in {-1, +1}, problem k's label of example n.
    C: the cost of a negative's hinge loss (positives: C * pos_weight).
    pos_weight: liblinear's -w1.
    bias_scale: the constant bias feature B (regularised like the weights).
    tol: liblinear's stopping tolerance (0.1 in R-CNN).
    max_iter: the most epochs (liblinear's default 1000).
    sample_mask: [N, K] bool, the examples each problem is trained on
      (default all). Lets mining caches and subsets reuse one compiled solver.
    feature_mask: [D] or [D, K] 0/1, the features each problem may use;
      weights outside it are exactly 0.
    seed: seed of the example orders.

  Returns:
    W [D, K] and b [K] (b = bias_scale * w_B), as jax arrays.

  Raises:
    ValueError: mismatched shapes or targets other than -1/+1.
  """
  targets = np.asarray(targets)
  if feature_mask is not None:
    feature_mask = np.asarray(feature_mask)
    if feature_mask.ndim == 1:
      feature_mask = np.repeat(feature_mask[:, None], targets.shape[1], 1)
    feature_mask = feature_mask.T                                   # [K, D]
  return _solve(features, targets, sample_mask, feature_mask, C, pos_weight,
                bias_scale, tol, max_iter, seed)


def fit_linear_svm_subsets(features, targets, feature_masks, *,
                           C: float = 1e-3, pos_weight: float = 2.0,
                           bias_scale: float = 10.0, tol: float = 0.1,
                           max_iter: int = 1000,
                           sample_mask: Optional[np.ndarray] = None,
                           seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """The K problems retrained on each of S feature subsets, in one solve.

  The S*K problems share the example loop (the filter-subset experiment's
  hundreds of SVMs cost one pass per epoch).

  Args:
    features: [N, D].
    targets: [N, K] in {-1, +1}.
    feature_masks: [S, D] (one subset for every class) or [S, D, K] (a
      subset per class, e.g. each class's top-k filters) 0/1.
    C, pos_weight, bias_scale, tol, max_iter, seed: as in `fit_linear_svm`.
    sample_mask: [N, K] bool, shared by the subsets.

  Returns:
    W [S, D, K] and b [S, K].
  """
  targets = np.asarray(targets)
  feature_masks = np.asarray(feature_masks)
  num_subsets, dim = feature_masks.shape[:2]
  num_classes = targets.shape[1]
  if feature_masks.ndim == 2:
    feature_masks = np.repeat(feature_masks[:, :, None], num_classes, 2)
  problem_masks = feature_masks.transpose(0, 2, 1).reshape(-1, dim)  # [S*K, D]
  tiled_mask = None if sample_mask is None else np.tile(sample_mask,
                                                        (1, num_subsets))
  weights, biases = _solve(features, np.tile(targets, (1, num_subsets)),
                           tiled_mask, problem_masks, C, pos_weight,
                           bias_scale, tol, max_iter, seed)
  weights = weights.reshape(dim, num_subsets, num_classes).transpose(1, 0, 2)
  return weights, biases.reshape(num_subsets, num_classes)


def fit_linear_svm_sklearn(features, targets, *, C: float = 1e-3,
                           pos_weight: float = 2.0, bias_scale: float = 10.0,
                           tol: float = 0.1, max_iter: int = 1000,
                           sample_mask: Optional[np.ndarray] = None,
                           feature_mask: Optional[np.ndarray] = None,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Reference path: sklearn's LinearSVC (liblinear) looped over the K classes.

  Same arguments and result as `fit_linear_svm`; slow, for cross-checks.

  Raises:
    ValueError: a problem whose examples are all of one label.
  """
  from sklearn import svm  # pylint: disable=g-import-not-at-top
  features = np.asarray(features, np.float64)
  targets = np.asarray(targets)
  dim, num_classes = features.shape[1], targets.shape[1]
  sample_mask = (np.ones(targets.shape, bool) if sample_mask is None
                 else np.asarray(sample_mask, bool))
  feature_mask = (np.ones((dim, num_classes), bool) if feature_mask is None
                  else np.asarray(feature_mask, bool))
  if feature_mask.ndim == 1:
    feature_mask = np.repeat(feature_mask[:, None], num_classes, 1)
  weights = np.zeros((dim, num_classes))
  biases = np.zeros((num_classes,))
  for k in range(num_classes):
    rows, cols = sample_mask[:, k], feature_mask[:, k]
    labels = targets[rows, k]
    if np.unique(labels).size != 2:
      raise ValueError(f'problem {k}: needs both labels, got {np.unique(labels)}')
    model = svm.LinearSVC(loss='hinge', dual=True, C=C,
                          class_weight={1: pos_weight, -1: 1.0},
                          intercept_scaling=bias_scale, tol=tol,
                          max_iter=max_iter, random_state=seed)
    model.fit(features[np.ix_(rows, cols)], labels)
    weights[cols, k] = model.coef_[0]
    biases[k] = model.intercept_[0]
  return weights, biases
