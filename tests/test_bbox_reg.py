"""Bounding-box regression against R-CNN's MATLAB, transcribed."""

import numpy as np
import pytest

from cnnjax.data.voc import VocImage
from cnnjax.detection import bbox_reg
from cnnjax.detection import rcnn
from cnnjax.features import store as store_lib

EPS = np.finfo(np.float64).eps


def _rcnn_target(ex_box, gt_box):
  """get_examples in rcnn_train_bbox_regressor.m, one box pair."""
  src_w = ex_box[2] - ex_box[0] + EPS
  src_h = ex_box[3] - ex_box[1] + EPS
  src_ctr_x = ex_box[0] + 0.5 * src_w
  src_ctr_y = ex_box[1] + 0.5 * src_h
  gt_w = gt_box[2] - gt_box[0] + EPS
  gt_h = gt_box[3] - gt_box[1] + EPS
  gt_ctr_x = gt_box[0] + 0.5 * gt_w
  gt_ctr_y = gt_box[1] + 0.5 * gt_h
  return [(gt_ctr_x - src_ctr_x) / src_w, (gt_ctr_y - src_ctr_y) / src_h,
          np.log(gt_w / src_w), np.log(gt_h / src_h)]


def _rcnn_fit_predict(x_train, y_train, x_test, lam):
  """rcnn_train_bbox_regressor.m + rcnn_test_bbox_regressor.m: centre and
  whiten the targets, solve (A'A + lambda I) \\ A'y per target (bias column
  penalised), predict, undo the whitening."""
  n, d = x_train.shape
  a = np.concatenate([x_train, np.ones((n, 1))], axis=1)
  mu = y_train.mean(axis=0)
  y = y_train - mu
  s = y.T @ y / n
  eigvals, v = np.linalg.eigh(s)
  t = v @ np.diag(1 / np.sqrt(eigvals + 0.001)) @ v.T
  t_inv = v @ np.diag(np.sqrt(eigvals + 0.001)) @ v.T
  y = y @ t
  beta = np.stack([np.linalg.solve(a.T @ a + lam * np.eye(d + 1), a.T @ y[:, j])
                   for j in range(y.shape[1])], axis=1)
  pred = x_test @ beta[:-1] + beta[-1]
  return pred @ t_inv + mu


def _iou_loop(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
  inter = w * h
  area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
  area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
  return inter / (area_a + area_b - inter)


def test_targets_hand_worked_and_inverse():
  # Proposal: w = h = 40 (no +1), centre (30, 40). GT: w 40, h 80, centre
  # (40, 60) -> t = (10/40, 20/40, log 1, log 2).
  proposal = np.array([[10, 20, 50, 60]])
  gt = np.array([[20, 20, 60, 100]])
  np.testing.assert_allclose(bbox_reg.box_targets(proposal, gt),
                             [[0.25, 0.5, 0.0, np.log(2)]], atol=1e-12)
  np.testing.assert_allclose(
      bbox_reg.apply_offsets(proposal, [[0.25, 0.5, 0.0, np.log(2)]]), gt,
      atol=1e-9)
  rng = np.random.default_rng(0)
  xy = rng.uniform(1, 200, (50, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(20, 100, (50, 2))], axis=1)
  gts = boxes + rng.uniform(-5, 5, (50, 4))
  targets = bbox_reg.box_targets(boxes, gts)
  np.testing.assert_allclose(
      targets, [_rcnn_target(b, g) for b, g in zip(boxes, gts)], rtol=1e-12,
      atol=1e-12)
  np.testing.assert_allclose(bbox_reg.apply_offsets(boxes, targets), gts,
                             atol=1e-9)


def test_clip_boxes_to_the_image():
  np.testing.assert_array_equal(
      bbox_reg.clip_boxes([[-5.2, 3, 170, 130.5], [2, 0.5, 40, 60]], 160, 120),
      [[1, 3, 160, 120], [2, 1, 40, 60]])


@pytest.mark.parametrize('num', [12, 60])   # fewer / more rows than features
def test_ridge_predictions_equal_rcnn_whitened_solver(num):
  rng = np.random.default_rng(num)
  dim = 30
  x = rng.normal(0, 3, (num, dim))
  y = x[:, :4] * 0.05 + rng.normal(0.3, 0.2, (num, 4))
  x_test = rng.normal(0, 3, (7, dim))
  for lam in (1000.0, 1.0):
    weights, bias = bbox_reg.fit_ridge(x, y, lam)
    assert weights.shape == (dim, 4) and bias.shape == (4,)
    np.testing.assert_allclose(x_test @ weights + bias,
                               _rcnn_fit_predict(x, y, x_test, lam),
                               rtol=1e-7, atol=1e-10)


def test_ridge_without_examples_leaves_boxes_alone():
  weights, bias = bbox_reg.fit_ridge(np.zeros((0, 5)), np.zeros((0, 4)))
  np.testing.assert_array_equal(weights, np.zeros((5, 4)))
  np.testing.assert_array_equal(bias, np.zeros(4))


def test_regression_pairs_equal_loop():
  rng = np.random.default_rng(3)
  # GT 3 repeats GT 0 under another class: its proposals tie, and the
  # first GT wins (MATLAB's max).
  gt = np.array([[10, 10, 60, 50], [40, 30, 90, 95], [12, 8, 58, 52],
                 [10, 10, 60, 50]])
  labels = np.array([4, 7, 2, 9])
  jitter = rng.integers(-8, 9, (60, 4))
  proposals = gt[rng.integers(0, 3, 60)] + jitter
  selected, classes, targets = bbox_reg.regression_pairs(proposals, gt,
                                                         labels, 0.6)
  expected = []
  for r, box in enumerate(proposals):
    overlaps = [_iou_loop(box, g) for g in gt]
    best = int(np.argmax(overlaps))          # The first maximum, as MATLAB.
    if overlaps[best] > 0.6:
      expected.append((r, labels[best], _rcnn_target(box, gt[best])))
  assert 10 < len(expected) < 60
  np.testing.assert_array_equal(selected, [e[0] for e in expected])
  np.testing.assert_array_equal(classes, [e[1] for e in expected])
  np.testing.assert_allclose(targets, [e[2] for e in expected], atol=1e-12)
  empty = bbox_reg.regression_pairs(proposals, np.zeros((0, 4)), [], 0.6)
  assert [len(part) for part in empty] == [0, 0, 0]


def _toy_store(tmp_path):
  """Images with GT boxes and jittered proposals whose pool5 features hold
  the offsets to their best GT (plus noise features): a linear regressor
  recovers the GT boxes exactly."""
  rng = np.random.default_rng(0)
  images, feats = [], []
  rows = {'image_index': [], 'box': [], 'is_gt': [], 'label': []}
  for i in range(6):
    gt = np.array([[10, 12, 60, 70], [50, 20, 95, 90]], np.int32)
    labels = np.array([i % 2, 2], np.int32)
    images.append(VocImage(f'{i:06d}', '', 100, 100, gt, labels,
                           np.zeros(2, bool)))
    proposals = np.concatenate([
        gt[rng.integers(0, 2, 14)] + rng.integers(-5, 6, (14, 4)),
        [[1, 1, 30, 30]]]).astype(np.int32)
    boxes = np.concatenate([gt, proposals])
    _, _, offsets = bbox_reg.regression_pairs(boxes, gt, labels, -1.0)
    for b, box in enumerate(boxes):
      feats.append(np.concatenate([offsets[b] * 3.0, rng.normal(0, 1, 2)]))
      rows['image_index'].append(i)
      rows['box'].append(box)
      rows['is_gt'].append(b < 2)
      rows['label'].append(labels[b] if b < 2 else -1)
  feats = np.array(feats, np.float32)
  writer = store_lib.FeatureStoreWriter(
      str(tmp_path / 'store'), {'pool5': ((6,), 'float32')},
      num_rows=len(feats), shard_rows=len(feats))
  writer.write_shard(0, {'pool5': feats},
                     {k: np.array(v) for k, v in rows.items()})
  return images, writer.finalize()


def test_regressors_move_candidates_onto_their_gt(tmp_path):
  images, store = _toy_store(tmp_path)
  reader = rcnn.AblatedRows(store, 'pool5', 'unroll')
  scale = 0.5
  weights, biases = rcnn.train_box_regressors(
      reader, images, scale, 3, min_overlap=0.6, ridge_lambda=1e-6)
  assert weights.shape == (3, 6, 4) and biases.shape == (3, 4)
  # Candidates: every proposal under the class of its best GT, if near it.
  top_k = 16
  rows = np.full((len(images), 3, top_k), -1)
  expected = np.zeros(rows.shape + (4,))
  for i, image in enumerate(images):
    proposals = reader.proposal_rows(i)
    selected, classes, _ = bbox_reg.regression_pairs(
        reader.boxes[proposals], image.boxes, image.labels, 0.6)
    for k in range(3):
      mine = selected[classes == k]
      rows[i, k, :len(mine)] = proposals[mine]
      best = [np.argmax([_iou_loop(reader.boxes[r], g) for g in image.boxes])
              for r in proposals[mine]]
      expected[i, k, :len(mine)] = image.boxes[best]
  assert (rows >= 0).sum() > 40
  moved = rcnn.regress_candidates(reader, scale, weights, biases, rows,
                                  images)
  valid = rows >= 0
  np.testing.assert_allclose(moved[valid], expected[valid], atol=1e-3)
  np.testing.assert_array_equal(moved[~valid], 0)
