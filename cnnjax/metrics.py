"""PASCAL VOC2007 average precision (SPEC 5), as the devkit computes it.

Classification follows `VOCevalcls.m`, detection `VOCevaldet.m`; both end in
the 11-point AP. The devkit's details that change numbers are kept:

- Scores are sorted descending with a *stable* sort (MATLAB `sort(-score)`),
  so tied scores keep their input order.
- A detection is matched to the GT box of its image with the largest IoU
  (first one on ties), whether or not that box is taken already; IoU >= 0.5
  (not >) counts as a hit; hits on difficult boxes are ignored.
- Precision is NaN where nothing has been counted yet (0/0); MATLAB's `max`
  skips NaN, and so does the AP here.
- The recall levels are MATLAB's `0:0.1:1`, whose fourth element is
  0.1 * 3 = 0.30000000000000004 (the colon operator adds multiples of the
  step from the left end up to the middle, subtracts them from the right end
  after it), so a recall of exactly 0.3 does not reach that level.

Result files use the devkit's names and formats (`<comp>_cls_<split>_<class>
.txt` with `<image_id> <score>` lines, `<comp>_det_<split>_<class>.txt` with
`<image_id> <score> <x1> <y1> <x2> <y2>`), so results of other systems can be
scored by `cnnjax.tools.voc_eval` and ours by the official devkit.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from cnnjax import config_lib
from cnnjax.data import regions
from cnnjax.data.voc import VOC_CLASSES, VocImage

# MATLAB's 0:0.1:1, element for element (see the module docstring).
RECALL_LEVELS = np.array([k * 0.1 if k <= 5 else 1.0 - (10 - k) * 0.1
                          for k in range(11)])


class Detections(NamedTuple):
  """The detections of one class over an image set.

  Attributes:
    image_index: int [D], index of each detection's image in the GT list.
    scores: [D] confidences.
    boxes: [D, 4] (x1, y1, x2, y2), 1-based inclusive.
  """
  image_index: np.ndarray
  scores: np.ndarray
  boxes: np.ndarray


class GroundTruth(NamedTuple):
  """The GT boxes of one class in one image."""
  boxes: np.ndarray      # [G, 4] (x1, y1, x2, y2), 1-based inclusive.
  difficult: np.ndarray  # bool [G]


def ap_11point_columns(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
  """11-point AP of every column of a PR curve batch.

  Args:
    recall: [M, K], each column a (non-decreasing) recall curve.
    precision: [M, K] matching precisions (NaN entries are skipped).

  Returns:
    [K] mean over the 11 recall levels t of max precision at recall >= t
    (0 where no point reaches t).
  """
  recall = np.asarray(recall, np.float64)
  precision = np.asarray(precision, np.float64)
  counted = ~np.isnan(precision)
  ap = np.zeros(recall.shape[1:])
  for level in RECALL_LEVELS:
    candidates = np.where(counted & (recall >= level), precision, -np.inf)
    best = candidates.max(axis=0, initial=-np.inf)                  # [K]
    ap += np.where(np.isneginf(best), 0.0, best) / len(RECALL_LEVELS)
  return ap


def voc_ap_11point(recall: np.ndarray, precision: np.ndarray) -> float:
  """VOC2007's 11-point AP of one PR curve ([M] recall and precision)."""
  recall = np.asarray(recall, np.float64).reshape(-1, 1)
  precision = np.asarray(precision, np.float64).reshape(-1, 1)
  return float(ap_11point_columns(recall, precision)[0])


def _pr_from_counts(true_pos: np.ndarray, false_pos: np.ndarray,
                    num_pos) -> tuple[np.ndarray, np.ndarray]:
  """Recall and precision along axis 0 from per-rank TP/FP indicators."""
  tp = np.cumsum(true_pos, axis=0, dtype=np.float64)
  fp = np.cumsum(false_pos, axis=0, dtype=np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return tp / num_pos, tp / (tp + fp)


def cls_map(scores: np.ndarray,
            labels: np.ndarray) -> tuple[np.ndarray, float]:
  """PASCAL-CLS AP of every class (VOCevalcls) and their mean.

  Args:
    scores: [N, K] one score per image and class.
    labels: [N, K] +1 (present), -1 (absent) or 0 (only difficult: ignored).

  Returns:
    ap [K] and mAP. A class without positives has AP 0 (as in the devkit).

  Raises:
    ValueError: mismatched shapes.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.shape != labels.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and labels {labels.shape} must be '
                     'the same [N, K]')
  order = np.argsort(-scores, axis=0, kind='stable')                # [N, K]
  ranked = np.take_along_axis(labels, order, axis=0)
  recall, precision = _pr_from_counts(ranked > 0, ranked < 0,
                                      np.sum(labels > 0, axis=0))
  ap = ap_11point_columns(recall, precision)
  return ap, float(ap.mean())


def cls_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """PASCAL-CLS AP of one class: scores [N], labels [N] in {+1, -1, 0}."""
  scores = np.asarray(scores).reshape(-1, 1)
  labels = np.asarray(labels).reshape(-1, 1)
  return float(cls_map(scores, labels)[0][0])


def _match_detections(detections: Detections, gt: Sequence[GroundTruth]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Each detection's best IoU and matched GT (VOCevaldet's inner loop).

  Returns:
    best_iou [D] (-inf where the image has no GT), best_gt [D] (index into the
    concatenation of all GT boxes, -1 if none), all_difficult [G_total].
  """
  image_index, _, boxes = detections
  image_index = np.asarray(image_index).reshape(-1)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  gt = [GroundTruth(*g) for g in gt]
  if len(image_index) and (image_index.min() < 0 or
                           image_index.max() >= len(gt)):
    raise ValueError(f'detection image_index outside [0, {len(gt)}): '
                     f'{image_index.min()}..{image_index.max()}')
  sizes = np.array([len(g.boxes) for g in gt], np.int64)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  all_difficult = np.concatenate(
      [np.asarray(g.difficult, bool).reshape(-1) for g in gt] +
      [np.zeros(0, bool)])
  best_iou = np.full(len(image_index), -np.inf)
  best_gt = np.full(len(image_index), -1, np.int64)
  by_image = np.argsort(image_index, kind='stable')
  images, starts = np.unique(image_index[by_image], return_index=True)
  for image, rows in zip(images, np.split(by_image, starts[1:])):
    if sizes[image] == 0:
      continue
    overlaps = regions.iou(boxes[rows], gt[image].boxes)            # [d, G]
    best = np.argmax(overlaps, axis=1)          # first GT on ties, as `ov > ovmax`
    best_iou[rows] = overlaps[np.arange(len(rows)), best]
    best_gt[rows] = offsets[image] + best
  return best_iou, best_gt, all_difficult


def det_average_precision(detections: Detections, gt: Sequence[GroundTruth],
                          iou_threshold: float = 0.5
                          ) -> tuple[float, np.ndarray, np.ndarray]:
  """VOC2007 detection AP of one class (VOCevaldet).

  Args:
    detections: (image_index [D], scores [D], boxes [D, 4]), e.g. a
      `Detections`.
    gt: per image, that class's (GT boxes [G, 4], difficult [G]), e.g. a
      `GroundTruth`.
    iou_threshold: minimum IoU (>=) of a hit.

  Returns:
    (ap, recall [D], precision [D]) with the curves in ranked order
    (precision NaN at leading ranks that only hit difficult boxes). With no
    non-difficult GT the AP is 0, as in the devkit.

  Raises:
    ValueError: an image index outside the GT list.
  """
  best_iou, best_gt, all_difficult = _match_detections(detections, gt)
  order = np.argsort(-np.asarray(detections[1], np.float64).reshape(-1),
                     kind='stable')
  best_iou, best_gt = best_iou[order], best_gt[order]
  hit = best_iou >= iou_threshold                                   # [D]
  hit_difficult = np.zeros_like(hit)
  hit_difficult[hit] = all_difficult[best_gt[hit]]
  counted_hit = hit & ~hit_difficult
  # Matching never depends on earlier matches (VOC2007), so the first
  # detection in ranked order to hit a GT box takes it; later hits are FP.
  true_pos = np.zeros_like(hit)
  _, first = np.unique(np.where(counted_hit, best_gt, -1), return_index=True)
  true_pos[first[counted_hit[first]]] = True
  false_pos = ~hit | (counted_hit & ~true_pos)
  num_pos = int(np.sum(~all_difficult))
  recall, precision = _pr_from_counts(true_pos, false_pos, num_pos)
  return voc_ap_11point(recall, precision), recall, precision


def class_ground_truth(images: Sequence[VocImage],
                       class_index: int) -> list[GroundTruth]:
  """One class's GT boxes (difficult included, flagged) of every image."""
  return [GroundTruth(image.boxes[image.labels == class_index],
                      image.difficult[image.labels == class_index])
          for image in images]


def det_map(detections_by_class: Sequence[Detections],
            images: Sequence[VocImage],
            iou_threshold: float = 0.5) -> tuple[np.ndarray, float]:
  """Detection AP of the VOC classes and their mean.

  Args:
    detections_by_class: one Detections per class of VOC_CLASSES (image
      indices point into `images`).
    images: the annotated test images.
    iou_threshold: minimum IoU of a hit.

  Returns:
    ap [K] and mAP.

  Raises:
    ValueError: not one Detections per VOC class.
  """
  if len(detections_by_class) != len(VOC_CLASSES):
    raise ValueError(f'expected detections for the {len(VOC_CLASSES)} VOC '
                     f'classes, got {len(detections_by_class)}')
  ap = np.array([
      det_average_precision(dets, class_ground_truth(images, k),
                            iou_threshold)[0]
      for k, dets in enumerate(detections_by_class)])
  return ap, float(ap.mean())


def results_path(results_dir: str, comp: str, task: str, split: str,
                 class_name: str) -> str:
  """The devkit's result file name, e.g. `comp4_det_test_car.txt`."""
  return os.path.join(results_dir, f'{comp}_{task}_{split}_{class_name}.txt')


def _number(value) -> str:
  # Shortest text that reads back as the same float: no ties are created or
  # broken by writing, so the AP of a file equals the AP in memory.
  return repr(float(value))


def write_cls_results(results_dir: str, class_name: str,
                      image_ids: Sequence[str], scores: np.ndarray,
                      comp: str = 'comp1', split: str = 'test') -> str:
  """Writes `<comp>_cls_<split>_<class>.txt` atomically; returns its path."""
  scores = np.asarray(scores).reshape(-1)
  if len(image_ids) != len(scores):
    raise ValueError(f'{class_name}: {len(image_ids)} image ids but '
                     f'{len(scores)} scores')
  path = results_path(results_dir, comp, 'cls', split, class_name)
  config_lib.write_text_atomic(path, ''.join(
      f'{i} {_number(s)}\n' for i, s in zip(image_ids, scores)))
  return path


def write_det_results(results_dir: str, class_name: str,
                      image_ids: Sequence[str], scores: np.ndarray,
                      boxes: np.ndarray, comp: str = 'comp4',
                      split: str = 'test') -> str:
  """Writes `<comp>_det_<split>_<class>.txt` atomically; returns its path.

  Args:
    results_dir: destination folder.
    class_name: a VOC class name.
    image_ids: [D] the image id of each detection.
    scores: [D].
    boxes: [D, 4] (x1, y1, x2, y2), 1-based inclusive.
    comp: the devkit competition prefix (comp4: outside training data).
    split: the image set.
  """
  scores = np.asarray(scores).reshape(-1)
  boxes = np.asarray(boxes).reshape(-1, 4)
  if not len(image_ids) == len(scores) == len(boxes):
    raise ValueError(f'{class_name}: {len(image_ids)} image ids, '
                     f'{len(scores)} scores, {len(boxes)} boxes')
  path = results_path(results_dir, comp, 'det', split, class_name)
  config_lib.write_text_atomic(path, ''.join(
      f'{i} {_number(s)} {" ".join(_number(v) for v in box)}\n'
      for i, s, box in zip(image_ids, scores, boxes)))
  return path


def _read_columns(path: str, num_numbers: int
                  ) -> tuple[list[str], np.ndarray]:
  """Reads `<id> <number> x num_numbers` lines; blank lines are skipped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'results file not found: {path}')
  image_ids, values = [], []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      try:
        if len(fields) != num_numbers + 1:
          raise ValueError
        numbers = [float(v) for v in fields[1:]]
      except ValueError:
        raise ValueError(f'{path}:{line_number}: expected an image id and '
                         f'{num_numbers} numbers, got {line.strip()!r}'
                         ) from None
      image_ids.append(fields[0])
      values.append(numbers)
  return image_ids, np.asarray(values, np.float64).reshape(-1, num_numbers)


def read_cls_results(path: str) -> tuple[list[str], np.ndarray]:
  """Reads a classification results file: (image ids, scores [N])."""
  image_ids, values = _read_columns(path, 1)
  return image_ids, values[:, 0]


def read_det_results(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Reads a detection results file: (image ids, scores [D], boxes [D, 4])."""
  image_ids, values = _read_columns(path, 5)
  return image_ids, values[:, 0], values[:, 1:]
