r"""What each CaffeNet speed-up is worth: ablations in one run, as JSON.

  python bench/bench_steps.py                      # FT step at batch 32
  python bench/bench_steps.py --modes ft,fcft,inference --batch 128

Every variant is the shipped model with one speed-up taken out (or all of
them, 'before'), compiled side by side and timed in alternation with the
shipped one (`_common.interleaved_runs`), so the speed ratios hold on a
busy machine:

- xla_default_options: jitted without `caffenet.compiler_options()`
  (XLA:CPU's default YNNPACK matmuls and convolutions);
- reduce_window_pool: pooling's forward pass as one reduce_window instead
  of row and column maxima of strided slices (the backward pass is kept);
- autodiff_pool: XLA's autodiff of reduce_window max pooling instead of
  the scatter to the first maximum (forward as reduce_window too);
- bias_before_pool: the bias added to the full-resolution convolution
  output, concatenated over groups, before pooling (as Caffe does);
- autodiff_lrn: XLA's autodiff of the LRN formula instead of Caffe's
  closed-form gradient;
- before: all of these at once (the network as first written, except that
  pooling already runs before the ReLU, which is exact and not undone here);
- bfloat16 (inference only): params and images in bfloat16, so every
  convolution and matmul runs in bfloat16; the JSON adds its largest
  logit error relative to the largest float32 logit.

Inference is timed for the variants that change the forward pass. `init`
times `caffenet.init_params` against `jax.jit(model.init)`, cold (compile
included), at full and test width. JSON: per mode and variant the step
time, images/s and `speedup` (variant time / shipped time: what the
speed-up buys).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import bench_caffenet  # noqa: E402  pylint: disable=g-import-not-at-top

from cnnjax.models import caffenet  # noqa: E402


def _reduce_window_max(x, window=3, stride=2):
  """Ceil-mode max pooling as one reduce_window (the plain formulation)."""
  # pylint: disable=protected-access
  _, pad_h = caffenet._ceil_pool_geometry(x.shape[1], window, stride)
  _, pad_w = caffenet._ceil_pool_geometry(x.shape[2], window, stride)
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
      ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def _autodiff_lrn(x, size=caffenet.LRN_SIZE, alpha=caffenet.LRN_ALPHA,
                  beta=caffenet.LRN_BETA, k=caffenet.LRN_K):
  return caffenet._lrn_fwd(x, size, alpha, beta, k)[0]  # pylint: disable=protected-access


class _BiasBeforePoolConv(caffenet.CaffeConv):
  """CaffeConv pooling max(concat(groups) + bias), as first written."""

  def __call__(self, x):
    pre, pooled = super().__call__(x)
    return pre, None if pooled is None else caffenet.max_pool_ceil(pre)


# variant -> (module attributes replaced, use caffenet.compiler_options()).
PATCHES = {'_max_pool_forward': _reduce_window_max,
           'max_pool_ceil': _reduce_window_max,
           'CaffeConv': _BiasBeforePoolConv,
           'local_response_norm': _autodiff_lrn}
VARIANTS = {
    'shipped': ({}, True),
    'xla_default_options': ({}, False),
    'reduce_window_pool': ({'_max_pool_forward': _reduce_window_max}, True),
    'autodiff_pool': ({'max_pool_ceil': _reduce_window_max}, True),
    'bias_before_pool': ({'CaffeConv': _BiasBeforePoolConv}, True),
    'autodiff_lrn': ({'local_response_norm': _autodiff_lrn}, True),
    'before': (PATCHES, False),
    'bfloat16': ({}, True),
}
INFERENCE_VARIANTS = ('shipped', 'xla_default_options', 'reduce_window_pool',
                      'autodiff_pool', 'bias_before_pool', 'before',
                      'bfloat16')

@contextlib.contextmanager
def patched(replacements: dict[str, Any]) -> Iterator[None]:
  """caffenet's module attributes replaced while the model is traced."""
  saved = {name: getattr(caffenet, name) for name in replacements}
  try:
    for name, value in replacements.items():
      setattr(caffenet, name, value)
    yield
  finally:
    for name, value in saved.items():
      setattr(caffenet, name, value)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--modes', default='ft',
                      help=f'subset of {",".join(bench_caffenet.MODES)}')
  parser.add_argument('--variants', default=','.join(VARIANTS),
                      help='subset of ' + ','.join(VARIANTS))
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--no-init', action='store_true',
                      help='skip the init_params timing')
  return parser.parse_args()


def time_init(repeats: int = 3) -> dict[str, Any]:
  """Cold (compile + run) seconds of init_params vs jax.jit(model.init)."""
  results = {}
  for label, width, size in (('full', 1.0, 227), ('test_tiny', 0.0625, 71)):
    model = caffenet.CaffeNet(width=width)
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    contenders = {
        'init_params': lambda m=model, s=size: caffenet.init_params(
            m, jax.random.key(0), s),
        'jit_model_init': lambda m=model, d=dummy: jax.jit(m.init)(
            jax.random.key(0), d)['params'],
    }
    times = {name: [] for name in contenders}
    for _ in range(repeats):
      for name, fn in contenders.items():
        jax.clear_caches()
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    results[label] = {'median_s': medians,
                      'speedup': medians['jit_model_init'] /
                                 medians['init_params']}
    _common.log(f'init {label}: {medians}')
  return results


def _bfloat16(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), tree)


def bfloat16_logit_error(params, images, num_classes: int) -> float:
  """Largest |bfloat16 logit - float32 logit| / largest |float32 logit|."""
  model = caffenet.CaffeNet(num_classes=num_classes)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x)[0])
  exact = np.asarray(apply(params, images), np.float32)
  low = np.asarray(apply(_bfloat16(params), _bfloat16(images)), np.float32)
  return float(np.max(np.abs(low - exact)) / np.max(np.abs(exact)))


def main():
  args = parse_args()
  modes = [m for m in args.modes.split(',') if m]
  variants = [v for v in args.variants.split(',') if v]
  unknown = (set(modes) - set(bench_caffenet.MODES)) | (
      set(variants) - set(VARIANTS))
  if unknown:
    raise SystemExit(f'unknown modes/variants {sorted(unknown)}')
  if 'shipped' not in variants:
    variants.insert(0, 'shipped')

  num_classes = 1000
  params = caffenet.init_params(caffenet.CaffeNet(), jax.random.key(0))
  rng = np.random.default_rng(0)
  images = rng.normal(0, 50, (args.batch, 227, 227, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, args.batch).astype(np.int32)
  report = {'benchmark': 'caffenet_ablations', 'batch': args.batch,
            'machine': _common.machine(),
            'load_average_start': _common.load_average(), 'modes': {}}
  for mode in modes:
    runs = {}
    for variant in variants:
      if (variant not in INFERENCE_VARIANTS if mode == 'inference'
          else variant == 'bfloat16'):
        continue
      replacements, tuned = VARIANTS[variant]
      _common.log(f'{mode}: compiling {variant}')
      if variant == 'bfloat16':
        runs[variant] = bench_caffenet.jax_step_fns(
            _bfloat16(params), num_classes)[mode](_bfloat16(images), labels)
        report['bfloat16_logit_error'] = bfloat16_logit_error(
            params, images, num_classes)
        continue
      with patched(replacements):
        fns = bench_caffenet.jax_step_fns(
            params, num_classes, None if tuned else {})
        runs[variant] = fns[mode](images, labels)
    _common.log(f'{mode}: {args.warmup} warm-up + {args.runs} rounds of '
                f'{", ".join(runs)}')
    timings = _common.interleaved_runs(runs, runs=args.runs,
                                       warmup=args.warmup)
    shipped = timings['shipped']['median_s']
    report['modes'][mode] = {
        variant: {**timing, 'images_per_s': args.batch / timing['median_s'],
                  'speedup': timing['median_s'] / shipped}
        for variant, timing in timings.items()}
    report['modes'][mode]['load_average_after'] = _common.load_average()
    for variant, row in report['modes'][mode].items():
      if variant != 'load_average_after':
        _common.log(f'  {variant}: {row["median_s"]:.2f} s '
                    f'(shipped is {row["speedup"]:.2f}x faster)')
  if not args.no_init:
    report['init'] = time_init()
  report['load_average_end'] = _common.load_average()
  _common.print_json(report)


if __name__ == '__main__':
  main()
