r"""Selective search "fast" (R-CNN's setting): boxes per image, recall, speed.

  python bench/bench_proposals.py                 # the voc_mini fixture
  python bench/bench_proposals.py --demo          # 40 demo VOC test images
  python bench/bench_proposals.py --devkit ~/data/VOCdevkit --split test \
      --max-images 100

Runs `proposals.selective_search` on every image of a devkit split, one at a
time in this process (OpenCV single-threaded, as each worker of
`compute_proposals` runs it), and prints JSON: boxes per image (mean, min,
max), recall of all GT boxes (difficult included) at IoU 0.5 and 0.7, and
seconds per image (wall and CPU). R-CNN's target: about 2,000 boxes per VOC
image and recall >= 0.9 at IoU 0.5 (0.98 reported by Uijlings et al. for
fast mode on VOC2007 test).
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import _common
import cv2
import numpy as np

from cnnjax.data import proposals
from cnnjax.data import synthetic
from cnnjax.data import voc

_VOC_MINI = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / (
    'voc_mini/VOCdevkit')


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--devkit', default=str(_VOC_MINI),
                      help='a VOCdevkit folder (default: the voc_mini fixture)')
  parser.add_argument('--split', default='trainval')
  parser.add_argument('--max-images', type=int, default=0, help='0: all')
  parser.add_argument('--demo', action='store_true',
                      help='use 40 generated demo VOC test images instead')
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  cv2.setNumThreads(1)
  devkit, split = args.devkit, args.split
  if args.demo:
    devkit = synthetic.demo_voc(tempfile.mkdtemp(), num_trainval=20,
                                num_test=40, num_workers=0)
    split = 'test'
  images = voc.load_voc_split(devkit, '2007', split)
  if args.max_images:
    images = images[:args.max_images]
  boxes, wall, cpu = [], [], []
  for image in images:
    pixels = image.decode()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    boxes.append(proposals.selective_search(pixels))
    wall.append(time.perf_counter() - wall_start)
    cpu.append(time.process_time() - cpu_start)
    _common.log(f'{image.image_id} {pixels.shape[1]}x{pixels.shape[0]}: '
                f'{len(boxes[-1])} boxes, {wall[-1]:.2f} s')
  gt = [image.boxes for image in images]
  counts = [len(b) for b in boxes]
  _common.print_json({
      'machine': _common.machine(),
      'devkit': devkit, 'split': split, 'images': len(images),
      'gt_boxes': int(sum(len(g) for g in gt)),
      'boxes_per_image': {'mean': float(np.mean(counts)),
                          'min': int(min(counts)), 'max': int(max(counts))},
      'recall_iou_0.5': proposals.recall_at(boxes, gt, 0.5),
      'recall_iou_0.7': proposals.recall_at(boxes, gt, 0.7),
      'seconds_per_image': {'wall': float(np.mean(wall)),
                            'cpu': float(np.mean(cpu))},
  })


if __name__ == '__main__':
  main()
