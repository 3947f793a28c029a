r"""Scores devkit-format result files with the VOC2007 devkit's AP.

  python -m cnnjax.tools.voc_eval --devkit VOCdevkit --year 2007 \
      --split test --results results/VOC2007/Main --task det

reads `<comp>_<task>_<split>_<class>.txt` for the 20 classes (any system's:
the competition prefix is found in the folder unless --comp names it) and
prints {"ap": {class: AP}, "mAP": ...} as JSON. As in the devkit, images
missing from a classification file score -inf, and an image id outside the
split is an error.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from cnnjax import config_lib
from cnnjax import metrics
from cnnjax.data import voc


def find_comp(results_dir: str, task: str, split: str) -> str:
  """The one competition prefix (`comp1`...) of the result files in a folder.

  Raises:
    FileNotFoundError: no result file of this task and split.
    ValueError: files of several prefixes (then --comp must choose).
  """
  suffix = f'_{task}_{split}_{voc.VOC_CLASSES[0]}.txt'
  found = sorted(os.path.basename(p)[:-len(suffix)] for p in
                 glob.glob(os.path.join(glob.escape(results_dir), f'*{suffix}')))
  if not found:
    raise FileNotFoundError(
        f'no {task} results for split {split!r} in {results_dir}: expected '
        f'files like comp4{suffix}')
  if len(found) > 1:
    raise ValueError(f'{results_dir} holds {task} results of several '
                     f'competitions ({", ".join(found)}); choose with --comp')
  return found[0]


def _class_paths(results_dir: str, comp: str, task: str, split: str
                 ) -> list[str]:
  """The 20 result files, raising one error naming every missing file."""
  paths = [metrics.results_path(results_dir, comp, task, split, name)
           for name in voc.VOC_CLASSES]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
        f'{len(missing)} result files missing: {", ".join(missing)}')
  return paths


def _image_rows(path: str, image_ids: Sequence[str],
                row_of: dict[str, int]) -> np.ndarray:
  unknown = sorted(set(image_ids) - set(row_of))
  if unknown:
    raise ValueError(f'{path}: image ids not in the split: {unknown[:5]}')
  return np.array([row_of[i] for i in image_ids], np.int64)


def evaluate_cls(images: Sequence[voc.VocImage],
                 paths: Sequence[str]) -> np.ndarray:
  """PASCAL-CLS AP [20] of the result files (one per class, devkit order)."""
  row_of = {image.image_id: row for row, image in enumerate(images)}
  scores = np.full((len(images), len(paths)), -np.inf)
  for k, path in enumerate(paths):
    image_ids, values = metrics.read_cls_results(path)
    rows = _image_rows(path, image_ids, row_of)
    if len(set(image_ids)) != len(image_ids):
      raise ValueError(f'{path}: an image is scored more than once')
    scores[rows, k] = values
  return metrics.cls_map(scores, voc.cls_labels(images))[0]


def evaluate_det(images: Sequence[voc.VocImage], paths: Sequence[str],
                 iou_threshold: float = 0.5) -> np.ndarray:
  """Detection AP [20] of the result files (one per class, devkit order)."""
  row_of = {image.image_id: row for row, image in enumerate(images)}
  detections = []
  for path in paths:
    image_ids, scores, boxes = metrics.read_det_results(path)
    detections.append(metrics.Detections(
        _image_rows(path, image_ids, row_of), scores, boxes))
  return metrics.det_map(detections, images, iou_threshold)[0]


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--devkit', required=True,
                      help='VOCdevkit folder (or its VOC<year> folder)')
  parser.add_argument('--year', default='2007')
  parser.add_argument('--split', default='test')
  parser.add_argument('--results', required=True,
                      help='folder of <comp>_<task>_<split>_<class>.txt files')
  parser.add_argument('--task', required=True, choices=('cls', 'det'))
  parser.add_argument('--comp', default=None,
                      help='competition prefix, e.g. comp4 (default: the '
                      'only one in --results)')
  parser.add_argument('--iou', type=float, default=0.5,
                      help='detection IoU threshold (>=)')
  parser.add_argument('--output', default=None, help='also write the JSON here')
  args = parser.parse_args(argv)
  try:
    comp = args.comp or find_comp(args.results, args.task, args.split)
    paths = _class_paths(args.results, comp, args.task, args.split)
    images = voc.load_voc_split(args.devkit, args.year, args.split)
    if args.task == 'cls':
      ap = evaluate_cls(images, paths)
    else:
      ap = evaluate_det(images, paths, args.iou)
  except (FileNotFoundError, ValueError) as err:
    parser.exit(2, f'voc_eval: error: {err}\n')
  report = {'task': args.task, 'year': args.year, 'split': args.split,
            'comp': comp, 'num_images': len(images),
            'ap': dict(zip(voc.VOC_CLASSES, ap.tolist())),
            'mAP': float(ap.mean())}
  json.dump(report, sys.stdout, indent=2)
  sys.stdout.write('\n')
  if args.output:
    config_lib.write_json_atomic(args.output, report)
  return report


if __name__ == '__main__':
  main()
