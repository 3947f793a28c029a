"""The study's published numbers (seeds Tables 2.1-2.4, 3.1, 4.1, 4.2, 5.1, 5.2).

`paper_numbers.csv` holds one value per line with its table id, row and
column in the project's names (layers as Caffe blobs, nets as
pretrained/ft/fcft/fiftyfifty, classes as VOC_CLASSES, 'mAP') plus the
paper's own row label, so reports can put our value beside the paper's.
"""

from __future__ import annotations

import csv
import functools
import pathlib

PAPER_NUMBERS_CSV = pathlib.Path(__file__).with_name('paper_numbers.csv')
TABLES = ('2.1', '2.2', '2.3', '2.4', '3.1', '4.1', '4.2', '5.1', '5.2')


@functools.cache
def _rows() -> tuple[dict, ...]:
  with open(PAPER_NUMBERS_CSV, newline='') as f:
    return tuple({**row, 'value': float(row['value'])}
                 for row in csv.DictReader(f))


def paper_table(table: str) -> dict[tuple[str, str], float]:
  """{(row, column): value} for one table id, e.g. paper_table('2.3')."""
  if table not in TABLES:
    raise ValueError(f'unknown paper table {table!r}; known: {", ".join(TABLES)}')
  return {(r['row'], r['column']): r['value'] for r in _rows()
          if r['table'] == table}
