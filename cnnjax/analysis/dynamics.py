"""How the pretraining run learns over time (seeds chapter 4, fig 4-1; SPEC 6).

Two views of the ImageNet run's snapshots and log, both pure functions:

- conv1 filters of a snapshot as one RGB image: every 11x11x3 kernel
  contrast-stretched on its own (so weak and strong filters are equally
  visible, as in the seeds' figure) and tiled in a grid;
- the training loss and top-1 per logged step and the validation top-1 per
  evaluation, read from the run's `metrics.jsonl` (cnnjax.train writes it),
  with the steps where the learning rate dropped.

The PASCAL-CLS mAP of every snapshot and layer (seeds Table 4.1) is the
classification task's; `cnnjax.analyze` draws fig 4-1 from these functions.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

import numpy as np


def normalise_filters(kernel) -> np.ndarray:
  """conv1 kernel -> one contrast-stretched RGB image per filter.

  Each filter is mapped linearly to [0, 1] by its own minimum and maximum
  over its 11x11x3 values: a filter's colours keep their relative balance
  while every filter uses the full range. A constant filter (e.g. a dead
  one) becomes uniform grey 0.5.

  Args:
    kernel: [kh, kw, 3, C] HWIO kernel whose input channels are BGR (the
      network's input order, SPEC 1).

  Returns:
    [C, kh, kw, 3] float32 RGB in [0, 1].

  Raises:
    ValueError: a kernel that is not [kh, kw, 3, C].
  """
  kernel = np.asarray(kernel, np.float64)
  if kernel.ndim != 4 or kernel.shape[2] != 3:
    raise ValueError('expected a conv1 kernel [kh, kw, 3, C] (BGR inputs), '
                     f'got shape {kernel.shape}')
  filters = np.moveaxis(kernel[:, :, ::-1, :], -1, 0)      # [C, kh, kw, RGB]
  lo = filters.min(axis=(1, 2, 3), keepdims=True)          # [C, 1, 1, 1]
  span = filters.max(axis=(1, 2, 3), keepdims=True) - lo
  stretched = (filters - lo) / np.where(span > 0, span, 1.0)
  return np.where(span > 0, stretched, 0.5).astype(np.float32)


def filter_grid(kernel, columns: Optional[int] = None, pad: int = 1,
                background: float = 1.0) -> np.ndarray:
  """conv1 filters tiled row-major into one RGB image (fig 4-1, first row).

  Args:
    kernel: [kh, kw, 3, C] BGR conv1 kernel (`params['conv1']['kernel']`).
    columns: tiles per row; default ceil(sqrt(C)) (a near-square grid).
    pad: background pixels between tiles and around the grid.
    background: grey level of the padding and of unused tiles.

  Returns:
    [rows * (kh + pad) + pad, columns * (kw + pad) + pad, 3] float32 in
    [0, 1]; filter i sits at tile (i // columns, i % columns), its top-left
    pixel at (pad + row * (kh + pad), pad + col * (kw + pad)).
  """
  tiles = normalise_filters(kernel)                        # [C, kh, kw, 3]
  num, kh, kw, _ = tiles.shape
  columns = columns or math.ceil(math.sqrt(num))
  rows = math.ceil(num / columns)
  cells = np.full((rows * columns, kh + pad, kw + pad, 3), background,
                  np.float32)                       # [R*Q, kh+p, kw+p, 3]
  cells[:num, :kh, :kw] = tiles
  grid = cells.reshape(rows, columns, kh + pad, kw + pad, 3)
  grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * (kh + pad),
                                               columns * (kw + pad), 3)
  return np.pad(grid, ((pad, 0), (pad, 0), (0, 0)), constant_values=background)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a training run's metrics.jsonl, in file order.

  Raises:
    FileNotFoundError: no such file (names it).
    ValueError: a line that is not a JSON object with a 'step' (names the
      file and line).
  """
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{number}: not JSON ({e})') from e
      if not isinstance(record, dict) or 'step' not in record:
        raise ValueError(f'{path}:{number}: expected an object with a step')
      records.append(record)
  return records


def _column(records: Sequence[dict], key: str) -> np.ndarray:
  """[len(records)] float64 values of `key` (NaN where a record lacks it)."""
  return np.array([r.get(key, np.nan) for r in records], np.float64)


def lr_drop_steps(steps, lr) -> np.ndarray:
  """Logged steps whose learning rate is below the previous record's.

  With Caffe's step schedule these are the first logged steps after each
  drop (exact to within the logging interval).
  """
  steps, lr = np.asarray(steps), np.asarray(lr, np.float64)
  return steps[1:][lr[1:] < lr[:-1]]


def training_curves(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Loss and accuracy curves of a run from its metrics records.

  Training records (they carry 'loss') give the per-step curves, evaluation
  records (they carry 'val_top1') the validation curve. A record repeated
  for a step (a resumed run logs from its checkpoint on) keeps the last.

  Args:
    records: `read_metrics` output.

  Returns:
    dict of arrays: 'step', 'loss', 'top1', 'lr' (training, [S]);
    'eval_step', 'val_top1' and, where logged, 'val_top5', 'val_loss'
    ([E]); 'lr_drops' (`lr_drop_steps`). Empty arrays where a kind of record
    is absent; NaN where a record lacks a value.
  """
  def last_per_step(kind):
    by_step = {r['step']: r for r in records if kind in r}
    return [by_step[s] for s in sorted(by_step)]

  train = last_per_step('loss')
  evals = last_per_step('val_top1')
  curves = {'step': np.array([r['step'] for r in train], np.int64),
            'loss': _column(train, 'loss'),
            'top1': _column(train, 'top1'),
            'lr': _column(train, 'lr'),
            'eval_step': np.array([r['step'] for r in evals], np.int64),
            'val_top1': _column(evals, 'val_top1')}
  for key in ('val_top5', 'val_loss'):
    if any(key in r for r in evals):
      curves[key] = _column(evals, key)
  curves['lr_drops'] = lr_drop_steps(curves['step'], curves['lr'])
  return curves
