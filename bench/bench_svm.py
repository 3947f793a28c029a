r"""The batched jitted SVM solver vs sklearn's LinearSVC looped over classes.

  python bench/bench_svm.py                              # N 5000, D 256..4096
  python bench/bench_svm.py --dims 256 --n 2000 --runs 1   # quick

Both minimise the SPEC 4 objective (C 1e-3, positives x2, bias feature 10,
tol 0.1) for K one-vs-rest problems on synthetic ReLU-like features with
class structure, scaled to mean norm 20 as R-CNN does. Prints JSON per D:
seconds for K classes (jax: median of --runs after a compiling run, which
is reported separately; sklearn: one run), the speed ratio, the relative
difference of the primal objectives, and the test mAP of both.

`subsets` (unless --subsets-dim 0): the filter-subset experiment's retrained
SVMs (seeds fig 3-4, `analysis.subsets`): each class's top-k features by
|w| of its full SVM, for every k of `subsets.SUBSET_SIZES`, S x K problems
in one `probes.fit_linear_svm_subsets` solve, against sklearn fitting each
(k, class) problem on its own feature columns.
"""

from __future__ import annotations

import argparse
import time

import _common
import jax
import numpy as np

from cnnjax import metrics
from cnnjax.analysis import probes
from cnnjax.analysis import subsets


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--n', type=int, default=5000, help='training examples')
  parser.add_argument('--n-test', type=int, default=2000)
  parser.add_argument('--dims', default='256,1024,4096',
                      help='comma-separated feature dimensions')
  parser.add_argument('--classes', type=int, default=20)
  parser.add_argument('--runs', type=int, default=3,
                      help='timed jax runs (median reported)')
  parser.add_argument('--tol', type=float, default=0.1)
  parser.add_argument('--subsets-dim', type=int, default=256,
                      help='features of the subsets section (pool5 filters); '
                      '0 skips it')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args()


def synthetic_features(rng, num, dim, centres):
  """ReLU(noise + class centre) features, with 10% of the labels flipped."""
  labels = rng.integers(0, len(centres), num)
  features = np.maximum(0.0, rng.normal(size=(num, dim)) +
                        0.5 * centres[labels]).astype(np.float32)
  flip = rng.random(num) < 0.1
  labels[flip] = rng.integers(0, len(centres), flip.sum())
  return features, labels


def problem(rng, args, dim):
  """Scaled train / test features and one-vs-rest targets of K classes."""
  centres = rng.normal(size=(args.classes, dim))
  train_x, train_labels = synthetic_features(rng, args.n, dim, centres)
  test_x, test_labels = synthetic_features(rng, args.n_test, dim, centres)
  scale = probes.scale_features(train_x)
  classes = np.arange(args.classes)
  train_y = np.where(train_labels[:, None] == classes, 1.0, -1.0)
  test_y = np.where(test_labels[:, None] == classes, 1, -1)
  return train_x * scale, train_y, test_x * scale, test_y


def subsets_section(rng, args) -> dict:
  """The S x K retrained subset SVMs: one batched solve vs sklearn's loop."""
  train_x, train_y, _, _ = problem(rng, args, args.subsets_dim)
  weights, _ = probes.fit_linear_svm(train_x, train_y, tol=args.tol,
                                     seed=args.seed)
  sizes = subsets.subset_sizes(args.subsets_dim)
  masks = subsets.subset_masks(subsets.rank_filters(weights), sizes)

  def fit_jax():
    return jax.block_until_ready(probes.fit_linear_svm_subsets(
        train_x, train_y, masks, tol=args.tol, seed=args.seed))

  start = time.perf_counter()
  fit_jax()
  first_s = time.perf_counter() - start
  timing = _common.time_runs(fit_jax, runs=args.runs, warmup=0)
  subset_w, subset_b = fit_jax()
  _common.log(f'subsets: jax {timing["median_s"]:.2f}s for '
              f'{masks.shape[0] * args.classes} SVMs')
  start = time.perf_counter()
  rel_diffs = []
  for s, mask in enumerate(masks):                           # [F, K]
    sk_w, sk_b = probes.fit_linear_svm_sklearn(
        train_x, train_y, feature_mask=mask > 0, tol=args.tol, seed=args.seed)
    ours = probes.primal_objective(subset_w[s], subset_b[s], train_x, train_y)
    ref = probes.primal_objective(sk_w, sk_b, train_x, train_y)
    rel_diffs.append((ours - ref) / ref)
  sklearn_s = time.perf_counter() - start
  _common.log(f'subsets: sklearn {sklearn_s:.2f}s')
  rel_diffs = np.concatenate(rel_diffs)
  return {'n': args.n, 'dim': args.subsets_dim, 'classes': args.classes,
          'sizes': sizes.tolist(), 'svms': int(masks.shape[0] * args.classes),
          'jax_s': timing['median_s'], 'jax_first_call_s': first_s,
          'sklearn_s': sklearn_s, 'speedup': sklearn_s / timing['median_s'],
          'objective_rel_diff_mean': float(rel_diffs.mean()),
          'objective_rel_diff_max': float(np.abs(rel_diffs).max())}


def main() -> None:
  args = parse_args()
  rng = np.random.default_rng(args.seed)
  results = []
  for dim in (int(d) for d in args.dims.split(',')):
    train_x, train_y, test_x, test_y = problem(rng, args, dim)

    def fit_jax():
      return jax.block_until_ready(
          probes.fit_linear_svm(train_x, train_y, tol=args.tol,
                                seed=args.seed))

    start = time.perf_counter()
    fit_jax()
    first_s = time.perf_counter() - start
    timing = _common.time_runs(fit_jax, runs=args.runs, warmup=0)
    weights, biases = fit_jax()
    _common.log(f'D={dim}: jax {timing["median_s"]:.2f}s')
    start = time.perf_counter()
    sk_weights, sk_biases = probes.fit_linear_svm_sklearn(
        train_x, train_y, tol=args.tol, seed=args.seed)
    sklearn_s = time.perf_counter() - start
    _common.log(f'D={dim}: sklearn {sklearn_s:.2f}s')
    objective = probes.primal_objective(weights, biases, train_x, train_y)
    sk_objective = probes.primal_objective(sk_weights, sk_biases, train_x,
                                           train_y)
    rel_diff = (objective - sk_objective) / sk_objective
    _, test_map = metrics.cls_map(
        np.asarray(probes.predict(weights, biases, test_x)), test_y)
    _, sk_test_map = metrics.cls_map(
        np.asarray(probes.predict(sk_weights, sk_biases, test_x)), test_y)
    results.append({
        'n': args.n, 'dim': dim, 'classes': args.classes, 'tol': args.tol,
        'jax_s': timing['median_s'], 'jax_first_call_s': first_s,
        'sklearn_s': sklearn_s, 'speedup': sklearn_s / timing['median_s'],
        'objective_rel_diff_mean': float(rel_diff.mean()),
        'objective_rel_diff_max': float(np.abs(rel_diff).max()),
        'test_map_jax': test_map, 'test_map_sklearn': sk_test_map})
  payload = {'machine': _common.machine(),
             'jax_device': str(jax.devices()[0]), 'results': results}
  if args.subsets_dim:
    payload['subsets'] = subsets_section(rng, args)
  _common.print_json(payload)


if __name__ == '__main__':
  main()
