"""The study report: completeness, ours beside the paper's, missing items.

Runs on a synthetic workdir: table CSVs, detection summaries, SUN-397
metrics files and probe summary and figure PNGs written here in the tasks'
formats.
"""

import csv
import html
import json
import os

import numpy as np
import pytest

from cnnjax import config_lib
from cnnjax.data.voc import VOC_CLASSES
from cnnjax.models import caffenet
from cnnjax.reporting import paper
from cnnjax.reporting import report
from cnnjax.reporting import tables

_PNG = b'\x89PNG\r\n\x1a\nfake'


def _pairs(workdir, table):
  path = os.path.join(workdir, 'report', 'tables',
                      f'table_{table.replace(".", "_")}.csv')
  with open(path, newline='') as f:
    return {(r['row'], r['column']): (r['ours'], r['paper'])
            for r in csv.DictReader(f)}


def _detection(workdir, net, layer, ablation, ap):
  config_lib.write_json_atomic(
      os.path.join(workdir, 'detect', f'{net}-{layer}-{ablation}',
                   'summary.json'),
      {'net': net, 'layer': layer, 'ablation': ablation,
       'mAP': float(np.mean(ap)), 'ap': dict(zip(VOC_CLASSES, ap))})


@pytest.fixture
def workdir(tmp_path):
  """Table 2.4 complete, Table 2.3 / 2.2 partial, fig 3-5 drawn."""
  root = str(tmp_path)
  # Table 2.4 as classify writes it: rows layers, columns nets.
  gtbox = {layer: {'pretrained': 10.0 + i, 'ft': 20.0 + i}
           for i, layer in enumerate(caffenet.STUDY_LAYERS)}
  gtbox['fc6']['fcft'], gtbox['fc7']['fcft'] = 31.5, 32.25
  tables.write_table(os.path.join(root, 'classify/gtbox/by_net/map'), gtbox,
                     ['pretrained', 'ft', 'fcft'], row_header='layer')
  # Table 2.1 as the entropy analysis writes it, one percent decrease
  # undefined (blank).
  columns = [f'{m}@{f}' for m in ('label', 'weighted', 'spmax')
             for f in (0.1, 0.25, 0.5, 1.0)]
  entropy = {layer: {c: 0.5 * i for c in columns}
             for i, layer in enumerate(caffenet.STUDY_LAYERS)}
  entropy['fc7']['weighted@0.1'] = None
  tables.write_table(os.path.join(root, 'analyses/entropy/table_2_1_ft'),
                     entropy, columns, row_header='layer')
  _detection(root, 'ft', 'fc7', 'unroll', [float(k) for k in range(20)])
  _detection(root, 'ft', 'pool5', 'sp-max', [1.0] * 20)
  # SUN-397: FT with its final test record, FC-FT still without one (val
  # only), the pretrained net's linear SVMs.
  for mode, final in (('ft', {'step': 400, 'test_top1': 0.4375}),
                      ('fcft', None)):
    os.makedirs(os.path.join(root, 'sun397', mode))
    with open(os.path.join(root, 'sun397', mode, 'metrics.jsonl'), 'w') as f:
      f.write(json.dumps({'step': 200, 'val_top1': 0.25}) + '\n')
      f.write(json.dumps({'step': 300, 'loss': 1.0}) + '\n')
      f.write(json.dumps({'step': 400, 'val_top1': 0.4125}) + '\n')
      if final:
        f.write(json.dumps(final) + '\n')
  config_lib.write_json_atomic(
      os.path.join(root, 'sun397/pretrained/summary.json'),
      {'net': 'pretrained', 'layer': 'fc7', 'accuracy': 52.5,
       'mean_class_accuracy': 52.25})
  for net in ('pretrained', 'ft'):
    path = os.path.join(root, f'analyses/subsets/fig3-5_overlap_{net}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(_PNG)
  return root


def test_every_table_and_figure_is_in_the_report(workdir):
  text = open(report.write_report(workdir)).read()
  headings = [line for line in text.splitlines() if line.startswith('## ')]
  assert headings == (
      ['## Study steps'] +
      [f'## Table {t}: ' + spec.title for t, spec in
       zip(paper.TABLES, report.TABLES)] +
      [f'## Figure {spec.figure}: {spec.title}' for spec in report.FIGURES])
  assert [s.table for s in report.TABLES] == list(paper.TABLES)
  assert [s.figure for s in report.FIGURES] == [
      '2-1', '2-2', '3-1', '3-2', '3-4', '3-5', '4-1', 'CKA']
  statuses = dict(line.strip('| ').split(' | ') for line in text.splitlines()
                  if line.startswith(('| Table ', '| Figure ')))
  assert statuses == {
      'Table 2.1': 'complete', 'Table 2.2': 'partial', 'Table 2.3': 'partial',
      'Table 2.4': 'complete', 'Table 3.1': 'missing', 'Table 4.1': 'missing',
      'Table 4.2': 'partial', 'Table 5.1': 'missing', 'Table 5.2': 'partial',
      'Figure 2-1': 'missing', 'Figure 2-2': 'missing',
      'Figure 3-1': 'missing', 'Figure 3-2': 'missing',
      'Figure 3-4': 'missing', 'Figure 3-5': 'complete',
      'Figure 4-1': 'missing', 'Figure CKA': 'missing'}
  # Figures are copied beside the report and linked relatively.
  assert '![fig3-5_overlap_ft.png](figures/fig3-5_overlap_ft.png)' in text
  with open(os.path.join(workdir, 'report/figures/fig3-5_overlap_ft.png'),
            'rb') as f:
    assert f.read() == _PNG


def test_html_page_holds_every_table_and_figure_of_the_markdown(workdir):
  text = open(report.write_report(workdir)).read()
  page = open(os.path.join(workdir, 'report', 'index.html')).read()
  assert page.startswith('<!DOCTYPE html>') and page.endswith('</html>\n')
  markdown_tables = sum(1 for a, b in zip(text.splitlines(),
                                          text.splitlines()[1:])
                        if a.startswith('| ') and b.startswith('|---'))
  assert page.count('<table>') == markdown_tables >= 2
  for heading in (line[3:] for line in text.splitlines()
                  if line.startswith('## ')):
    assert f'<h2>{html.escape(heading, quote=False)}</h2>' in page
  # Figures keep their relative links, so the page shows them too.
  assert ('<img src="figures/fig3-5_overlap_ft.png" '
          'alt="fig3-5_overlap_ft.png" />') in page
  # Markdown markup is rendered, not shown.
  assert '**' not in page and '|---|' not in page


def test_ours_beside_the_papers(workdir):
  report.write_report(workdir)
  table_2_4 = _pairs(workdir, '2.4')
  assert table_2_4['fc7', 'ft'] == ('26', '87.1')
  assert table_2_4['pool1', 'pretrained'] == ('10', '43.2')
  assert table_2_4['fc7', 'fcft'] == ('32.25', '83.44')
  # A detection summary's class APs land in the paper's rows and columns.
  table_2_3 = _pairs(workdir, '2.3')
  assert table_2_3['fc7/ft', 'bicycle'] == ('1', '69.6')
  assert table_2_3['fc7/ft', 'mAP'] == ('9.5', '54.1')
  assert table_2_3['fc7/pretrained', 'mAP'] == ('', '45.5')
  assert _pairs(workdir, '4.2')['fc7/ft', 'tvmonitor'] == ('19', '64.7')
  assert _pairs(workdir, '5.2')['pool5/sp-max', 'mAP'] == ('1', '25.4')
  # Table 2.2: detection mAP and SUN-397 test top-1 (%), the pretrained
  # net's from its SVMs; a finetuning without its test record (val only) is
  # missing, not filled with its val top-1.
  table_2_2 = _pairs(workdir, '2.2')
  assert table_2_2['fc7', 'detection_map/ft'] == ('9.5', '54.1')
  assert table_2_2['fc7', 'sun397_accuracy/pretrained'] == ('52.5', '53.1')
  assert table_2_2['fc7', 'sun397_accuracy/ft'] == ('43.75', '56.8')
  assert table_2_2['fc7', 'sun397_accuracy/fcft'] == ('', '56.2')
  # A blank (undefined) cell is computed, shown as n/d, not missing.
  table_2_1 = _pairs(workdir, '2.1')
  assert table_2_1['fc7', 'weighted@0.1'] == ('n/d', '20.58')
  assert table_2_1['pool2', 'spmax@1.0'] == ('0.5', '0.23')
  # Blank cells where the paper has none either are left out (FC-FT's
  # frozen conv layers).
  assert ('pool5', 'fcft') not in table_2_4
  # Every paper cell of every table is paired, computed or not.
  for table in paper.TABLES:
    pairs = _pairs(workdir, table)
    for (row, column), value in paper.paper_table(table).items():
      assert float(pairs[row, column][1]) == value


def test_sun397_cells_of_the_three_nets(workdir):
  with open(os.path.join(workdir, 'sun397/fcft/metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 400, 'test_top1': 0.375}) + '\n')
  text = open(report.write_report(workdir)).read()
  table_2_2 = _pairs(workdir, '2.2')
  assert [table_2_2['fc7', f'sun397_accuracy/{net}'][0]
          for net in ('pretrained', 'ft', 'fcft')] == ['52.5', '43.75', '37.5']
  assert '40% test split' in text


def test_markdown_rows_show_ours_then_the_paper(workdir):
  text = open(report.write_report(workdir)).read()
  assert '| fc7 (ours) | 16.0 | 26.0 | 32.2 |' in text
  assert '| fc7 (paper) | 84.0 | 87.1 | 83.4 |' in text
  assert '| pool5 (ours) | 14.0 | 24.0 | - |' in text
  assert '| fc7 (ours) | 3.00 | 3.00 | 3.00 | 3.00 | n/d | 3.00 |' in text
  assert '- n/d: 1 cells computed but undefined' in text
  # Class columns use the seeds' short names.
  assert '|  | aero | bike | bird |' in text


def test_missing_items_name_the_command(workdir):
  text = open(report.write_report(workdir)).read()
  assert (f'**Missing** (all): produce with `python -m cnnjax.main --config '
          f'configs/study.py:devkit_dir=...,pretrained=...,only=table3.1 '
          f'--workdir {workdir}`') in text
  assert '**Missing** rows pool5/pretrained, pool5/ft, fc6/ft' in text
  assert 'only=fig4-1 --workdir' in text
  # Not a demo workdir: no demo notice.
  assert 'not comparable' not in text


def test_demo_study_says_why_numbers_are_not_comparable(workdir):
  config_lib.write_json_atomic(
      os.path.join(workdir, report.STUDY_RECORD),
      {'runlocal': True, 'args': 'runlocal', 'det_grid': 'reduced',
       'demo': {'width': 0.25, 'pretrain_steps': 800, 'pretrain_classes': 48,
                'pretrain_images': 4800, 'pretrain_image_size': 64,
                'input_size': 99, 'finetune_steps': 400, 'sun397_steps': 400,
                'voc_trainval': 300, 'voc_test': 300},
       'steps': [{'name': 'gtbox_cls', 'what': 'GT-box', 'selected': True},
                 {'name': 'detect_ft_fc7', 'what': 'det', 'selected': False}]})
  config_lib.write_json_atomic(
      os.path.join(workdir, report.DONE_DIR, 'gtbox_cls.json'),
      {'seconds': 125.0})
  text = open(report.write_report(workdir)).read()
  notice = text[text.index('> **These numbers are not comparable'):]
  notice = notice[:notice.index('\n')]
  for fact in ('width 0.25', '800 steps', '4800 generated 64 px images',
               '400 steps', '300 + 300 synthetic', 'warped to 99 px'):
    assert fact in notice
  assert '| gtbox_cls | GT-box | done (2 min 05 s) |' in text
  assert '| detect_ft_fc7 | det | not selected (only= / skip=) |' in text
  # Missing detection rows of the reduced demo grid point at the full grid.
  assert ('configs/study.py:runlocal,det_grid=full,only=table2.3 '
          f'--workdir {workdir}') in text
  assert 'configs/study.py:runlocal,only=table2.4' not in text


def test_cli_writes_the_report(workdir, capsys):
  report.main(['--workdir', workdir])
  assert capsys.readouterr().out.strip() == os.path.join(
      workdir, 'report', 'index.md')
  with pytest.raises(SystemExit):
    report.main(['--workdir', os.path.join(workdir, 'nowhere')])
