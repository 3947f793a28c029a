"""R-CNN's detector training and test scoring over a feature store (SPEC 4).

The stores hold, per image, its GT rows then its proposal rows
(`features.extract.proposal_boxes`); every function here reads one image's
rows at a time, so trainval and test sets far larger than memory stream
through. Features are transformed by an ablation (`analysis.ablations`) and
scaled to mean norm 20 on trainval before any SVM sees them.

Test scoring is split in steps that the task caches: the top candidates of
every image and class (`score_candidates`), optionally moved by the box
regressors (`train_box_regressors`, `regress_candidates`), then per-class
NMS of all images in a few jitted batches (`suppress`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import jax
import numpy as np

from cnnjax import progress as progress_lib
from cnnjax.analysis import ablations
from cnnjax.analysis import probes
from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.detection import bbox_reg
from cnnjax.detection import mining
from cnnjax.detection.nms import batched_nms
from cnnjax.features import store as store_lib
from cnnjax.metrics import Detections


# The most rows one jitted ablation call sees.
_ABLATION_CHUNK = 4096
# Image x class sets per batched NMS call: one compile, bounded memory.
_NMS_SETS_PER_CALL = 4096


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
    """[n, D] ablated features of `rows` (sp-shuffle seeded by the row id).

    The rows go through the jitted ablation in chunks of at most
    `_ABLATION_CHUNK` rows, each padded to `mining.padded_rows`: images with
    any number of proposals share a few compiled shapes, and a long read
    pads little.

    Args:
      rows: a slice or row indices.
    """
    raw = self.view.read(rows)                                 # [n, ...]
    row_ids = (np.arange(*rows.indices(self.view.num_rows))
               if isinstance(rows, slice) else
               np.asarray(rows, np.int64).reshape(-1))
    chunks = []
    for start in range(0, max(len(raw), 1), _ABLATION_CHUNK):
      part = raw[start:start + _ABLATION_CHUNK]                # [c, ...]
      ids = row_ids[start:start + _ABLATION_CHUNK]             # [c]
      padding = mining.padded_rows(len(ids)) - len(ids)
      part = np.pad(part, [(0, padding)] + [(0, 0)] * (part.ndim - 1))
      ablated = ablations.apply_ablation(self.ablation, part, rng=self.rng,
                                         example_ids=np.pad(ids, (0, padding)))
      chunks.append(np.asarray(ablated, np.float32)[:len(ids)])
    return np.concatenate(chunks)

  def proposal_rows(self, image: int) -> np.ndarray:
    """[R] store rows of the image's proposals (its GT rows left out)."""
    span = self.image_rows(image)
    return span.start + np.flatnonzero(~self.is_gt[span])


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
                    mining_config: mining.MiningConfig = mining.MiningConfig()
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
      make_train_fn(config), mining_config, num_images=len(images))


def score_candidates(reader: AblatedRows, scale: float, weights: np.ndarray,
                     biases: np.ndarray, *, top_k: int = 100
                     ) -> dict[str, np.ndarray]:
  """The top_k proposals of every test image and class by SVM score.

  GT rows are never scored. Ties keep the store's row order (a stable sort),
  as R-CNN's test does.

  Returns:
    rows: int64 [I, K, top_k] store rows of the candidates, best first (-1
      past the image's proposals).
    scores: float32 [I, K, top_k] their scores (-inf past the end).
  """

  def svm_scores(span, proposals):
    features = reader.features(span)[proposals - span.start] * scale
    return features @ weights + biases                             # [R, K]

  return _top_candidates(reader, weights.shape[1], top_k, svm_scores)


def chance_candidates(reader: AblatedRows, num_classes: int, *,
                      top_k: int = 100, seed: int = 0
                      ) -> dict[str, np.ndarray]:
  """`score_candidates` with uniform random scores: the chance detector.

  It ranks the same test proposals by chance, so its mAP (after the same
  NMS and AP) is the baseline a learned detector on these proposals must
  beat; reads no features.
  """
  rng = np.random.default_rng(seed)

  def random_scores(span, proposals):
    del span
    return rng.random((len(proposals), num_classes), np.float32)  # [R, K]

  return _top_candidates(reader, num_classes, top_k, random_scores)


def _top_candidates(reader: AblatedRows, num_classes: int, top_k: int,
                    score_fn) -> dict[str, np.ndarray]:
  """Rows and scores of the top_k proposals per image and class by
  `score_fn(image_span, proposal_rows) -> [R, K]` (see score_candidates)."""
  shape = (reader.num_images, num_classes, top_k)
  rows = np.full(shape, -1, np.int64)
  scores = np.full(shape, -np.inf, np.float32)
  progress = progress_lib.Progress('test scoring', reader.num_images,
                                   'images')
  for image in range(reader.num_images):
    span = reader.image_rows(image)
    proposals = reader.proposal_rows(image)                        # [R]
    if len(proposals):
      image_scores = score_fn(span, proposals)                     # [R, K]
      top = np.argsort(-image_scores, axis=0, kind='stable')[:top_k]
      rows[image, :, :len(top)] = proposals[top].T
      scores[image, :, :len(top)] = np.take_along_axis(image_scores, top,
                                                       axis=0).T
    progress.update()
  return {'rows': rows, 'scores': scores}


def candidate_boxes(reader: AblatedRows, rows: np.ndarray) -> np.ndarray:
  """[..., 4] boxes of the store rows `rows` [...] (zeros where rows < 0)."""
  boxes = reader.boxes[np.maximum(rows, 0)]
  return np.where(rows[..., None] >= 0, boxes, 0).astype(reader.boxes.dtype)


def suppress(boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray,
             nms_threshold: float = 0.3) -> list[Detections]:
  """Greedy NMS per image and class; the surviving detections of each class.

  Args:
    boxes: [I, K, T, 4] candidate boxes of every image and class.
    scores: [I, K, T].
    valid: [I, K, T] bool, real candidates.
    nms_threshold: a box with IoU > this to a kept box is suppressed.

  Returns:
    One Detections per class: image indices into the I images, in image
    order, each image's detections by decreasing score.
  """
  num_images, num_classes, top_k = scores.shape
  num_sets = num_images * num_classes
  chunk = min(_NMS_SETS_PER_CALL, mining.padded_rows(num_sets))
  padded = -(-num_sets // chunk) * chunk
  flat_boxes = np.zeros((padded, top_k, 4), np.float32)
  flat_scores = np.zeros((padded, top_k), np.float32)
  flat_valid = np.zeros((padded, top_k), bool)
  flat_boxes[:num_sets] = boxes.reshape(num_sets, top_k, 4)
  flat_scores[:num_sets] = np.where(valid, scores, 0).reshape(num_sets, top_k)
  flat_valid[:num_sets] = valid.reshape(num_sets, top_k)
  indices, kept = [], []
  for start in range(0, padded, chunk):
    part = slice(start, start + chunk)
    found, keep = batched_nms(flat_boxes[part], flat_scores[part],
                              flat_valid[part], nms_threshold, top_k)
    indices.append(np.asarray(found))
    kept.append(np.asarray(keep))
  shape = (num_images, num_classes, top_k)
  indices = np.concatenate(indices)[:num_sets].reshape(shape)
  kept = np.concatenate(kept)[:num_sets].reshape(shape)
  detections = []
  for k in range(num_classes):
    image, slot = np.nonzero(kept[:, k])       # image order, then rank
    position = indices[image, k, slot]
    detections.append(Detections(image.astype(np.int64),
                                 scores[image, k, position],
                                 boxes[image, k, position]))
  return detections


def train_box_regressors(reader: AblatedRows, images: Sequence[VocImage],
                         scale: float, num_classes: int, *,
                         min_overlap: float = bbox_reg.MIN_OVERLAP,
                         ridge_lambda: float = bbox_reg.RIDGE_LAMBDA
                         ) -> tuple[np.ndarray, np.ndarray]:
  """One ridge box regressor per class on trainval proposals (SPEC 4).

  Args:
    reader: the trainval store's pool5 (features of the regression).
    images: the trainval images (their GT boxes), in store order.
    scale: the pool5 features' mean-norm-20 factor.
    num_classes: K.
    min_overlap: proposals with IoU above this to their best GT are used.
    ridge_lambda: the ridge penalty (bias included).

  Returns:
    W [K, D, 4] and b [K, 4] (float64): offsets = features * scale @ W + b.
  """
  rows, classes, targets = [], [], []
  for index, image in enumerate(images):
    proposals = reader.proposal_rows(index)
    selected, labels, offsets = bbox_reg.regression_pairs(
        reader.boxes[proposals], image.boxes, image.labels, min_overlap)
    rows.append(proposals[selected])
    classes.append(labels)
    targets.append(offsets)
  rows, classes = np.concatenate(rows), np.concatenate(classes)
  targets = np.concatenate(targets)
  weights, biases = [], []
  progress = progress_lib.Progress('box regression fits', num_classes,
                                   'classes')
  for k in range(num_classes):
    mine = classes == k
    # One class's pairs at a time: memory stays at the largest class.
    features = reader.features(rows[mine]) * scale             # [S_k, D]
    class_weights, class_bias = bbox_reg.fit_ridge(features, targets[mine],
                                                   ridge_lambda)
    weights.append(class_weights)
    biases.append(class_bias)
    progress.update()
  return np.stack(weights), np.stack(biases)


def regress_candidates(reader: AblatedRows, scale: float, weights: np.ndarray,
                       biases: np.ndarray, rows: np.ndarray,
                       images: Sequence[VocImage]) -> np.ndarray:
  """Candidate boxes moved by their class's regressor, clipped to the image.

  Args:
    reader: the test store's pool5.
    scale: the pool5 features' factor (trainval's).
    weights: [K, D, 4] and biases [K, 4] of `train_box_regressors`.
    rows: int64 [I, K, T] candidate rows (`score_candidates`).
    images: the test images (their sizes), in store order.

  Returns:
    float64 [I, K, T, 4] boxes (the unmoved box where rows < 0).
  """
  boxes = candidate_boxes(reader, rows).astype(np.float64)       # [I, K, T, 4]
  progress = progress_lib.Progress('box regression', rows.shape[0], 'images')
  for image in range(rows.shape[0]):
    valid = rows[image] >= 0                                       # [K, T]
    if valid.any():
      span = reader.image_rows(image)
      features = reader.features(span) * scale                     # [R, D]
      candidates = features[np.where(valid, rows[image] - span.start, 0)]
      offsets = np.einsum('ktd,kdo->kto', candidates, weights) + biases[:, None]
      moved = bbox_reg.clip_boxes(
          bbox_reg.apply_offsets(boxes[image].reshape(-1, 4),
                                 offsets.reshape(-1, 4)),
          images[image].width, images[image].height)
      boxes[image] = np.where(valid[..., None],
                              moved.reshape(boxes[image].shape), boxes[image])
    progress.update()
  return boxes
