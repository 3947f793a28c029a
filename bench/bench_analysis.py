r"""The vectorised analyses vs straightforward numpy loops, and at VOC07 scale.

  python bench/bench_analysis.py                          # everything
  python bench/bench_analysis.py --sections scaling --sizes 1000,4000
  python bench/bench_analysis.py --sections table --table-examples 15000

Sections (JSON on stdout, progress on stderr):

scaling  entropy curves (`entropy.entropy_curves`, every method, 100
         linear thresholds, 20 classes) on pool5-like [N, 6, 6, 256] and
         fc7-like [N, 4096] activations for N in --sizes, and per-filter AP
         (`selectivity.filter_average_precision`, pool5 spatial max). Each
         against its loop reference: SPEC 6 written as loops over filters
         and thresholds (AP: over filters and classes, the devkit's
         `metrics.cls_average_precision`), timed on --loop-filters filters
         and scaled by F / loop-filters (the loops are linear in F), in
         alternation with the vectorised runs so that both see the same
         load; the loop results are checked against the vectorised ones.
         Reports median seconds, the loop / vectorised ratio, the peak
         resident memory added during one call, the load average, and the
         growth exponent of time in N (least-squares slope of log time on
         log N over --sizes; N log N has 1.12 over 1K..16K).
table    the full entropy table (seeds Table 2.1: MCAuE at 0.1 .. 1.0 of the
         filters, three methods, percent decrease) for two synthetic nets at
         VOC07-test scale: pool1 27x27x96, conv3 13x13x384, pool5 6x6x256,
         fc7 4096 on --table-examples boxes (float16 in memory, as the
         feature store keeps them). The numbers are timings; the synthetic
         "finetuned" net only has stronger class signal in pool5 and fc7.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time

import _common
import jax
import numpy as np

from cnnjax import metrics
from cnnjax.analysis import entropy
from cnnjax.analysis import selectivity

NUM_CLASSES = 20
SHAPES = {'pool5': (6, 6, 256), 'fc7': (4096,)}
TABLE_SHAPES = {'pool1': (27, 27, 96), 'conv3': (13, 13, 384),
                'pool5': (6, 6, 256), 'fc7': (4096,)}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--sections', default='scaling,table')
  parser.add_argument('--sizes', default='1000,4000,16000',
                      help='comma-separated example counts N')
  parser.add_argument('--runs', type=int, default=3,
                      help='timed vectorised runs (median reported)')
  parser.add_argument('--loop-filters', type=int, default=8,
                      help='filters the loop references are timed on')
  parser.add_argument('--table-examples', type=int, default=15000)
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args()


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def peak_rss_added(fn):
  """Runs fn(); returns (its result, peak resident bytes above the start).

  A sampling thread reads /proc every 5 ms: XLA's buffers are not visible
  to tracemalloc, the process RSS is.
  """
  start = _rss_bytes()
  peak = [start]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_bytes())
      time.sleep(0.005)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  try:
    result = fn()
  finally:
    done.set()
    sampler.join()
  return result, max(peak[0], _rss_bytes()) - start


def synthetic_layer(rng, num, shape, labels, signal: float,
                    dtype=np.float32) -> np.ndarray:
  """ReLU(noise + class offset - 0.5): sparse, post-ReLU-like, class-tinted."""
  num_filters = shape[-1]
  offsets = (rng.normal(size=(NUM_CLASSES, num_filters)) * signal).astype(
      np.float32)
  out = np.empty((num,) + shape, dtype)
  step = max(1, (1 << 24) // int(np.prod(shape)))
  for start in range(0, num, step):
    stop = min(num, start + step)
    block = rng.standard_normal((stop - start,) + shape, dtype=np.float32)
    block += offsets[labels[start:stop]].reshape(
        (stop - start,) + (1,) * (len(shape) - 1) + (num_filters,)) - 0.5
    out[start:stop] = np.maximum(block, 0.0)
  return out


def loop_entropy_curves(acts, labels, method, num_thresholds=100):
  """SPEC 6 as loops over filters and thresholds (numpy inside).

  Thresholds from each filter's numpy min/max through the same
  `entropy.linear_thresholds` grid, so the results compare exactly.
  """
  acts = acts.reshape(acts.shape[0], -1, acts.shape[-1])     # [N, P, F]
  curves = np.zeros((acts.shape[-1], num_thresholds))
  for f in range(acts.shape[-1]):
    if method == 'spmax':
      scores, sample_labels = acts[:, :, f].max(axis=1), labels
    else:
      scores = acts[:, :, f].reshape(-1)
      sample_labels = np.repeat(labels, acts.shape[1])
    grid = entropy.linear_thresholds(scores.min(keepdims=True),
                                     scores.max(keepdims=True),
                                     num_thresholds)[0]
    for j, t in enumerate(grid):
      keep = scores >= t
      weights = scores[keep] if method == 'weighted' else None
      hist = np.bincount(sample_labels[keep], weights=weights,
                         minlength=NUM_CLASSES).astype(np.float64)
      if hist.sum() > 0:
        p = hist[hist > 0] / hist.sum()
        curves[f, j] = -(p * np.log2(p)).sum()
  return curves


def loop_filter_ap(scores, labels):
  """Per filter and class, the devkit AP (metrics.cls_average_precision)."""
  return np.array([[metrics.cls_average_precision(
      scores[:, f], np.where(labels == c, 1, -1)) for c in range(NUM_CLASSES)]
                   for f in range(scores.shape[1])])


def _growth(times: dict[int, float]) -> dict[str, float]:
  """How time grows with N: the least-squares slope of log time on log N.

  For comparison, the slope N log N itself has over the same sizes (1.12
  from 1K to 16K); linear time gives 1.
  """
  sizes = sorted(times)
  slope = np.polyfit(np.log(sizes), np.log([times[n] for n in sizes]), 1)[0]
  n_log_n = np.polyfit(np.log(sizes), np.log([n * math.log(n) for n in sizes]),
                       1)[0]
  return {'sizes': sizes, 'exponent': float(slope),
          'n_log_n_exponent': float(n_log_n),
          'time_ratio': times[sizes[-1]] / times[sizes[0]]}


def scaling_section(args, rng) -> dict:
  sizes = [int(n) for n in args.sizes.split(',')]
  results = []
  for layer, shape in SHAPES.items():
    methods = entropy.METHODS if len(shape) == 3 else ('label', 'weighted')
    for n in sizes:
      labels = rng.integers(0, NUM_CLASSES, n)
      acts = synthetic_layer(rng, n, shape, labels, signal=0.5)
      loop_filters = min(args.loop_filters, shape[-1])
      cases = [(m, 'entropy') for m in methods]
      if len(shape) == 3:
        cases.append(('spmax', 'filter_ap'))
      for method, analysis in cases:
        _common.log(f'scaling: {layer} N={n} {analysis} {method}')
        if analysis == 'entropy':
          def vectorised(acts=acts, labels=labels, method=method):
            return jax.block_until_ready(entropy.entropy_curves(
                acts, labels, NUM_CLASSES, method))
        else:
          spmax = acts.max(axis=(1, 2))                      # [N, F]
          def vectorised(spmax=spmax, labels=labels):
            return jax.block_until_ready(selectivity.filter_average_precision(
                spmax, labels, NUM_CLASSES))
        subset = acts[..., :loop_filters]
        outputs = {}
        if analysis == 'entropy':
          def loop(subset=subset, labels=labels, method=method):
            outputs['loop'] = loop_entropy_curves(subset, labels, method)
        else:
          def loop(spmax=spmax, labels=labels):
            outputs['loop'] = loop_filter_ap(spmax[:, :loop_filters], labels)
        # Alternated, so that both see the same load on a shared machine.
        timing = _common.interleaved_runs(
            {'vectorised': vectorised, 'loop': loop}, runs=args.runs)
        got, added = peak_rss_added(vectorised)
        got = np.asarray(got)[:loop_filters]
        want = outputs['loop']
        vectorised_s = timing['vectorised']['median_s']
        loop_s = timing['loop']['median_s'] * shape[-1] / loop_filters
        results.append({
            'layer': layer, 'shape': list(shape), 'n': n,
            'analysis': analysis, 'method': method,
            'vectorised_s': vectorised_s,
            'loop_s_estimated': loop_s,
            'speedup': loop_s / vectorised_s,
            'peak_rss_added_mb': added / 2**20,
            'input_mb': acts.nbytes / 2**20,
            'max_abs_diff_vs_loop': float(np.abs(got - want).max()),
            'load_average': _common.load_average(),
        })
  growth = {}
  for row in results:
    key = f"{row['layer']}/{row['analysis']}/{row['method']}"
    growth.setdefault(key, {})[row['n']] = row['vectorised_s']
  return {'rows': results,
          'growth': {k: _growth(v) for k, v in growth.items() if len(v) > 1}}


def table_section(args, rng) -> dict:
  n = args.table_examples
  labels = rng.integers(0, NUM_CLASSES, n)
  table, timings = {}, []
  for layer, shape in TABLE_SHAPES.items():
    summaries = {}
    for net, signal in (('pretrained', 0.3),
                        ('finetuned', 0.6 if layer in ('pool5', 'fc7')
                         else 0.3)):
      start = time.perf_counter()
      acts = synthetic_layer(rng, n, shape, labels, signal, np.float16)
      generate_s = time.perf_counter() - start
      methods = entropy.METHODS if len(shape) == 3 else ('label', 'weighted')
      _common.log(f'table: {layer} {net} ({acts.nbytes / 2**30:.2f} GiB)')
      start = time.perf_counter()
      per_method, added = peak_rss_added(lambda: entropy.layer_summary(
          acts, labels, NUM_CLASSES, methods))
      seconds = time.perf_counter() - start
      for method, summary in per_method.items():
        summaries[(net, method)] = summary
      timings.append({'layer': layer, 'net': net, 'methods': list(methods),
                      'seconds': seconds, 'generate_s': generate_s,
                      'input_gib': acts.nbytes / 2**30,
                      'peak_rss_added_mb': added / 2**20})
      del acts
    for method in entropy.METHODS:
      source = method if (('pretrained', method) in summaries) else 'label'
      pre = summaries[('pretrained', source)]['table']
      ft = summaries[('finetuned', source)]['table']
      table[f'{layer}/{method}'] = {
          'mcaue_pretrained': pre.tolist(), 'mcaue_finetuned': ft.tolist(),
          'percent_decrease': np.asarray(
              entropy.percent_decrease(pre, ft)).tolist()}
  return {'examples': n, 'fractions': list(entropy.TABLE_FRACTIONS),
          'timings': timings,
          'total_s': sum(t['seconds'] for t in timings),
          'table': table}


def main() -> None:
  args = parse_args()
  rng = np.random.default_rng(args.seed)
  sections = args.sections.split(',')
  payload = {'machine': _common.machine(), 'devices': str(jax.devices()),
             'load_average_start': _common.load_average()}
  if 'scaling' in sections:
    payload['scaling'] = scaling_section(args, rng)
  if 'table' in sections:
    payload['table'] = table_section(args, rng)
  payload['load_average_end'] = _common.load_average()
  _common.print_json(payload)


if __name__ == '__main__':
  main()
