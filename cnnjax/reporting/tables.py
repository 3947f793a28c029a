"""Tables (CSV + markdown) and the PR-curve figure, in the seeds' layouts.

Every experiment writes its numbers through `write_table`, so the report and
users' spreadsheets read one format: a CSV with a `row` column and the
markdown rendering of the same table beside it.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from cnnjax import config_lib
from cnnjax.data.voc import VOC_CLASSES

# The seeds' column heads for the VOC classes (Table 2.3 layout).
SHORT_CLASS_NAMES = ('aero', 'bike', 'bird', 'boat', 'bottle', 'bus', 'car',
                     'cat', 'chair', 'cow', 'table', 'dog', 'horse', 'mbike',
                     'person', 'plant', 'sheep', 'sofa', 'train', 'tv')


def _cell(value, digits: int) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return '-'
  if isinstance(value, (float, np.floating)):
    return f'{value:.{digits}f}'
  return str(value)


def markdown_table(rows: Mapping[str, Mapping[str, object]],
                   columns: Sequence[str], row_header: str = '',
                   digits: int = 1) -> str:
  """A markdown table; missing cells are '-'."""
  lines = ['| ' + ' | '.join([row_header, *columns]) + ' |',
           '|' + '---|' * (len(columns) + 1)]
  for name, values in rows.items():
    cells = [_cell(values.get(c), digits) for c in columns]
    lines.append('| ' + ' | '.join([name, *cells]) + ' |')
  return '\n'.join(lines) + '\n'


def write_table(path_stem: str, rows: Mapping[str, Mapping[str, object]],
                columns: Sequence[str], *, title: str = '',
                row_header: str = '', digits: int = 1) -> tuple[str, str]:
  """Writes `<stem>.csv` and `<stem>.md` (atomically); returns both paths."""
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(['row', *columns])
  for name, values in rows.items():
    writer.writerow([name, *('' if values.get(c) is None else values.get(c)
                             for c in columns)])
  config_lib.write_text_atomic(path_stem + '.csv', buffer.getvalue())
  heading = f'**{title}**\n\n' if title else ''
  config_lib.write_text_atomic(path_stem + '.md',
                heading + markdown_table(rows, columns, row_header, digits))
  return path_stem + '.csv', path_stem + '.md'


def write_class_table(path_stem: str, per_class: Mapping[str, np.ndarray], *,
                      title: str = '', row_header: str = 'net/layer'
                      ) -> tuple[str, str]:
  """Per-class values [20] plus their mean, in the seeds' Table 2.3 layout."""
  rows = {}
  for name, values in per_class.items():
    values = np.asarray(values, np.float64)
    rows[name] = {**dict(zip(SHORT_CLASS_NAMES, values.tolist())),
                  'mAP': float(values.mean())}
  return write_table(path_stem, rows, [*SHORT_CLASS_NAMES, 'mAP'],
                     title=title, row_header=row_header)


def plot_pr_curves(path: str, detections, images, *, title: str = '',
                   iou_threshold: float = 0.5) -> str:
  """One panel per class: the precision/recall curve of the detections."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from cnnjax import metrics  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(4, 5, figsize=(15, 11), sharex=True, sharey=True)
  for k, ax in enumerate(axes.flat):
    ap, recall, precision = metrics.det_average_precision(
        detections[k], metrics.class_ground_truth(images, k), iou_threshold)
    ax.plot(recall, precision, lw=1.5)
    ax.set_title(f'{VOC_CLASSES[k]} AP {ap * 100:.1f}', fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel('recall')
  for ax in axes[:, 0]:
    ax.set_ylabel('precision')
  fig.suptitle(title)
  fig.tight_layout()
  return save_figure(fig, path)


def save_figure(fig, path: str, dpi: Optional[int] = 100) -> str:
  """Saves a matplotlib figure atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}.png'
  fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  os.replace(tmp, path)
  return path
