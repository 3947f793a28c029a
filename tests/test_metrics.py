"""VOC AP equals hand-worked examples and loop transcriptions of the devkit."""

import os

import numpy as np
import pytest

from cnnjax import metrics
from cnnjax.data import voc

# MATLAB's `for t=0:0.1:1`, transcribed from the colon operator's definition:
# left half a + k*d, right half b - (n-k)*d.
_MATLAB_LEVELS = [0.0 + k * 0.1 for k in range(6)] + [
    1.0 - (10 - k) * 0.1 for k in range(6, 11)]


def _devkit_11point(rec, prec):
  """The AP loop of VOCevalcls/VOCevaldet; MATLAB's max skips NaN."""
  ap = 0.0
  for t in _MATLAB_LEVELS:
    values = [p for r, p in zip(rec, prec) if r >= t and not np.isnan(p)]
    ap += (max(values) if values else 0.0) / 11
  return ap


def _vocevalcls(scores, labels):
  """VOCevalcls.m: [so,si]=sort(-out); tp=gt(si)>0; fp=gt(si)<0; ..."""
  order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Stable.
  tp = fp = 0
  npos = sum(1 for g in labels if g > 0)
  rec, prec = [], []
  for i in order:
    tp += labels[i] > 0
    fp += labels[i] < 0
    rec.append(tp / npos if npos else float('nan'))
    prec.append(tp / (tp + fp) if tp + fp else float('nan'))
  return _devkit_11point(rec, prec)


def _vocevaldet(image_index, scores, boxes, gt_boxes, gt_difficult,
                minoverlap=0.5):
  """VOCevaldet.m (VOC2007), one detection and one GT box at a time."""
  detected = [np.zeros(len(b), bool) for b in gt_boxes]
  npos = sum(int(np.sum(~d)) for d in gt_difficult)
  order = sorted(range(len(scores)), key=lambda d: -scores[d])  # Stable.
  tp, fp = [], []
  for d in order:
    i = image_index[d]
    bb = boxes[d]
    ovmax, jmax = -np.inf, -1
    for j, bbgt in enumerate(gt_boxes[i]):
      iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
      ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
      if iw > 0 and ih > 0:
        ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) +
              (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
        ov = iw * ih / ua
        if ov > ovmax:
          ovmax, jmax = ov, j
    t = f = 0
    if ovmax >= minoverlap:
      if not gt_difficult[i][jmax]:
        if not detected[i][jmax]:
          t = 1
          detected[i][jmax] = True
        else:
          f = 1
    else:
      f = 1
    tp.append(t)
    fp.append(f)
  tp, fp = np.cumsum(tp), np.cumsum(fp)
  with np.errstate(divide='ignore', invalid='ignore'):
    rec, prec = tp / npos, tp / (tp + fp)
  return _devkit_11point(rec, prec), rec, prec


def _py_faster_rcnn_voc_eval(image_index, scores, boxes, gt_boxes,
                             gt_difficult, ovthresh=0.5):
  """py-faster-rcnn's voc_eval.py matching rule (`ovmax > ovthresh`)."""
  detected = [np.zeros(len(b), bool) for b in gt_boxes]
  npos = sum(int(np.sum(~d)) for d in gt_difficult)
  tp, fp = [], []
  for d in np.argsort(-np.asarray(scores)):
    bbgt = np.asarray(gt_boxes[image_index[d]], float)
    bb = boxes[d]
    ixmin = np.maximum(bbgt[:, 0], bb[0])
    iymin = np.maximum(bbgt[:, 1], bb[1])
    ixmax = np.minimum(bbgt[:, 2], bb[2])
    iymax = np.minimum(bbgt[:, 3], bb[3])
    iw = np.maximum(ixmax - ixmin + 1., 0.)
    ih = np.maximum(iymax - iymin + 1., 0.)
    inters = iw * ih
    uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
           (bbgt[:, 2] - bbgt[:, 0] + 1.) * (bbgt[:, 3] - bbgt[:, 1] + 1.) -
           inters)
    overlaps = inters / uni
    ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
    t = f = 0
    if ovmax > ovthresh:
      if not gt_difficult[image_index[d]][jmax]:
        if not detected[image_index[d]][jmax]:
          t = 1
          detected[image_index[d]][jmax] = True
        else:
          f = 1
    else:
      f = 1
    tp.append(t)
    fp.append(f)
  tp, fp = np.cumsum(tp), np.cumsum(fp)
  return _devkit_11point(tp / npos, tp / np.maximum(tp + fp, 1e-300))


def test_recall_levels_are_matlab_colon_values():
  assert metrics.RECALL_LEVELS.tolist() == _MATLAB_LEVELS
  assert metrics.RECALL_LEVELS[3] == 0.30000000000000004
  assert metrics.RECALL_LEVELS[7] == 0.7


def test_cls_ap_hand_worked():
  # Ranked labels + - + 0 - +, npos 3:
  #   rec 1/3 1/3 2/3 2/3 2/3 1, prec 1 1/2 2/3 2/3 1/2 3/5.
  # Levels 0..0.3 -> 1 (4x); 0.4..0.6 -> 2/3 (3x); 0.7..1 -> 3/5 (4x).
  ap = metrics.cls_average_precision([.9, .8, .7, .6, .5, .4],
                                     [1, -1, 1, 0, -1, 1])
  assert ap == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11, abs=1e-15)


def test_cls_ap_ties_keep_input_order():
  # Tied scores: the negative listed first ranks first -> prec 0, 1/2.
  assert metrics.cls_average_precision([.5, .5], [-1, 1]) == pytest.approx(.5)
  assert metrics.cls_average_precision([.5, .5], [1, -1]) == pytest.approx(1.)


def test_cls_ap_recall_of_exactly_0_3_misses_the_fourth_level():
  # npos 10; 3 positives, 7 negatives, 7 positives. The first 3 give recall
  # 3/10 with precision 1, but 3/10 < 0.1*3 in floating point, so level 4
  # takes the best later precision 10/17 (as the devkit does).
  labels = [1] * 3 + [-1] * 7 + [1] * 7
  scores = np.arange(len(labels))[::-1].astype(float)
  expected = (3 * 1 + 8 * 10 / 17) / 11
  assert metrics.cls_average_precision(scores, labels) == pytest.approx(
      expected, abs=1e-15)
  assert _vocevalcls(list(scores), labels) == pytest.approx(expected)


def test_cls_map_equals_devkit_transcription_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 6, (150, 20)).astype(float)   # Many ties.
  labels = rng.choice([-1, -1, -1, 0, 1], (150, 20)).astype(np.int8)
  labels[:, 3] = -1                                      # No positive: AP 0.
  labels[:4, 5] = 0                                      # Leading NaN precision.
  scores[:4, 5] = 10
  ap, mean_ap = metrics.cls_map(scores, labels)
  expected = [_vocevalcls(list(scores[:, k]), list(labels[:, k]))
              for k in range(20)]
  np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
  assert ap[3] == 0.0
  assert mean_ap == pytest.approx(np.mean(expected), abs=1e-12)


def _hand_worked_detections():
  gt = [metrics.GroundTruth(np.array([[1, 1, 10, 10], [21, 1, 30, 10],
                                      [1, 21, 10, 30]]),
                            np.array([False, True, False])),
        metrics.GroundTruth(np.array([[1, 1, 10, 10]]), np.array([False]))]
  detections = metrics.Detections(
      image_index=np.array([0, 0, 0, 1, 0, 1]),
      scores=np.array([.9, .8, .7, .7, .6, .5]),
      boxes=np.array([[1, 1, 10, 10],     # A: TP.
                      [1, 1, 10, 10],     # A again: FP (duplicate).
                      [21, 1, 30, 10],    # Difficult: ignored.
                      [1, 1, 10, 10],     # Image 1's box: TP.
                      [1, 21, 10, 40],    # IoU 100/200 = 0.5 exactly: TP.
                      [50, 50, 60, 60]]))  # No overlap: FP.
  return detections, gt


def test_det_ap_hand_worked():
  detections, gt = _hand_worked_detections()
  ap, recall, precision = metrics.det_average_precision(detections, gt)
  # Ranked TP FP - TP TP FP, npos 3.
  np.testing.assert_allclose(recall, [1/3, 1/3, 1/3, 2/3, 1, 1])
  np.testing.assert_allclose(precision, [1, 1/2, 1/2, 2/3, 3/4, 3/5])
  # Levels 0..0.3 -> 1 (4x), 0.4..1 -> 3/4 (7x).
  assert ap == pytest.approx((4 + 7 * 0.75) / 11, abs=1e-15)


def test_det_iou_of_exactly_half_is_a_hit_unlike_py_faster_rcnn():
  detections, gt = _hand_worked_detections()
  args = (detections.image_index, detections.scores,
          detections.boxes.astype(float), [g.boxes for g in gt],
          [g.difficult for g in gt])
  ours = metrics.det_average_precision(detections, gt)[0]
  assert ours == pytest.approx(_vocevaldet(*args)[0], abs=1e-15)
  # py-faster-rcnn (IoU > 0.5) counts the 0.5 box as FP: rec stops at 2/3,
  # levels 0..0.3 -> 1, 0.4..0.6 -> 2/3, the rest 0.
  other = _py_faster_rcnn_voc_eval(*args)
  assert other == pytest.approx((4 + 3 * 2 / 3) / 11, abs=1e-15)
  assert ours - other == pytest.approx(3.25 / 11, abs=1e-15)


def _random_detections(rng, gt_boxes, num_images, per_image, sizes):
  """Jittered copies of GT boxes, exact duplicates and random boxes; tied scores."""
  image_index, boxes = [], []
  for i in range(num_images):
    for _ in range(per_image):
      if len(gt_boxes[i]) and rng.random() < 0.7:
        base = gt_boxes[i][rng.integers(len(gt_boxes[i]))]
        box = base + rng.integers(-6, 7, 4) * (rng.random() < 0.7)
      else:
        x, y = rng.integers(1, sizes[i][0] // 2), rng.integers(1, sizes[i][1] // 2)
        box = np.array([x, y, x + rng.integers(5, 80), y + rng.integers(5, 80)])
      image_index.append(i)
      boxes.append(box)
  scores = rng.integers(0, 8, len(boxes)).astype(float) / 8   # Ties.
  return np.array(image_index), scores, np.array(boxes, float)


def test_det_equals_devkit_transcription_on_generated_gt():
  rng = np.random.default_rng(1)
  num_images = 12
  gt_boxes, gt_difficult = [], []
  for _ in range(num_images):
    n = rng.integers(0, 5)
    xy = rng.integers(1, 150, (n, 2))
    gt_boxes.append(np.concatenate([xy, xy + rng.integers(10, 90, (n, 2))], 1))
    gt_difficult.append(rng.random(n) < 0.3)
  gt_boxes[0] = np.array([[10, 10, 60, 60], [12, 12, 62, 62]])  # Overlapping.
  gt_difficult[0] = np.array([True, False])
  image_index, scores, boxes = _random_detections(
      rng, gt_boxes, num_images, 8, [(250, 250)] * num_images)
  detections = metrics.Detections(image_index, scores, boxes)
  gt = [metrics.GroundTruth(b, d) for b, d in zip(gt_boxes, gt_difficult)]
  for threshold in (0.5, 0.7):
    ap, recall, precision = metrics.det_average_precision(detections, gt,
                                                          threshold)
    ref_ap, ref_recall, ref_precision = _vocevaldet(
        image_index, scores, boxes, gt_boxes, gt_difficult, threshold)
    assert ap == pytest.approx(ref_ap, abs=1e-12)
    np.testing.assert_array_equal(recall, ref_recall)
    np.testing.assert_array_equal(precision, ref_precision)
    assert 0.05 < ap < 0.95


def test_det_map_equals_devkit_transcription_on_voc_mini(voc_mini_devkit):
  images = voc.load_voc_split(str(voc_mini_devkit), '2007', 'test_all')
  rng = np.random.default_rng(2)
  detections, expected = [], []
  for k in range(len(voc.VOC_CLASSES)):
    gt = metrics.class_ground_truth(images, k)
    gt_boxes = [g.boxes for g in gt]
    gt_difficult = [g.difficult for g in gt]
    dets = _random_detections(rng, gt_boxes, len(images), 4,
                              [(im.width, im.height) for im in images])
    detections.append(metrics.Detections(*dets))
    expected.append(_vocevaldet(*dets, gt_boxes, gt_difficult)[0])
  ap, mean_ap = metrics.det_map(detections, images)
  np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
  assert mean_ap == pytest.approx(np.mean(expected))
  # Chairs: one in 000003; three and two difficult ones in 000005.
  chair = voc.VOC_CLASSES.index('chair')
  chair_difficult = [g.difficult.tolist()
                     for g in metrics.class_ground_truth(images, chair)]
  assert chair_difficult == [[], [], [False], [],
                             [False, False, True, False, True]]
  assert ap[chair] > 0


def test_det_without_positives_or_detections_is_zero():
  gt = [metrics.GroundTruth(np.array([[1, 1, 5, 5]]), np.array([True]))]
  dets = metrics.Detections(np.array([0]), np.array([1.0]),
                            np.array([[1, 1, 5, 5]]))
  assert metrics.det_average_precision(dets, gt)[0] == 0.0
  empty = metrics.Detections(np.zeros(0, int), np.zeros(0), np.zeros((0, 4)))
  assert metrics.det_average_precision(empty, gt)[0] == 0.0


def test_det_rejects_unknown_image_index():
  gt = [metrics.GroundTruth(np.zeros((0, 4)), np.zeros(0, bool))]
  dets = metrics.Detections(np.array([1]), np.array([1.0]),
                            np.array([[1, 1, 5, 5]]))
  with pytest.raises(ValueError, match='image_index'):
    metrics.det_average_precision(dets, gt)


def test_result_files_round_trip_exactly(tmp_path):
  ids = ['000001', '000004', '000001']
  scores = np.array([0.1 + 0.2, -1.0 / 3.0, 7.0], np.float64)
  boxes = np.array([[1, 2, 30, 40], [5.5, 6, 7, 8], [1, 1, 2, 2]])
  path = metrics.write_det_results(str(tmp_path), 'car', ids, scores, boxes)
  assert os.path.basename(path) == 'comp4_det_test_car.txt'
  read_ids, read_scores, read_boxes = metrics.read_det_results(path)
  assert read_ids == ids
  np.testing.assert_array_equal(read_scores, scores)
  np.testing.assert_array_equal(read_boxes, boxes)
  path = metrics.write_cls_results(str(tmp_path), 'cat', ids[:2], scores[:2],
                                   split='val')
  assert os.path.basename(path) == 'comp1_cls_val_cat.txt'
  assert open(path).read().split() == ['000001', repr(0.1 + 0.2), '000004',
                                       repr(-1.0 / 3.0)]
  assert metrics.read_cls_results(path)[1].tolist() == scores[:2].tolist()
  assert sorted(os.listdir(tmp_path)) == ['comp1_cls_val_cat.txt',
                                          'comp4_det_test_car.txt']


def test_malformed_result_line_names_file_and_line(tmp_path):
  path = tmp_path / 'comp4_det_test_dog.txt'
  path.write_text('000001 0.5 1 1 5 5\n000002 0.5 1 1 5\n')
  with pytest.raises(ValueError, match=r'comp4_det_test_dog.txt:2'):
    metrics.read_det_results(str(path))
