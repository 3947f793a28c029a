"""The voc_eval CLI on voc_mini with handmade result files (APs worked by hand)."""

import json
import subprocess
import sys

import pytest

from cnnjax.data import voc
from cnnjax.tools import voc_eval


def _write(folder, comp, task, lines_by_class, split='test_all'):
  for name in voc.VOC_CLASSES:
    path = folder / f'{comp}_{task}_{split}_{name}.txt'
    path.write_text(''.join(f'{line}\n' for line in lines_by_class.get(name, [])))


def _run(*args):
  result = subprocess.run(
      [sys.executable, '-m', 'cnnjax.tools.voc_eval', *args],
      capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout)


def test_det_results_of_another_system(voc_mini_devkit, tmp_path):
  _write(tmp_path, 'comp3', 'det', {
      # npos 4 (000005 has two more, difficult). Ranked: TP, ignored
      # (difficult), TP, FP (duplicate): rec 1/4 1/4 1/2 1/2, prec 1 1 1 2/3
      # -> levels 0..0.5 give 1, the other five 0: AP 6/11.
      'chair': ['000005 0.9 263 211 324 339', '000005 0.8 5 244 67 374',
                '000003 0.7 239 156 307 205', '000005 0.6 263.0 211 324 339'],
      # 1 of 7 cars at precision 1: recall 1/7 reaches levels 0 and 0.1.
      'car': ['000004 1.0 13 311 84 362'],
      'dog': ['000001 0.5 48 240 195 371'],
  })
  report = _run('--devkit', str(voc_mini_devkit), '--split', 'test_all',
                '--results', str(tmp_path), '--task', 'det')
  assert report['comp'] == 'comp3'
  assert report['ap']['chair'] == pytest.approx(6 / 11)
  assert report['ap']['car'] == pytest.approx(2 / 11)
  assert report['ap']['dog'] == pytest.approx(1.0)
  assert report['ap']['person'] == 0.0
  assert report['mAP'] == pytest.approx((6 / 11 + 2 / 11 + 1) / 20)


def test_cls_results_with_missing_images(voc_mini_devkit, tmp_path):
  _write(tmp_path, 'comp1', 'cls', {
      # Ranked 000002 (-), 000001 (+): AP 1/2.
      'dog': ['000001 0.9', '000002 0.95'],
      # Ranked 000005 (+), 000001 (-), 000003 (+): prec 1, 1/2, 2/3;
      # levels 0..0.5 -> 1, 0.6..1 -> 2/3.
      'chair': ['000003 0.2', '000005 0.8', '000001 0.5'],
  })
  output = tmp_path / 'out' / 'cls.json'
  report = _run('--devkit', str(voc_mini_devkit), '--split', 'test_all',
                '--results', str(tmp_path), '--task', 'cls',
                '--output', str(output))
  # Unscored images score -inf and keep the split order (000001..000005):
  # person in 000001 ranks 1st (AP 1), train 2nd (1/2), sofa 3rd (1/3),
  # car 4th (1/4); classes without positives have AP 0.
  expected = {'dog': 0.5, 'chair': (6 + 5 * 2 / 3) / 11, 'person': 1.0,
              'train': 0.5, 'sofa': 1 / 3, 'car': 0.25, 'aeroplane': 0.0}
  for name, ap in expected.items():
    assert report['ap'][name] == pytest.approx(ap), name
  assert report['mAP'] == pytest.approx(sum(expected.values()) / 20)
  assert json.loads(output.read_text()) == report


def test_missing_class_files_are_named(voc_mini_devkit, tmp_path, capsys):
  _write(tmp_path, 'comp4', 'det', {})
  (tmp_path / 'comp4_det_test_all_sheep.txt').unlink()
  (tmp_path / 'comp4_det_test_all_tvmonitor.txt').unlink()
  with pytest.raises(SystemExit) as exit_info:
    voc_eval.main(['--devkit', str(voc_mini_devkit), '--split', 'test_all',
                   '--results', str(tmp_path), '--task', 'det'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert '2 result files missing' in err
  assert 'comp4_det_test_all_sheep.txt' in err
  assert 'comp4_det_test_all_tvmonitor.txt' in err


def test_unknown_image_and_ambiguous_comp_are_errors(voc_mini_devkit, tmp_path,
                                                     capsys):
  _write(tmp_path, 'comp4', 'det', {'cat': ['009999 0.5 1 1 5 5']})
  args = ['--devkit', str(voc_mini_devkit), '--split', 'test_all',
          '--results', str(tmp_path), '--task', 'det']
  with pytest.raises(SystemExit):
    voc_eval.main(args)
  assert "comp4_det_test_all_cat.txt: image ids not in the split: ['009999']" \
      in capsys.readouterr().err
  _write(tmp_path, 'comp3', 'det', {})
  with pytest.raises(SystemExit):
    voc_eval.main(args)
  assert 'several competitions (comp3, comp4)' in capsys.readouterr().err
  assert voc_eval.main(args + ['--comp', 'comp3'])['mAP'] == 0.0
