r"""The study's report: every seed table beside the paper's, every figure.

`write_report(workdir)` reads what the experiments of a workdir wrote (the
tables and summaries of the detect, classify, analyze and train tasks; see
each task's module docstring for its files) and writes

  <workdir>/report/index.md              the report
  <workdir>/report/index.html            the same, for a browser
  <workdir>/report/figures/*.png         the figures, copied beside it
  <workdir>/report/tables/table_<id>.csv every (row, column) of a seed
                                         table: ours, paper

Every seed table (2.1-2.4, 3.1, 4.1, 4.2, 5.1, 5.2) is shown in the paper's
rows and columns, each row twice: our value and the paper's
(`paper.paper_table`). Every figure (2-1, 2-2, 3-1, 3-2, 3-4, 3-5, 4-1 and
the CKA figure) is shown beside one line on what the seed's figure shows.
What the workdir lacks is listed as missing, with the command that produces
it, never dropped. On demo data (a `:runlocal` study) the report opens with
why its numbers cannot be compared with the paper's.

The study task (cnnjax/study.py) writes the report at its end; it also runs
alone:

  python -m cnnjax.reporting.report --workdir W
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import json
import math
import os
import shutil
import time
from typing import Callable, Mapping, Optional, Sequence

from markdown_it import MarkdownIt

from cnnjax import config_lib
from cnnjax.data.voc import VOC_CLASSES
from cnnjax.models import caffenet
from cnnjax.reporting import paper
from cnnjax.reporting import tables

Cells = dict[tuple[str, str], float]

REPORT_DIR = 'report'
# The study's plan and step markers (cnnjax/study.py writes them).
STUDY_RECORD = os.path.join('study', 'study.json')
DONE_DIR = os.path.join('study', 'done')
FAILED_DIR = os.path.join('study', 'failed')
_DETECTION_TABLES = ('2.2', '2.3', '4.2', '5.2')


# ------------------------------------------------------------- readers ---

def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_csv_table(path: str) -> Cells:
  """{(row, column): value} of a `tables.write_table` CSV.

  A blank cell of a row the table has is NaN: computed but undefined (e.g.
  the percent decrease of a zero reference, an ablation on an fc layer).
  """
  cells = {}
  if not os.path.exists(path):
    return cells
  with open(path, newline='') as f:
    for record in csv.DictReader(f):
      row = record.pop('row')
      for column, text in record.items():
        cells[row, column] = float(text) if text else math.nan
  return cells


def _csv_reader(relative: str) -> Callable[[str], Cells]:
  return lambda workdir: read_csv_table(os.path.join(workdir, relative))


def detection_summary(workdir: str, net: str, layer: str,
                      ablation: str) -> Optional[dict]:
  """The detect task's summary.json of one cell, or None."""
  return _read_json(os.path.join(workdir, 'detect',
                                 f'{net}-{layer}-{ablation}', 'summary.json'))


def _detection_reader(rows: Mapping[str, tuple[str, str, str]]
                      ) -> Callable[[str], Cells]:
  """Per-class AP and mAP of detection cells, one table row per cell."""

  def read(workdir: str) -> Cells:
    cells = {}
    for row, cell in rows.items():
      summary = detection_summary(workdir, *cell)
      if summary is None:
        continue
      for name in VOC_CLASSES:
        cells[row, name] = float(summary['ap'][name])
      cells[row, 'mAP'] = float(summary['mAP'])
    return cells

  return read


def sun397_accuracy(workdir: str, net: str) -> Optional[float]:
  """The SUN-397 test top-1 (%) of one of the study's nets, or None.

  The pretrained net's is the linear SVMs' on its fc7 (the `classify`
  task's summary.json); FT's and FC-FT's the test evaluation at the end of
  their finetuning (the last `test_top1` of metrics.jsonl).
  """
  from cnnjax import classify  # pylint: disable=g-import-not-at-top
  from cnnjax import train  # pylint: disable=g-import-not-at-top
  from cnnjax.analysis import dynamics  # pylint: disable=g-import-not-at-top
  run_dir = os.path.join(workdir, 'sun397', net)
  if net == 'pretrained':
    summary = _read_json(os.path.join(run_dir, classify.SUN397_SUMMARY))
    return None if summary is None else float(summary['accuracy'])
  path = os.path.join(run_dir, train.METRICS_FILE)
  if not os.path.exists(path):
    return None
  evals = [r for r in dynamics.read_metrics(path) if 'test_top1' in r]
  return 100 * float(evals[-1]['test_top1']) if evals else None


def _table_2_2(workdir: str) -> Cells:
  cells = {}
  for net in ('pretrained', 'ft', 'fcft'):
    summary = detection_summary(workdir, net, 'fc7', 'unroll')
    if summary is not None:
      cells['fc7', f'detection_map/{net}'] = float(summary['mAP'])
    accuracy = sun397_accuracy(workdir, net)
    if accuracy is not None:
      cells['fc7', f'sun397_accuracy/{net}'] = accuracy
  return cells


# ---------------------------------------------------------------- specs ---

@dataclasses.dataclass(frozen=True)
class TableSpec:
  """A seed table: where our values come from, in the paper's layout.

  Attributes:
    table: the paper's table id ('2.3').
    title: what it measures.
    read: workdir -> {(row, column): our value}, in paper_numbers.csv names.
    source: the files `read` looks at (shown in the report).
    rows: the row order (default: the paper's).
    note: one line on how to read ours against the paper's.
    digits: decimals shown.
  """
  table: str
  title: str
  read: Callable[[str], Cells]
  source: str
  rows: Sequence[str] = ()
  note: str = ''
  digits: int = 1

  @property
  def product(self) -> str:
    return f'table{self.table}'


@dataclasses.dataclass(frozen=True)
class FigureSpec:
  """A figure: its files in the workdir and what the seed's figure shows."""
  figure: str            # '2-1', or 'CKA'
  title: str
  patterns: Sequence[str]  # globs relative to the workdir
  seeds: str             # one line: what the seed's figure shows

  @property
  def product(self) -> str:
    return 'cka' if self.figure == 'CKA' else f'fig{self.figure}'


_LAYER_ROWS = caffenet.STUDY_LAYERS

TABLES = (
    TableSpec('2.1', 'Percent decrease of MCAuE after finetuning (FT vs '
              'pretrained), three entropies, VOC07 test GT boxes',
              _csv_reader('analyses/entropy/table_2_1_ft.csv'),
              'analyses/entropy/table_2_1_ft.csv', rows=_LAYER_ROWS, digits=2,
              note='positive = the layer is more class-selective after '
              'finetuning.'),
    TableSpec('2.2', 'fc7: detection mAP (VOC07 test) and SUN-397 accuracy '
              'of the pretrained, FT and FC-FT nets', _table_2_2,
              'detect/<net>-fc7-unroll/summary.json, '
              'sun397/pretrained/summary.json, sun397/<ft|fcft>/metrics.jsonl',
              note='SUN-397: top-1 on the study\'s 40% test split, as the '
              'seeds; the pretrained net\'s is that of linear SVMs on its '
              'fc7 (it has no SUN-397 head), FT\'s and FC-FT\'s that of '
              'their own softmax.'),
    TableSpec('2.3', 'VOC07 test detection AP per class (R-CNN, no bounding-'
              'box regression)',
              _detection_reader({
                  'pool5/pretrained': ('pretrained', 'pool5', 'unroll'),
                  'pool5/ft': ('ft', 'pool5', 'unroll'),
                  'fc6/ft': ('ft', 'fc6', 'unroll'),
                  'fc6/fcft': ('fcft', 'fc6', 'unroll'),
                  'fc7/pretrained': ('pretrained', 'fc7', 'unroll'),
                  'fc7/ft': ('ft', 'fc7', 'unroll'),
                  'fc7/fcft': ('fcft', 'fc7', 'unroll')}),
              'detect/<net>-<layer>-unroll/summary.json'),
    TableSpec('2.4', 'VOC07 GT-box classification mAP per layer',
              _csv_reader('classify/gtbox/by_net/map.csv'),
              'classify/gtbox/by_net/map.csv', rows=_LAYER_ROWS),
    TableSpec('3.1', 'pool5 filters needed to reach 50% / 90% of the full '
              'GT-box classification AP, per class',
              _csv_reader('analyses/subsets/table_3_1.csv'),
              'analyses/subsets/table_3_1.csv', digits=0,
              note='demo nets are narrower: their pool5 has fewer filters '
              'than the 256 of the seeds.'),
    TableSpec('4.1', 'PASCAL-CLS mAP per layer over the pretraining '
              'snapshots (columns: the 310K schedule\'s steps)',
              _csv_reader('classify/pascal_cls/by_step/map.csv'),
              'classify/pascal_cls/by_step/map.csv', rows=_LAYER_ROWS,
              note='a demo pretraining keeps the same steps scaled to its '
              'length.'),
    TableSpec('4.2', 'VOC07 test detection AP of the 50-50 net (50K '
              'pretraining + 50K finetuning) vs FT',
              _detection_reader({
                  'pool5/fiftyfifty': ('fiftyfifty', 'pool5', 'unroll'),
                  'pool5/ft': ('ft', 'pool5', 'unroll'),
                  'fc7/fiftyfifty': ('fiftyfifty', 'fc7', 'unroll'),
                  'fc7/ft': ('ft', 'fc7', 'unroll')}),
              'detect/<net>-<layer>-unroll/summary.json'),
    TableSpec('5.1', 'PASCAL-CLS mAP per layer under the feature ablations '
              '(pretrained net)',
              _csv_reader('classify/pascal_cls/by_ablation/map.csv'),
              'classify/pascal_cls/by_ablation/map.csv', rows=_LAYER_ROWS),
    TableSpec('5.2', 'VOC07 test detection AP with ablated pool5 features '
              '(FT net)',
              _detection_reader({
                  'pool5/sp-max': ('ft', 'pool5', 'sp-max'),
                  'pool5/bin': ('ft', 'pool5', 'bin'),
                  'pool5/unroll': ('ft', 'pool5', 'unroll')}),
              'detect/ft-pool5-<ablation>/summary.json'),
)

FIGURES = (
    FigureSpec('2-1', 'AuE distributions per layer',
               ('analyses/entropy/fig2-1_aue_*.png',),
               'the left tail of the AuE histogram of fc6/fc7 grows heavier '
               'after finetuning (more discriminative filters); the conv '
               'layers barely change.'),
    FigureSpec('2-2', 'MCAuE vs fraction of filters',
               ('analyses/entropy/fig2-2_mcaue.png',),
               'mean cumulative AuE per layer for the three entropies: the '
               'finetuned curves (solid) fall below the pretrained ones '
               '(dash-dot) at fc6/fc7 only.'),
    FigureSpec('3-1', 'Precision curves of the 5 most selective pool5 '
               'filters per class', ('analyses/selectivity/fig3-1_precision.png',),
               'a few classes (person, bicycle) have very high-precision '
               'filters; most (sofa, horse) have none: few grandmother '
               'cells.'),
    FigureSpec('3-2', 'PR curves of the 5 best pool5 filters per class by AP',
               ('analyses/selectivity/fig3-2_pr.png',),
               'precision of single filters drops fast even at modest '
               'recall, except for person, bicycle and car; finetuning makes '
               'filters slightly more discriminative.'),
    FigureSpec('3-4', 'GT-box AP vs number of pool5 filters',
               ('analyses/subsets/fig3-4_subset_ap.png',),
               'person, car and cat need few filters; most classes need '
               '30-40 filters for 90% of the full AP: a distributed code; FT '
               'needs slightly fewer.'),
    FigureSpec('3-5', 'Overlap of the top-50 pool5 filters between classes',
               ('analyses/subsets/fig3-5_overlap_*.png',),
               'little overlap off the diagonal: classes use mostly '
               'different filters.'),
    FigureSpec('4-1', 'conv1 filters per snapshot; training loss and top-1',
               ('analyses/dynamics/fig4-1_dynamics.png',),
               'conv1 filters look nearly final by 15K of 310K iterations; '
               'the loss drops fast, then decays slowly except at the lr '
               'drop at 100K.'),
    FigureSpec('CKA', 'Linear CKA per layer (beyond the paper)',
               ('analyses/similarity/cka_nets.png',
                'analyses/similarity/cka_snapshots.png'),
               'not in the seeds; by their findings, finetuning should leave '
               'the conv layers nearly unchanged (CKA near 1) and change '
               'fc6/fc7 most.'),
)


# ------------------------------------------------------------ the study ---

def study_record(workdir: str) -> Optional[dict]:
  """The study's plan (configs/study.py as run), or None."""
  return _read_json(os.path.join(workdir, STUDY_RECORD))


def _is_demo(workdir: str, record: Optional[dict]) -> bool:
  if record is not None:
    return bool(record.get('runlocal'))
  config = _read_json(os.path.join(workdir, 'config.json')) or {}
  return bool(config.get('runlocal'))


def study_command(workdir: str, record: Optional[dict], product: str,
                  full_grid: bool = False) -> str:
  """The command that produces `product` in this workdir."""
  args = (record or {}).get('args')
  if args is None:
    args = 'runlocal' if _is_demo(workdir, record) else (
        'devkit_dir=...,pretrained=...')
  parts = [a for a in args.split(',') if a]
  if full_grid:
    parts = [a for a in parts if not a.startswith('det_grid=')]
    parts.append('det_grid=full')
  parts.append(f'only={product}')
  return (f'python -m cnnjax.main --config configs/study.py:{",".join(parts)}'
          f' --workdir {workdir}')


def _demo_notice(record: Optional[dict]) -> str:
  facts = (record or {}).get('demo') or {}
  if facts:
    detail = (
        f'a CaffeNet of width {facts["width"]:g} (every layer '
        f'{facts["width"]:g}x as wide as the seeds\') pretrained for '
        f'{facts["pretrain_steps"]} steps on {facts["pretrain_images"]} '
        f'generated {facts["pretrain_image_size"]} px images of '
        f'{facts["pretrain_classes"]} classes (the seeds: 310K steps on 1.2M '
        'ImageNet images of 1,000 classes), finetuned for '
        f'{facts["finetune_steps"]} steps (the seeds: 70K), on '
        f'{facts["voc_trainval"]} + {facts["voc_test"]} synthetic VOC-like '
        'scenes instead of VOC2007\'s 5,011 + 4,952 photographs, with every '
        f'region warped to {facts["input_size"]} px instead of 227')
  else:
    detail = ('a tiny CaffeNet, synthetic data, small inputs and few '
              'training steps')
  grid = ''
  if (record or {}).get('det_grid') == 'reduced':
    grid = (' Detection ran on the reduced grid (`det_grid=reduced`: the '
            'pretrained and FT nets only): the FC-FT and 50-50 rows need '
            '`det_grid=full`.')
  return ('> **These numbers are not comparable with the paper\'s.** This is '
          f'the demo run (`:runlocal`): {detail}. The demo exercises every '
          'step of the study end to end; its values show that the pipeline '
          'runs and roughly where the signal is, not what the paper '
          'measured. The paper\'s values are shown as the targets of a '
          f'full-scale run.{grid}\n')


def _step_status(workdir: str, record: Optional[dict]) -> list[str]:
  """The study's steps, each done (its time), failed (why) or not run."""
  if record is None:
    return ['No study record in this workdir (`study/study.json`): the '
            'experiments were run one by one.\n']
  lines = ['| step | what | status |', '|---|---|---|']
  for step in record['steps']:
    name = step['name']
    done = _read_json(os.path.join(workdir, DONE_DIR, f'{name}.json'))
    failed = _read_json(os.path.join(workdir, FAILED_DIR, f'{name}.json'))
    if done is not None:
      status = f'done ({_duration(done.get("seconds", 0))})'
    elif failed is not None:
      status = f'**failed**: {failed.get("error", "").splitlines()[0][:160]}'
    elif not step.get('selected', True):
      status = 'not selected (only= / skip=)'
    else:
      status = 'not run yet'
    lines.append(f'| {name} | {step.get("what", "")} | {status} |')
  return ['\n'.join(lines) + '\n']


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60:02d} s'
  return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


# ------------------------------------------------------------- rendering ---

def table_section(spec: TableSpec, workdir: str, record: Optional[dict],
                  out_dir: str) -> tuple[str, str]:
  """The markdown of one seed table and its status (complete|partial|missing).

  Also writes `<out_dir>/tables/table_<id>.csv` (row, column, ours, paper).
  """
  reference = paper.paper_table(spec.table)
  # Blank where the paper has no value either (fc-layer ablations, FC-FT's
  # frozen conv layers): nothing to show.
  ours = {key: value for key, value in spec.read(workdir).items()
          if key in reference or not math.isnan(value)}
  rows = [r for r in spec.rows if any(k[0] == r for k in reference)] or list(
      dict.fromkeys(r for r, _ in reference))
  columns = list(dict.fromkeys(c for _, c in reference))
  missing = [key for key in reference if key not in ours]
  status = ('missing' if len(missing) == len(reference) else
            'partial' if missing else 'complete')

  undefined = [key for key in reference
               if key in ours and math.isnan(ours[key])]
  pairs = [['row', 'column', 'ours', 'paper']]
  rendered = {}
  for row in rows:
    rendered[f'{row} (ours)'] = {c: _shown(ours.get((row, c)))
                                 for c in columns}
    rendered[f'{row} (paper)'] = {c: reference.get((row, c)) for c in columns}
    for column in columns:
      if (row, column) in reference or (row, column) in ours:
        pairs.append([row, column, _csv_value(ours.get((row, column))),
                      _csv_value(reference.get((row, column)))])
  _write_csv(os.path.join(out_dir, 'tables',
                          f'table_{spec.table.replace(".", "_")}.csv'), pairs)

  headers = [tables.SHORT_CLASS_NAMES[VOC_CLASSES.index(c)]
             if c in VOC_CLASSES else c for c in columns]
  markdown = tables.markdown_table(
      {name: dict(zip(headers, (values[c] for c in columns)))
       for name, values in rendered.items()}, headers, digits=spec.digits)
  lines = [f'## Table {spec.table}: {spec.title}\n',
           f'Ours from `{spec.source}`; paper: seeds Table {spec.table}. '
           f'Status: **{status}**.' + (f' Note: {spec.note}' if spec.note
                                       else '') + '\n', markdown]
  if undefined:
    lines.append(f'- n/d: {len(undefined)} cells computed but undefined in '
                 'our run (blank in our table: e.g. a percent decrease of a '
                 'zero reference).')
  if missing:
    missing_rows = [r for r in rows if all(
        (r, c) not in ours for c in columns if (r, c) in reference)]
    what = ('(all)' if status == 'missing' else
            f'rows {", ".join(missing_rows)}' if missing_rows else
            f'{len(missing)} cells')
    full_grid = (spec.table in _DETECTION_TABLES and record is not None and
                 record.get('det_grid') == 'reduced')
    command = study_command(workdir, record, spec.product, full_grid)
    lines.append(f'- **Missing** {what}: produce with `{command}`')
  return '\n'.join(lines) + '\n', status


def figure_section(spec: FigureSpec, workdir: str, record: Optional[dict],
                   out_dir: str) -> tuple[str, str]:
  """The markdown of one figure (copied into the report) and its status."""
  found = sorted(path for pattern in spec.patterns
                 for path in glob.glob(os.path.join(workdir, pattern)))
  lines = [f'## Figure {spec.figure}: {spec.title}\n',
           f'Seeds: {spec.seeds}\n']
  for path in found:
    name = os.path.basename(path)
    _copy_atomic(path, os.path.join(out_dir, 'figures', name))
    lines.append(f'![{name}](figures/{name})\n')
  if not found:
    lines.append(f'- **Missing**: produce with '
                 f'`{study_command(workdir, record, spec.product)}`\n')
  return '\n'.join(lines) + '\n', 'complete' if found else 'missing'


def _shown(value: Optional[float]):
  """A cell for the markdown table: 'n/d' for a computed, undefined one."""
  return 'n/d' if value is not None and math.isnan(value) else value


def _csv_value(value: Optional[float]) -> str:
  if value is None:
    return ''
  return 'n/d' if math.isnan(value) else f'{value:g}'


def _write_csv(path: str, rows: Sequence[Sequence[str]]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  os.replace(tmp, path)


def _copy_atomic(src: str, dst: str) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  tmp = f'{dst}.tmp{os.getpid()}'
  shutil.copyfile(src, tmp)
  os.replace(tmp, dst)


def write_report(workdir: str) -> str:
  """Writes `<workdir>/report/index.md` (+ figures, tables); returns its path.

  Runs on any workdir: what no experiment has written yet is listed as
  missing with the command that produces it.
  """
  workdir = os.path.abspath(workdir)
  out_dir = os.path.join(workdir, REPORT_DIR)
  record = study_record(workdir)
  sections, statuses = [], {}
  for spec in TABLES:
    text, statuses[f'Table {spec.table}'] = table_section(
        spec, workdir, record, out_dir)
    sections.append(text)
  for spec in FIGURES:
    text, statuses[f'Figure {spec.figure}'] = figure_section(
        spec, workdir, record, out_dir)
    sections.append(text)

  head = ['# cnnjax: the study\'s tables and figures\n',
          f'Workdir `{workdir}`, written {time.strftime("%Y-%m-%d %H:%M")}. '
          'Seeds: Agrawal, Girshick, Malik, *Analysis of Multilayer Neural '
          'Networks for Object Recognition* (2014).\n']
  if _is_demo(workdir, record):
    head.append(_demo_notice(record))
  head.append('| item | status |\n|---|---|\n' + ''.join(
      f'| {item} | {status} |\n' for item, status in statuses.items()))
  head.append('## Study steps\n')
  head += _step_status(workdir, record)
  text = '\n'.join(head + sections)
  os.makedirs(out_dir, exist_ok=True)
  config_lib.write_text_atomic(os.path.join(out_dir, 'index.html'),
                               html_page(text))
  path = os.path.join(out_dir, 'index.md')
  config_lib.write_text_atomic(path, text)
  return path


_HTML_STYLE = ('body{font-family:sans-serif;max-width:1400px;margin:auto;'
               'padding:1em}table{border-collapse:collapse;font-size:90%}'
               'td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}'
               'td:first-child,th:first-child{text-align:left}'
               'tr:nth-child(4n+3),tr:nth-child(4n+4){background:#f4f4f4}'
               'img{max-width:100%}blockquote{background:#fff4e0;'
               'margin:0;padding:0.5em 1em}')


def html_page(markdown_text: str) -> str:
  """The report's markdown as one self-contained HTML page (figures are
  the same relative links as in index.md)."""
  body = MarkdownIt('commonmark').enable('table').render(markdown_text)
  return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
          '<title>cnnjax report</title>'
          f'<style>{_HTML_STYLE}</style></head>\n<body>\n{body}'
          '</body></html>\n')


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m cnnjax.reporting.report',
      description='Write <workdir>/report/index.md: the seeds\' tables with '
      'our values beside the paper\'s, and the figures.')
  parser.add_argument('--workdir', required=True,
                      help='the study\'s (or any experiment\'s) workdir')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.workdir):
    parser.error(f'--workdir {args.workdir} is not a directory')
  print(write_report(args.workdir))


if __name__ == '__main__':
  main()
