"""Region proposals: selective search "fast" as R-CNN ran it, and R-CNN's boxes.

R-CNN (SPEC 3) scores about 2,000 selective-search boxes per image. Its MATLAB
`selective_search_boxes.m` (fast mode) runs the hierarchical grouping of
Uijlings et al. for every combination of

  * Felzenszwalb-Huttenlocher segmentation, sigma 0.8, k in {50, 100}, with
    min size = k,
  * colour space HSV or Lab,
  * similarity colour+texture+size+fill or texture+size+fill,

concatenates the boxes, keeps those whose width AND height are at least 20
pixels (`FilterBoxesWidth`: `nr >= minLen & nc >= minLen`, sides counted
inclusively) and removes duplicates. OpenCV contrib's
`cv2.ximgproc.segmentation` implements the same grouping; its own
`switchToSelectiveSearchFast` preset uses k in {150, 300, 450}, so the
segmentations and strategies are configured here by hand.

All boxes are int32 [P, 4] (x1, y1, x2, y2), 1-based inclusive pixel indices.
OpenCV ranks the boxes by level times libc `rand()` (unseeded), so the order
it returns changes from run to run; the set does not. `selective_search`
therefore returns the boxes sorted (lexicographically), which makes the
result, and every cache built from it, reproducible. R-CNN scores every
proposal, so their order never mattered.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import scipy.io
from absl import logging

from cnnjax.data import regions
from cnnjax.data import voc
from cnnjax.data import workers

FELZENSZWALB_SIGMA = 0.8
FAST_KS = (50, 100)
MIN_BOX_SIDE = 20

_SEGMENTATION = cv2.ximgproc.segmentation


def _strategy(*names: str):
  """A multiple-similarity grouping strategy (equal weights, as in SS)."""
  makers = {
      'colour': _SEGMENTATION.createSelectiveSearchSegmentationStrategyColor,
      'texture': _SEGMENTATION.createSelectiveSearchSegmentationStrategyTexture,
      'size': _SEGMENTATION.createSelectiveSearchSegmentationStrategySize,
      'fill': _SEGMENTATION.createSelectiveSearchSegmentationStrategyFill,
  }
  return _SEGMENTATION.createSelectiveSearchSegmentationStrategyMultiple(
      *(makers[name]() for name in names))


def xywh_to_boxes(rects: np.ndarray) -> np.ndarray:
  """OpenCV rects (x, y, w, h), 0-based, to 1-based inclusive boxes.

  Args:
    rects: [P, 4] (x, y, w, h) with (x, y) the 0-based top-left pixel and
      w, h the number of pixels covered.

  Returns:
    int32 [P, 4] (x1, y1, x2, y2): x1 = x + 1, x2 = x + w (1-based inclusive).
  """
  rects = np.asarray(rects, np.int64).reshape(-1, 4)
  x, y, w, h = rects.T
  return np.stack([x + 1, y + 1, x + w, y + h], axis=1).astype(np.int32)


def filter_small_boxes(boxes: np.ndarray,
                       min_side: int = MIN_BOX_SIDE) -> np.ndarray:
  """Keeps boxes whose inclusive width and height are both >= `min_side`.

  This is R-CNN's `FilterBoxesWidth(boxes, 20)`: a box is dropped when
  EITHER side is shorter than 20 pixels.
  """
  width = boxes[:, 2] - boxes[:, 0] + 1  # [P]
  height = boxes[:, 3] - boxes[:, 1] + 1  # [P]
  return boxes[(width >= min_side) & (height >= min_side)]


def selective_search(image_rgb: np.ndarray, *, ks: Sequence[int] = FAST_KS,
                     sigma: float = FELZENSZWALB_SIGMA,
                     min_side: int = MIN_BOX_SIDE) -> np.ndarray:
  """Selective search "fast" (R-CNN's configuration) on one image.

  Args:
    image_rgb: uint8 [H, W, 3] RGB image.
    ks: Felzenszwalb thresholds; each segmentation uses min size = k.
    sigma: Gaussian smoothing before segmentation.
    min_side: boxes with a side shorter than this (pixels) are dropped.

  Returns:
    int32 [P, 4] unique boxes (x1, y1, x2, y2), 1-based inclusive, sorted
    lexicographically (see the module docstring for why).

  Raises:
    ValueError: the image is not [H, W, 3] uint8.
  """
  image_rgb = np.asarray(image_rgb)
  if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or (
      image_rgb.dtype != np.uint8):
    raise ValueError('selective_search needs a uint8 [H, W, 3] RGB image, got '
                     f'{image_rgb.dtype} {image_rgb.shape}')
  search = _SEGMENTATION.createSelectiveSearchSegmentation()
  search.addImage(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV))
  search.addImage(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2Lab))
  for k in ks:
    search.addGraphSegmentation(
        _SEGMENTATION.createGraphSegmentation(sigma, float(k), int(k)))
  search.addStrategy(_strategy('colour', 'texture', 'size', 'fill'))
  search.addStrategy(_strategy('texture', 'size', 'fill'))
  boxes = filter_small_boxes(xywh_to_boxes(search.process()), min_side)
  return np.unique(boxes, axis=0).astype(np.int32)  # sorted, no duplicates


def recall_at(proposals: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
              iou_threshold: float = 0.5) -> float:
  """Fraction of ground-truth boxes covered by a proposal with IoU >= t.

  Args:
    proposals: per image, [P_i, 4] boxes.
    gt_boxes: per image, [G_i, 4] ground-truth boxes (same order).
    iou_threshold: a GT box counts as found when its best proposal reaches it.

  Returns:
    Recall over all GT boxes of all images (nan when there are none).

  Raises:
    ValueError: the two lists differ in length.
  """
  if len(proposals) != len(gt_boxes):
    raise ValueError(f'{len(proposals)} proposal lists for {len(gt_boxes)} '
                     'images of ground truth')
  found = total = 0
  for boxes, gt in zip(proposals, gt_boxes):
    gt = np.asarray(gt).reshape(-1, 4)
    total += len(gt)
    if len(gt) and len(boxes):
      best = regions.iou(np.asarray(gt), np.asarray(boxes)).max(axis=1)  # [G]
      found += int((best >= iou_threshold).sum())
  return found / total if total else float('nan')


def _cache_path(cache_dir: str, image_id: str) -> str:
  return os.path.join(cache_dir, f'{image_id}.npy')


def _proposals_for_image(job: tuple[voc.VocImage, str]) -> None:
  """Worker: selective search on one image, saved atomically."""
  image, out_path = job
  boxes = selective_search(image.decode())
  tmp = f'{out_path}.tmp{os.getpid()}.npy'
  np.save(tmp, boxes)
  os.replace(tmp, out_path)


def compute_proposals(images: Sequence[voc.VocImage], cache_dir: str,
                      num_workers: int = 2) -> list[np.ndarray]:
  """Selective-search boxes of every image, cached as `<cache_dir>/<id>.npy`.

  Images already cached are not recomputed, so an interrupted run resumes
  where it stopped. The rest run in `num_workers` processes with a progress
  line (rate and ETA) in the log.

  Args:
    images: the images (decoded from their `path`, cached by `image_id`).
    cache_dir: folder of the cache; one per proposal method.
    num_workers: processes; 0 or 1 computes in this process.

  Returns:
    One int32 [P_i, 4] array per image, in the order of `images`.
  """
  os.makedirs(cache_dir, exist_ok=True)
  jobs = [(image, _cache_path(cache_dir, image.image_id)) for image in images
          if not os.path.exists(_cache_path(cache_dir, image.image_id))]
  if jobs:
    logging.info('selective search: %d of %d images to compute (cache %s)',
                 len(jobs), len(images), cache_dir)
    workers.map_in_processes(_proposals_for_image, jobs,
                             num_workers=num_workers, what='selective search')
  return [np.load(_cache_path(cache_dir, image.image_id)) for image in images]


def load_rcnn_mat(path: str, image_ids: Sequence[str]) -> list[np.ndarray]:
  """Reads R-CNN's precomputed selective-search boxes (a MATLAB v5 `.mat`).

  R-CNN ships e.g. `voc_2007_test.mat` with two cell arrays: `images` (the
  image ids) and `boxes` (per image, [P, 4] double [y1 x1 y2 x2], 1-based
  inclusive). MATLAB v7.3 (HDF5) files are not supported.

  Args:
    path: the `.mat` file.
    image_ids: the ids wanted, in the order wanted.

  Returns:
    One int32 [P_i, 4] (x1, y1, x2, y2) array per id of `image_ids`.

  Raises:
    KeyError: an id is missing from the file (names the ids and the file).
    ValueError: the file lacks `images`/`boxes` or a box array is not [P, 4].
  """
  contents = scipy.io.loadmat(path)
  if 'images' not in contents or 'boxes' not in contents:
    raise ValueError(f'{path}: expected cells `images` and `boxes`, found '
                     f'{sorted(k for k in contents if not k.startswith("__"))}')
  names = [str(np.asarray(name).ravel()[0])
           for name in contents['images'].ravel()]
  boxes_by_id = dict(zip(names, contents['boxes'].ravel()))
  missing = [image_id for image_id in image_ids if image_id not in boxes_by_id]
  if missing:
    raise KeyError(f'{path}: no boxes for {len(missing)} image ids, e.g. '
                   f'{missing[:5]}')
  result = []
  for image_id in image_ids:
    yxyx = np.asarray(boxes_by_id[image_id])
    if yxyx.size == 0:
      yxyx = yxyx.reshape(0, 4)
    if yxyx.ndim != 2 or yxyx.shape[1] != 4:
      raise ValueError(f'{path}: boxes of {image_id} have shape {yxyx.shape}, '
                       'expected [P, 4]')
    result.append(np.round(yxyx[:, [1, 0, 3, 2]]).astype(np.int32))
  return result
