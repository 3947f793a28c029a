"""R-CNN's detector training and test scoring over a feature store (SPEC 4).

The stores hold, per image, its GT rows then its proposal rows
(`features.extract.proposal_boxes`); every function here reads one image's
rows at a time, so trainval and test sets far larger than memory stream
through. Features are transformed by an ablation (`analysis.ablations`) and
scaled to mean norm 20 on trainval before any SVM sees them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from cnnjax.analysis import ablations
from cnnjax.analysis import probes
from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.detection import mining
from cnnjax.detection.nms import nms as greedy_nms
from cnnjax.features import store as store_lib
from cnnjax.metrics import Detections


@dataclasses.dataclass(frozen=True)
class SvmConfig:
  """SPEC 4's solver settings (liblinear via R-CNN)."""
  C: float = 1e-3
  pos_weight: float = 2.0
  bias_scale: float = 10.0
  tol: float = 0.1
  target_norm: float = 20.0
  norm_images: int = 200
  norm_boxes_per_image: int = 200
  seed: int = 0


def class_overlaps(boxes: np.ndarray, gt_boxes: np.ndarray,
                   gt_labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[R, K] max IoU of each box with the GT boxes of each class (0 if none)."""
  overlaps = np.zeros((len(boxes), num_classes), np.float32)
  if len(gt_boxes) and len(boxes):
    iou = regions.iou(boxes, gt_boxes)                       # [R, G]
    for k in np.unique(gt_labels):
      overlaps[:, k] = iou[:, gt_labels == k].max(axis=1)
  return overlaps


class AblatedRows:
  """Reads one image's rows of a store layer as ablated, flat features."""

  def __init__(self, store: store_lib.FeatureStore, layer: str, ablation: str,
               seed: int = 0):
    self.view = store.layer(layer)
    self.ablation = ablation
    self.rng = jax.random.key(seed)
    image_index = store.rows('image_index')
    self.boxes = store.rows('box')
    self.is_gt = store.rows('is_gt').astype(bool)
    self.labels = store.rows('label')
    # Rows are grouped by image: [start, stop) per image index.
    self.num_images = int(image_index.max()) + 1 if len(image_index) else 0
    self.starts = np.searchsorted(image_index, np.arange(self.num_images))
    self.stops = np.searchsorted(image_index, np.arange(self.num_images),
                                 side='right')

  def image_rows(self, image: int) -> slice:
    return slice(int(self.starts[image]), int(self.stops[image]))

  def features(self, rows) -> np.ndarray:
    """[n, D] ablated features of `rows` (sp-shuffle seeded by the row id)."""
    raw = self.view.read(rows)
    row_ids = np.arange(self.view.num_rows)[rows]
    return np.asarray(ablations.apply_ablation(
        self.ablation, raw, rng=self.rng, example_ids=row_ids), np.float32)


def feature_scale(reader: AblatedRows, config: SvmConfig) -> float:
  """Mean-norm-20 factor from up to 200 images x 200 boxes (fixed seed)."""
  rng = np.random.default_rng(config.seed)
  num = min(config.norm_images, reader.num_images)
  images = np.sort(rng.choice(reader.num_images, num, replace=False))
  rows = []
  for image in images:
    span = np.arange(reader.starts[image], reader.stops[image])
    take = min(config.norm_boxes_per_image, len(span))
    rows.append(np.sort(rng.choice(span, take, replace=False)))
  features = reader.features(np.concatenate(rows))
  return probes.scale_features(features, config.target_norm)


def make_train_fn(config: SvmConfig) -> mining.TrainFn:
  def train_fn(features, targets, mask):
    return probes.fit_linear_svm(
        features, targets, C=config.C, pos_weight=config.pos_weight,
        bias_scale=config.bias_scale, tol=config.tol, sample_mask=mask)
  return train_fn


def train_detectors(reader: AblatedRows, images: Sequence[VocImage],
                    scale: float, num_classes: int, config: SvmConfig,
                    mining_config: mining.MiningConfig = mining.MiningConfig(),
                    log: Callable[[str], None] = print
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Per-class SVMs with one pass of hard-negative mining over trainval.

  Positives: GT rows of the class (difficult included). Negatives: rows
  (proposals and other-class GT) with IoU < 0.3 to every GT of the class.

  Returns:
    W [D, K] and b [K] in the scaled feature space.
  """
  gt_rows = np.flatnonzero(reader.is_gt)
  positives = reader.features(gt_rows) * scale
  positive_labels = reader.labels[gt_rows]

  def image_rows() -> Iterator[mining.ImageRows]:
    for index, image in enumerate(images):
      rows = reader.image_rows(index)
      overlaps = class_overlaps(reader.boxes[rows], image.boxes, image.labels,
                                num_classes)
      yield mining.ImageRows(
          row_ids=np.arange(rows.start, rows.stop),
          features=reader.features(rows) * scale,
          negative=overlaps < mining.NEGATIVE_OVERLAP)

  return mining.train_with_mining(
      positives, positive_labels, image_rows(), num_classes,
      make_train_fn(config), mining_config, num_images=len(images), log=log)


def detect(reader: AblatedRows, scale: float, weights: np.ndarray,
           biases: np.ndarray, *, top_k: int = 100,
           nms_threshold: float = 0.3,
           log: Callable[[str], None] = print) -> list[Detections]:
  """Scores every test proposal (GT rows excluded), top-k and NMS per class.

  Returns:
    One Detections per class, image indices into the test image list.
  """
  num_classes = weights.shape[1]
  per_class = [[] for _ in range(num_classes)]
  start = time.time()
  for image in range(reader.num_images):
    rows = reader.image_rows(image)
    keep_rows = ~reader.is_gt[rows]
    boxes = reader.boxes[rows][keep_rows]
    if not len(boxes):
      continue
    scores = reader.features(rows)[keep_rows] * scale @ weights + biases
    for k in range(num_classes):
      top = np.argsort(-scores[:, k], kind='stable')[:top_k]
      kept = top[greedy_nms(boxes[top], scores[top, k], nms_threshold)]
      per_class[k].append((np.full(len(kept), image), scores[kept, k],
                           boxes[kept]))
    if (image + 1) % max(1, reader.num_images // 10) == 0:
      elapsed = time.time() - start
      log(f'detect: image {image + 1}/{reader.num_images}, ETA '
          f'{elapsed / (image + 1) * (reader.num_images - image - 1):.0f}s')
  return [Detections(*(np.concatenate(parts) for parts in zip(*found)))
          if found else Detections(np.zeros(0, int), np.zeros(0),
                                   np.zeros((0, 4), np.int32))
          for found in per_class]


def load_or(path: str, compute: Callable[[], dict]) -> dict:
  """The arrays cached at `path` (.npz), or computed, cached and returned."""
  if os.path.exists(path):
    with np.load(path) as cached:
      return dict(cached)
  arrays = compute()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return arrays
