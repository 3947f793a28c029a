"""R-CNN's bounding-box regression (SPEC 4; rcnn_train/test_bbox_regressor.m).

A class-specific linear map from a proposal's pool5 features (scaled to mean
norm 20, as for the SVMs) to the offsets that move the proposal P onto its
ground-truth box G:

  t_x = (g_x - p_x) / p_w,  t_y = (g_y - p_y) / p_h,
  t_w = log(g_w / p_w),     t_h = log(g_h / p_h),

with w = x2 - x1 and h = y2 - y1 (R-CNN's widths have no +1) and the centre
x = x1 + w / 2. Training pairs are the proposals whose IoU with their
best-overlapping GT box exceeds 0.6; each class has its own ridge regression
(lambda 1000, the bias penalised like the weights). As in R-CNN the targets
are centred on their mean before the fit and the mean is added back to the
predictions; R-CNN also whitens them, which leaves the predictions of a ridge
fit unchanged (the fit is linear in the targets and the whitening is undone
at test time), so it is not repeated here. At test time the offsets of the
SVM's top detections are applied before NMS and the boxes clipped to the
image.

Pure functions over arrays, float64; the feature store side is in
`detection.rcnn`.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from cnnjax.data import regions

MIN_OVERLAP = 0.6
RIDGE_LAMBDA = 1000.0
# R-CNN adds MATLAB's eps to widths, so a degenerate box divides by eps
# rather than by zero.
_EPS = np.finfo(np.float64).eps


def _centres_and_sizes(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
  """(x, y, w, h) [N] each: centres x1 + w/2 and sizes x2 - x1 (+ eps)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  width = boxes[:, 2] - boxes[:, 0] + _EPS
  height = boxes[:, 3] - boxes[:, 1] + _EPS
  return (boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width,
          height)


def box_targets(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """Regression targets that move each proposal onto its GT box.

  Args:
    proposals: [N, 4] (x1, y1, x2, y2).
    gt_boxes: [N, 4], the GT box of each proposal.

  Returns:
    float64 [N, 4] (t_x, t_y, t_w, t_h).
  """
  px, py, pw, ph = _centres_and_sizes(proposals)
  gx, gy, gw, gh = _centres_and_sizes(gt_boxes)
  return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw),
                   np.log(gh / ph)], axis=1)


def apply_offsets(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Moves boxes by predicted offsets (the inverse of `box_targets`).

  Args:
    boxes: [N, 4] (x1, y1, x2, y2).
    offsets: [N, 4] (t_x, t_y, t_w, t_h).

  Returns:
    float64 [N, 4] the moved boxes, unclipped.
  """
  px, py, pw, ph = _centres_and_sizes(boxes)
  offsets = np.asarray(offsets, np.float64).reshape(-1, 4)
  x = offsets[:, 0] * pw + px
  y = offsets[:, 1] * ph + py
  w = np.exp(offsets[:, 2]) * pw
  h = np.exp(offsets[:, 3]) * ph
  return np.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h],
                  axis=1)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
  """Clips 1-based boxes [N, 4] to an image of `width` x `height` pixels."""
  low = np.array([1.0, 1.0, 1.0, 1.0])
  high = np.array([width, height, width, height], np.float64)
  return np.clip(np.asarray(boxes, np.float64), low, high)


def fit_ridge(features: np.ndarray, targets: np.ndarray,
              ridge_lambda: float = RIDGE_LAMBDA
              ) -> tuple[np.ndarray, np.ndarray]:
  """Ridge regression with a penalised bias on mean-centred targets.

  Minimises |[X 1] beta - (Y - mean(Y))|^2 + lambda |beta|^2 (the bias is
  the last entry of beta, penalised like the weights, as R-CNN's solver
  does); the prediction X W + b then includes the mean. With fewer examples
  than features the equivalent dual system (N x N) is solved instead of the
  primal one (D x D).

  Args:
    features: [N, D].
    targets: [N, T].
    ridge_lambda: lambda.

  Returns:
    W [D, T] and b [T] (float64); zeros when N = 0 (boxes stay as they are).
  """
  features = np.asarray(features, np.float64)
  targets = np.asarray(targets, np.float64)
  num, dim = features.shape
  if num == 0:
    return np.zeros((dim, targets.shape[1])), np.zeros(targets.shape[1])
  mean = targets.mean(axis=0)                                  # [T]
  design = np.concatenate([features, np.ones((num, 1))], axis=1)  # [N, D+1]
  centred = targets - mean
  if num < dim + 1:
    gram = design @ design.T + ridge_lambda * np.eye(num)      # [N, N]
    beta = design.T @ scipy.linalg.solve(gram, centred, assume_a='pos')
  else:
    gram = design.T @ design + ridge_lambda * np.eye(dim + 1)  # [D+1, D+1]
    beta = scipy.linalg.solve(gram, design.T @ centred, assume_a='pos')
  return beta[:-1], beta[-1] + mean


def regression_pairs(proposals: np.ndarray, gt_boxes: np.ndarray,
                     gt_labels: np.ndarray,
                     min_overlap: float = MIN_OVERLAP
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The training pairs of one image: proposals near their best GT box.

  Args:
    proposals: [R, 4] the image's proposals.
    gt_boxes: [G, 4] its GT boxes (difficult included).
    gt_labels: [G] their class indices.
    min_overlap: a proposal is used when its IoU with its best GT box (the
      first one on ties) is above this.

  Returns:
    selected [S] indices into proposals, classes [S] (the best GT's class)
    and targets float64 [S, 4].
  """
  proposals = np.asarray(proposals).reshape(-1, 4)
  if not len(gt_boxes) or not len(proposals):
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)))
  overlaps = regions.iou(proposals, gt_boxes)                  # [R, G]
  best = overlaps.argmax(axis=1)                               # [R]
  selected = np.flatnonzero(overlaps.max(axis=1) > min_overlap)
  gt = np.asarray(gt_boxes)[best[selected]]
  return (selected, np.asarray(gt_labels)[best[selected]].astype(np.int64),
          box_targets(proposals[selected], gt))
