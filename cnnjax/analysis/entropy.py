"""Label entropy of filters, AuE and MCAuE (seeds chapter 2; SPEC 6).

A filter's entropy curve: for each threshold t on its score, the entropy (in
bits) of the class histogram of the samples scoring >= t. Three sample sets:

  'label'     every spatial position of every example is a sample carrying
              the example's label (N * H * W samples), each counting 1;
  'weighted'  the same samples, each adding its score instead of 1;
  'spmax'     one sample per example: the maximum of its map.

fc6/fc7 ([N, F] activations) have one position, so 'label' and 'spmax'
coincide there. Thresholds: `num_thresholds` values equally spaced between
the filter's minimum and maximum score over the sample set ('linear', the
default) or at equally spaced ranks of the sorted scores ('rank').

Everything is computed from sufficient statistics: per filter, threshold and
class, the count (or score sum) of the samples at or above the threshold,
[F, T, C]. Statistics of disjoint row chunks add up, so a driver can stream a
layer far larger than memory from the feature store: one cheap pass for each
filter's min/max (`score_range`, combined with min/max), one pass summing
`entropy_statistics`, then `entropy_from_statistics`. `threshold_statistics`
is that driver for anything sliceable by rows (numpy arrays, memmaps, jax
arrays, a store's LayerView).

The kernel never builds a [samples, thresholds] intermediate: each sample's
number of thresholds passed is found by search (arithmetic for an equally
spaced grid), then one scatter-add per chunk fills a [F, T + 1, C] histogram
whose reverse cumulative sum over the bins gives the counts at every
threshold. Memory is a few times the chunk (plus one host staging block);
time is linear in the samples, plus O(F T C) per chunk.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import progress

METHODS = ('label', 'weighted', 'spmax')
THRESHOLD_KINDS = ('linear', 'rank')
TABLE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)     # seeds Table 2.1 columns
CURVE_POINTS = 30                           # seeds fig 2-2: MCAuE at k/30
DEFAULT_CHUNK_ELEMENTS = 1 << 24            # activation values per kernel call
# The arithmetic search of an equally spaced grid is exact while rounding
# moves a score by well under one grid step: (hi - lo) must exceed
# _GRID_SAFETY * T * ulp(max(|lo|, |hi|)); otherwise binary search is used.
_GRID_SAFETY = 16.0


def check_method(method: str) -> None:
  """Raises ValueError naming the valid entropy methods."""
  if method not in METHODS:
    raise ValueError(f'unknown entropy method {method!r}; valid: '
                     f'{", ".join(METHODS)}')


def sample_scores(acts, method: str):
  """The scores of a method's samples, grouped by example.

  Args:
    acts: [N, H, W, F] maps or [N, F] vectors (one position).
    method: one of METHODS.

  Returns:
    [N, S, F] float32 scores: S = H * W positions ('label', 'weighted') or
    1 spatial maximum ('spmax').

  Raises:
    ValueError: on an unknown method or an activation rank other than 2 or 4.
  """
  check_method(method)
  acts = jnp.asarray(acts, jnp.float32)
  if acts.ndim == 2:
    maps = acts[:, None, :]                                  # [N, 1, F]
  elif acts.ndim == 4:
    maps = acts.reshape(acts.shape[0], -1, acts.shape[-1])   # [N, H*W, F]
  else:
    raise ValueError('expected activations [N, H, W, F] or [N, F], got shape '
                     f'{tuple(acts.shape)}')
  if method == 'spmax':
    return maps.max(axis=1, keepdims=True)                   # [N, 1, F]
  return maps


@functools.partial(jax.jit, static_argnames=('method',))
def score_range(acts, method: str = 'label', valid=None):
  """Per-filter min and max score of a method's samples (the first pass).

  Args:
    acts: [N, H, W, F] or [N, F].
    method: one of METHODS ('label' and 'weighted' share their samples).
    valid: optional bool [N]; False rows (padding) are ignored.

  Returns:
    (lo [F], hi [F]) float32; combine chunks with minimum / maximum. A chunk
    without valid rows gives (+inf, -inf).
  """
  scores = sample_scores(acts, method)                       # [N, S, F]
  if valid is not None:
    keep = jnp.asarray(valid, bool)[:, None, None]
    return (jnp.where(keep, scores, jnp.inf).min(axis=(0, 1)),
            jnp.where(keep, scores, -jnp.inf).max(axis=(0, 1)))
  return scores.min(axis=(0, 1)), scores.max(axis=(0, 1))


def linear_thresholds(lo, hi, num_thresholds: int = 100) -> np.ndarray:
  """`num_thresholds` equally spaced values from lo to hi (both included).

  Args:
    lo, hi: [F] per-filter minimum and maximum score.
    num_thresholds: T >= 2.

  Returns:
    [F, T] float32; the first column is exactly lo and the last exactly hi,
    so the maximum always passes the last threshold. lo == hi (a constant
    filter, e.g. all zero) gives T equal thresholds.
  """
  if num_thresholds < 2:
    raise ValueError(f'num_thresholds must be >= 2, got {num_thresholds}')
  lo = np.asarray(lo, np.float32)[:, None]
  hi = np.asarray(hi, np.float32)[:, None]
  frac = (np.arange(num_thresholds) / (num_thresholds - 1)).astype(np.float32)
  grid = lo + (hi - lo) * frac[None]                         # [F, T]
  grid[:, 0], grid[:, -1] = lo[:, 0], hi[:, 0]
  return grid


def rank_indices(num_samples: int, num_thresholds: int) -> np.ndarray:
  """Ranks round(j * (M - 1) / (T - 1)), halves rounded up, j = 0..T-1.

  Integer arithmetic (int64: M * T exceeds int32 for pool1), so rank 0 is
  the minimum and rank M - 1 the maximum exactly.
  """
  if num_thresholds < 2:
    raise ValueError(f'num_thresholds must be >= 2, got {num_thresholds}')
  j = np.arange(num_thresholds, dtype=np.int64)
  span = np.int64(num_samples - 1)
  return ((2 * j * span + num_thresholds - 1) //
          (2 * (num_thresholds - 1))).astype(np.int32)


@jax.jit
def _sorted_pick(scores, ranks):
  """[M, f] scores -> [f, T] values at `ranks` of each sorted column.

  Sorts order-preserving int32 images of the floats: XLA:CPU sorts a
  single int operand with a fast primitive sort, floats with a generic
  comparator several times slower (pool1 has 11M samples per filter).
  The map flips the magnitude bits of negatives and is its own inverse.
  """
  flip = jnp.int32(0x7FFFFFFF)
  bits = jax.lax.bitcast_convert_type(scores.T, jnp.int32)   # [f, M]
  keys = jnp.where(bits < 0, bits ^ flip, bits)
  picked = jnp.sort(keys, axis=-1)[:, ranks]                 # [f, T]
  return jax.lax.bitcast_convert_type(
      jnp.where(picked < 0, picked ^ flip, picked), jnp.float32)


def rank_thresholds(acts, method: str = 'label', num_thresholds: int = 100,
                    valid=None, filter_chunk: int = 16) -> np.ndarray:
  """Thresholds at equally spaced ranks of each filter's sorted scores.

  Unlike min/max this needs every score of a filter at once, so it reads the
  whole example set, `filter_chunk` filters at a time (memory: one sorted
  [samples, filter_chunk] block).

  Args:
    acts: [N, H, W, F] or [N, F] in memory (numpy, memmap or jax array:
      it is sliced on the filter axis).
    method: one of METHODS.
    num_thresholds: T >= 2.
    valid: optional bool [N]; padding rows are left out of the ranking.
    filter_chunk: filters sorted per call.

  Returns:
    [F, T] float32, nondecreasing along T (ties repeat a value).
  """
  keep = None if valid is None else np.flatnonzero(np.asarray(valid))
  num_filters = acts.shape[-1]
  out = []
  ranks = None
  for start in range(0, num_filters, filter_chunk):
    block = acts[..., start:start + filter_chunk]
    if isinstance(block, jax.Array):
      block = np.asarray(block)            # the sort needs all rows together
    if keep is not None:
      block = block[keep]
    scores = sample_scores(block, method)                    # [N, S, f]
    scores = scores.reshape(-1, scores.shape[-1])            # [M, f]
    if ranks is None:
      ranks = jnp.asarray(rank_indices(scores.shape[0], num_thresholds))
    out.append(np.asarray(_sorted_pick(scores, ranks)))
  return np.concatenate(out, axis=0)


def grid_search_is_exact(lo, hi, num_thresholds: int) -> bool:
  """Whether the arithmetic search of a linear grid is exact for all filters.

  Arithmetic search guesses floor((s - lo) / step) + 1 and corrects it by one
  threshold either way; that is exact while float32 rounding (a few ulp of
  the largest magnitude) stays well under one grid step. Constant filters
  (lo == hi) are handled exactly.
  """
  lo = np.asarray(lo, np.float64)
  hi = np.asarray(hi, np.float64)
  magnitude = np.maximum(np.abs(lo), np.abs(hi))
  ulp = np.spacing(magnitude.astype(np.float32)).astype(np.float64)
  wide = (hi - lo) >= _GRID_SAFETY * num_thresholds * ulp
  return bool(np.all(wide | (hi == lo)))


def _count_passed(scores, thresholds, equally_spaced: bool):
  """Number of thresholds <= each score (i.e. thresholds the score passes).

  Args:
    scores: [N, S, F].
    thresholds: [F, T], nondecreasing along T.
    equally_spaced: use the arithmetic guess plus a one-step correction
      (two gathers) instead of binary search (~7 gathers); only valid where
      `grid_search_is_exact` holds for `linear_thresholds`.

  Returns:
    [N, S, F] int32 in [0, T].
  """
  num_filters, num_thresholds = thresholds.shape
  if not equally_spaced:
    search = jax.vmap(
        lambda grid, s: jnp.searchsorted(grid, s, side='right'),
        in_axes=(0, 2), out_axes=2)
    return search(thresholds, scores).astype(jnp.int32)
  flat = thresholds.reshape(-1)                              # [F*T]
  base = jnp.arange(num_filters, dtype=jnp.int32) * num_thresholds  # [F]
  lo, hi = thresholds[:, 0], thresholds[:, -1]               # [F]
  step = (hi - lo) / (num_thresholds - 1)
  guess = jnp.floor((scores - lo) / jnp.where(step > 0, step, 1.0)) + 1
  guess = jnp.where(step > 0, guess,
                    jnp.where(scores >= lo, num_thresholds, 0))
  guess = jnp.clip(guess, 0, num_thresholds).astype(jnp.int32)  # [N, S, F]
  above = jnp.take(flat, base + jnp.minimum(guess, num_thresholds - 1))
  guess = guess + ((guess < num_thresholds) & (above <= scores))
  below = jnp.take(flat, base + jnp.maximum(guess - 1, 0))
  return guess - ((guess > 0) & (below > scores))


def with_auto_axes(fn, *args):
  """Calls fn(*args) inside jit, letting the compiler place sharded inputs.

  Arrays sharded over a mesh with Explicit axes (the default of
  `jax.make_mesh`, used by the feature store's `to_sharded_jax`) make
  gathers and scatters ask for an output sharding. Switching the axes to
  automatic lets XLA partition the kernel itself: each device works on its
  rows and the [F, T, C] result is all-reduced (no all-gather of the data).
  Unsharded inputs call fn directly. The result is replicated.
  """
  mesh = jax.typeof(args[0]).sharding.mesh
  if mesh.empty or jax.sharding.AxisType.Explicit not in mesh.axis_types:
    return fn(*args)
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.sharding.auto_axes(
        fn, out_sharding=jax.sharding.PartitionSpec())(*args)


def _sample_bins(acts, labels, thresholds, valid, num_classes: int,
                 method: str, equally_spaced: bool):
  """Each sample's histogram bin (filter, thresholds passed, class), [N, S, F].

  Padding rows get the bin one past the end, which the scatter drops.
  """
  scores = sample_scores(acts, method)                       # [N, S, F]
  num_filters, num_thresholds = thresholds.shape
  passed = _count_passed(scores, jnp.asarray(thresholds, jnp.float32),
                         equally_spaced)                     # [N, S, F]
  labels = jnp.asarray(labels, jnp.int32)
  index = ((jnp.arange(num_filters, dtype=jnp.int32) * (num_thresholds + 1)
            + passed) * num_classes + labels[:, None, None])  # [N, S, F]
  if valid is None:
    return index
  past_end = num_filters * (num_thresholds + 1) * num_classes
  return jnp.where(jnp.asarray(valid, bool)[:, None, None], index, past_end)


def _histogram(index, acts, num_filters: int, num_thresholds: int,
               num_classes: int, method: str):
  """Scatter-adds the samples into their bins; counts at or above, [F, T, C]."""
  size = num_filters * (num_thresholds + 1) * num_classes
  if method == 'weighted':
    updates = sample_scores(acts, method).reshape(-1)
    hist = jnp.zeros(size, jnp.float32)
  else:
    updates = jnp.int32(1)
    hist = jnp.zeros(size, jnp.int32)
  hist = hist.at[index.reshape(-1)].add(updates, mode='drop')
  hist = hist.reshape(num_filters, num_thresholds + 1, num_classes)
  # A sample that passed b thresholds counts at thresholds 0..b-1.
  at_or_above = jnp.cumsum(hist[:, ::-1], axis=1)[:, ::-1]   # [F, T+1, C]
  return at_or_above[:, 1:]                                  # [F, T, C]


@functools.partial(jax.jit,
                   static_argnames=('num_classes', 'method', 'equally_spaced'))
def _bins_kernel(acts, labels, thresholds, valid, num_classes: int,
                 method: str, equally_spaced: bool):
  kernel = functools.partial(_sample_bins, num_classes=num_classes,
                             method=method, equally_spaced=equally_spaced)
  return with_auto_axes(kernel, acts, labels, thresholds, valid)


@functools.partial(jax.jit, static_argnames=(
    'num_filters', 'num_thresholds', 'num_classes', 'method'))
def _histogram_kernel(index, acts, num_filters: int, num_thresholds: int,
                      num_classes: int, method: str):
  kernel = functools.partial(_histogram, num_filters=num_filters,
                             num_thresholds=num_thresholds,
                             num_classes=num_classes, method=method)
  return with_auto_axes(kernel, index, acts)


def entropy_statistics(acts, labels, thresholds, num_classes: int,
                       method: str = 'label', valid=None,
                       equally_spaced: bool = False):
  """Per filter, threshold and class: the samples' count or score sum.

  Statistics of disjoint chunks of examples add up to those of their union.
  Inputs may be sharded over devices on the example axis.

  Two jitted stages, each sample's bin then one scatter-add: fused into one
  program, XLA:CPU computes the bins inside the serial scatter loop, about
  twice as slow as materialising them with vectorised code first.

  Args:
    acts: [N, H, W, F] or [N, F] activations of a chunk of examples.
    labels: [N] int class of each example, in [0, num_classes).
    thresholds: [F, T] nondecreasing per filter (`linear_thresholds` of the
      whole set's `score_range`, or `rank_thresholds`).
    num_classes: C.
    method: one of METHODS.
    valid: optional bool [N]; False rows (padding) contribute nothing.
    equally_spaced: thresholds are `linear_thresholds` and
      `grid_search_is_exact` holds (faster search, same result).

  Returns:
    [F, T, C]: entry (f, j, c) counts the samples of class c whose score on
    filter f is >= thresholds[f, j] (int32), or sums their scores
    ('weighted', float32).

  Raises:
    ValueError: F * (T + 1) * C bins overflow the int32 bin index.
  """
  check_method(method)
  num_filters, num_thresholds = thresholds.shape
  if num_filters * (num_thresholds + 1) * num_classes >= 2**31 - 1:
    raise ValueError(f'{num_filters} filters x {num_thresholds + 1} bins x '
                     f'{num_classes} classes overflow the int32 bin index')
  index = _bins_kernel(acts, labels, thresholds, valid, num_classes, method,
                       equally_spaced)
  return _histogram_kernel(index, acts if method == 'weighted' else None,
                           num_filters, num_thresholds, num_classes, method)


@jax.jit
def entropy_from_statistics(statistics):
  """Entropy curves in bits from [F, T, C] statistics.

  Empty histogram bins are skipped; a histogram with zero total (no sample
  at or above the threshold, or zero total weight) has entropy 0.

  Returns:
    [F, T] float32.
  """
  counts = jnp.asarray(statistics, jnp.float32)              # [F, T, C]
  total = counts.sum(axis=-1, keepdims=True)                 # [F, T, 1]
  p = counts / jnp.where(total > 0, total, 1.0)
  plogp = jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0)
  return jnp.where(total[..., 0] > 0, -plogp.sum(axis=-1), 0.0)


def _aligned_empty(shape, dtype) -> np.ndarray:
  """An uninitialised host array starting on a 64-byte boundary, the
  alignment XLA:CPU needs to read host memory in place."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + 64, np.uint8)
  offset = -raw.ctypes.data % 64
  return raw[offset:offset + size].view(dtype).reshape(shape)


def _map_blocks(fn, acts, labels, valid, rows: int,
                staging: Optional[dict] = None):
  """Yields fn(acts, labels, valid) as numpy for blocks of `rows` rows.

  A jax array that fits in one block is passed as given (a sharded one stays
  sharded). Otherwise the last block is zero-padded with valid False, so
  every block has the same shape and the jitted kernels compile once.

  Host blocks (numpy, memmaps, a store's LayerView) reach the kernels
  through a reused 64-byte-aligned buffer that XLA reads in place
  (`from_dlpack(copy=False)`): a plain transfer copies every block into
  freshly allocated memory, and first-touching those pages costs more than
  the reductions themselves (~6x the spatial max of a pool5 block). Each
  block's result is fetched before the buffer is refilled. Passes over the
  same set share `staging` (a dict the caller keeps) to reuse the buffer.
  """
  num_rows = acts.shape[0]
  labels = np.asarray(labels, np.int32)
  if rows >= num_rows and isinstance(acts, jax.Array):
    yield jax.tree.map(np.asarray, fn(acts, labels, valid))
    return
  staging = {} if staging is None else staging
  for start in range(0, num_rows, rows):
    stop = min(start + rows, num_rows)
    block = acts[start:stop]
    block_labels, block_valid = labels, valid
    if rows < num_rows:
      block_valid = np.zeros(rows, bool)
      block_valid[:stop - start] = (True if valid is None
                                    else np.asarray(valid[start:stop], bool))
      block_labels = np.zeros(rows, np.int32)
      block_labels[:stop - start] = labels[start:stop]
    if isinstance(block, jax.Array):
      block = jnp.pad(block, [(0, rows - (stop - start))]
                      + [(0, 0)] * (block.ndim - 1))
    else:
      shape = (rows,) + tuple(acts.shape[1:])
      key = (shape, np.dtype(block.dtype))
      if key not in staging:
        staging[key] = _aligned_empty(shape, block.dtype)
      staging[key][:stop - start] = block
      staging[key][stop - start:] = 0
      block = jax.dlpack.from_dlpack(staging[key], copy=False)
    yield jax.tree.map(np.asarray, fn(block, block_labels, block_valid))


def _rows_per_block(shape, chunk_elements: int) -> int:
  per_row = max(1, int(np.prod(shape[1:])))
  return max(1, min(shape[0], chunk_elements // per_row))


@jax.jit
def _block_spatial_max(block):
  return sample_scores(block, 'spmax')[:, 0]                 # [n, F]


def spatial_max(acts, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
  """Each map's maximum, [N, H, W, F] -> [N, F] float32, streamed by rows.

  The 'spmax' sample set: later passes read these [N, F] maxima instead of
  the maps. Accepts whatever `threshold_statistics` accepts. A jax array
  is reduced where it lives (the result keeps its row sharding); host
  float32 blocks by numpy in place, at memory speed (a pass through XLA
  first copies them); other host dtypes (float16 stores, which numpy
  reduces in emulation, ~15x slower) through the jitted kernel.
  """
  if isinstance(acts, jax.Array):
    return _block_spatial_max(acts)
  num_rows = acts.shape[0]
  rows = _rows_per_block(acts.shape, chunk_elements)
  if acts[0:0].dtype == np.float32:        # a store's LayerView decodes to it
    return np.concatenate([
        np.asarray(acts[start:start + rows]).max(axis=(1, 2))
        for start in range(0, num_rows, rows)])
  blocks = _map_blocks(lambda block, *_: _block_spatial_max(block), acts,
                       np.zeros(num_rows, np.int32), None, rows)
  return np.concatenate(list(blocks))[:num_rows]


def threshold_statistics(acts, labels, num_classes: int,
                         method: str = 'label', num_thresholds: int = 100,
                         thresholds: str = 'linear', valid=None,
                         chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Streams an example set through the two passes: thresholds, statistics.

  Args:
    acts: [N, H, W, F] or [N, F], anything sliceable by rows: numpy arrays,
      memmaps, jax arrays (sharded ones too), a feature store LayerView.
    labels: [N] int in [0, num_classes).
    num_classes: C.
    method: one of METHODS.
    num_thresholds: T >= 2 (taken from a given grid).
    thresholds: 'linear' (min to max, SPEC default), 'rank', or a given
      [F, T] grid (skips the first pass; e.g. 'label' and 'weighted' share
      their samples, hence their linear grid).
    valid: optional bool [N] marking real rows (e.g. the padding mask of a
      store's `to_sharded_jax`).
    chunk_elements: activation values per kernel call (bounds memory: the
      kernel holds a few int32/float32 copies of one chunk).

  Returns:
    (thresholds [F, T] float32, statistics [F, T, C] float64 summed over
    chunks).

  Raises:
    ValueError: unknown method or threshold kind, labels outside
      [0, num_classes), or no valid example.
  """
  check_method(method)
  given = not isinstance(thresholds, str)
  if not given and thresholds not in THRESHOLD_KINDS:
    raise ValueError(f'unknown threshold kind {thresholds!r}; valid: '
                     f'{", ".join(THRESHOLD_KINDS)}')
  labels = np.asarray(labels)
  num_rows = acts.shape[0]
  if labels.shape != (num_rows,):
    raise ValueError(f'labels have shape {labels.shape}, expected '
                     f'({num_rows},)')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'labels must lie in [0, {num_classes}), got '
                     f'[{labels.min()}, {labels.max()}]')
  num_filters = acts.shape[-1]
  rows = _rows_per_block(acts.shape, chunk_elements)
  if method == 'spmax' and len(acts.shape) == 4:
    # One sample per example: reduce the maps in one pass and keep the
    # [N, F] maxima, so the later passes never read the maps again.
    acts = spatial_max(acts, chunk_elements)
    rows = _rows_per_block(acts.shape, chunk_elements)

  staging = {}                             # one host buffer for both passes
  if given:
    grid = np.asarray(thresholds, np.float32)
    if grid.ndim != 2 or grid.shape[0] != num_filters:
      raise ValueError(f'thresholds have shape {grid.shape}, expected '
                       f'({num_filters}, T)')
    num_thresholds = grid.shape[1]
    equally_spaced = (
        np.array_equal(grid, linear_thresholds(grid[:, 0], grid[:, -1],
                                               num_thresholds))
        and grid_search_is_exact(grid[:, 0], grid[:, -1], num_thresholds))
  elif thresholds == 'rank':
    grid = rank_thresholds(acts, method, num_thresholds, valid)
    equally_spaced = False
  else:
    lo = np.full(num_filters, np.inf, np.float32)
    hi = np.full(num_filters, -np.inf, np.float32)
    ranges = _map_blocks(
        lambda block, _, block_valid: score_range(block, method, block_valid),
        acts, labels, valid, rows, staging)
    for block_lo, block_hi in ranges:
      lo, hi = np.minimum(lo, block_lo), np.maximum(hi, block_hi)
    if not np.all(np.isfinite(lo) & np.isfinite(hi)):
      raise ValueError('no valid example (or non-finite activations): '
                       'thresholds need each filter\'s min and max')
    grid = linear_thresholds(lo, hi, num_thresholds)
    equally_spaced = grid_search_is_exact(lo, hi, num_thresholds)

  grid_device = jnp.asarray(grid)
  total = np.zeros((num_filters, num_thresholds, num_classes), np.float64)
  line = progress.Progress(f'{method} statistics',
                           math.ceil(num_rows / rows), 'chunks')
  for statistics in _map_blocks(
      lambda block, block_labels, block_valid: entropy_statistics(
          block, block_labels, grid_device, num_classes, method,
          block_valid, equally_spaced),
      acts, labels, valid, rows, staging):
    total += statistics
    line.update()
  return grid, total


def entropy_curves(acts, labels, num_classes: int, method: str = 'label',
                   num_thresholds: int = 100, thresholds: str = 'linear',
                   valid=None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
  """Entropy curves of every filter (SPEC 6), in bits.

  Args: as `threshold_statistics`.

  Returns:
    [F, T] float32: entry (f, j) is the entropy of the class histogram of the
    samples whose score on filter f is >= the j-th threshold.
  """
  _, statistics = threshold_statistics(acts, labels, num_classes, method,
                                       num_thresholds, thresholds, valid,
                                       chunk_elements)
  return entropy_from_statistics(statistics)


@jax.jit
def aue(curves):
  """Area under each entropy curve with the threshold axis scaled to [0, 1].

  The mean over the T grid points (SPEC 6), [F, T] -> [F].
  """
  return jnp.mean(jnp.asarray(curves, jnp.float32), axis=-1)


@jax.jit
def mcaue(aue_values):
  """Mean cumulative AuE: entry i is the mean AuE of the i+1 lowest-AuE filters.

  [F] -> [F], nondecreasing; the last entry is the layer's mean AuE.
  """
  ordered = jnp.sort(jnp.asarray(aue_values, jnp.float32))   # [F]
  return jnp.cumsum(ordered) / jnp.arange(1, ordered.shape[0] + 1)


def filters_at_fraction(num_filters: int, fraction: float) -> int:
  """How many of the most selective filters a fraction of a layer means.

  Rule: ceil(fraction * F), the fewest filters covering at least that
  fraction, computed on the exact rational of `fraction` (0.1 -> 1/10,
  k/30 -> k/30) so float noise cannot push 10/30 * 96 = 32 to 33. Examples:
  F = 256: 0.1 -> 26, 0.25 -> 64, 0.5 -> 128; F = 384: 0.1 -> 39;
  F = 96, 1/30 -> 4.

  Raises:
    ValueError: fraction outside (0, 1].
  """
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction must lie in (0, 1], got {fraction}')
  exact = Fraction(fraction).limit_denominator(10**6)
  return max(1, math.ceil(exact * num_filters))


def mcaue_at(mcaue_values, fractions: Sequence[float] = TABLE_FRACTIONS):
  """MCAuE of the top `filters_at_fraction(F, f)` filters, for each fraction.

  Args:
    mcaue_values: [F] from `mcaue`.
    fractions: fractions of the layer's filters (Table 2.1: 0.1 .. 1.0).

  Returns:
    [len(fractions)] float32.
  """
  values = jnp.asarray(mcaue_values)
  picks = np.array([filters_at_fraction(values.shape[0], f) - 1
                    for f in fractions], np.int32)
  return values[picks]


def mcaue_curve(mcaue_values, num_points: int = CURVE_POINTS):
  """The seeds' MCAuE curve: MCAuE at fractions k / num_points, k = 1..n.

  Returns:
    (fractions [num_points] float64, values [num_points] float32).
  """
  points = np.arange(1, num_points + 1) / num_points
  return points, mcaue_at(mcaue_values, points)


def percent_decrease(mcaue_pre, mcaue_ft):
  """100 * (pre - ft) / pre (seeds eq. 2.1); positive = FT lowered it."""
  pre = jnp.asarray(mcaue_pre, jnp.float32)
  return 100.0 * (pre - jnp.asarray(mcaue_ft, jnp.float32)) / pre


def layer_summary(acts, labels, num_classes: int,
                  methods: Sequence[str] = METHODS,
                  num_thresholds: int = 100, thresholds: str = 'linear',
                  valid=None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
                  ) -> dict[str, dict[str, np.ndarray]]:
  """Everything seeds chapter 2 reports for one layer of one net.

  'label' and 'weighted' share their samples, so with linear thresholds
  the second reuses the first's grid and skips a pass over the layer.

  Returns:
    method -> dict of numpy arrays: 'aue' [F], 'mcaue' [F], 'table' [4]
    (MCAuE at TABLE_FRACTIONS), 'curve' [30] (MCAuE at k/30).
  """
  summaries, shared_grid = {}, None
  for method in methods:
    grid = thresholds
    if (method in ('label', 'weighted') and thresholds == 'linear'
        and shared_grid is not None):
      grid = shared_grid
    grid, statistics = threshold_statistics(
        acts, labels, num_classes, method, num_thresholds, grid, valid,
        chunk_elements)
    if method in ('label', 'weighted'):
      shared_grid = grid
    layer_aue = aue(entropy_from_statistics(statistics))
    cumulative = mcaue(layer_aue)
    summaries[method] = {
        'aue': np.asarray(layer_aue), 'mcaue': np.asarray(cumulative),
        'table': np.asarray(mcaue_at(cumulative)),
        'curve': np.asarray(mcaue_curve(cumulative)[1])}
  return summaries
