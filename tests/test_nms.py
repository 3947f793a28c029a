"""NMS equals a loop transcription of R-CNN's nms.m (stable order on ties)."""

import numpy as np

from cnnjax.detection import batched_nms
from cnnjax.detection import nms


def _nms_loop(boxes, scores, overlap):
  """nms.m, one box pair at a time; tied scores taken in input order."""
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  pick = []
  while order:
    i = order[0]
    pick.append(i)
    survivors = []
    for j in order[1:]:
      w = max(0.0, min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0]) + 1)
      h = max(0.0, min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1]) + 1)
      inter = w * h
      area_i = (boxes[i][2] - boxes[i][0] + 1) * (boxes[i][3] - boxes[i][1] + 1)
      area_j = (boxes[j][2] - boxes[j][0] + 1) * (boxes[j][3] - boxes[j][1] + 1)
      if inter / (area_i + area_j - inter) <= overlap:
        survivors.append(j)
    order = survivors
  return pick


def _random_boxes(rng, n):
  xy = rng.integers(1, 60, (n, 2))
  boxes = np.concatenate([xy, xy + rng.integers(4, 40, (n, 2))], 1)
  boxes[n // 2] = boxes[0]                           # An exact duplicate box.
  scores = rng.integers(0, 6, n).astype(np.float64)  # Many ties.
  return boxes.astype(np.float64), scores


def test_nms_hand_worked():
  boxes = np.array([[1, 1, 10, 10],     # 0: area 100, score .9
                    [1, 1, 10, 12],     # 1: area 120, score .95
                    [1, 1, 10, 6],      # 2: area 60
                    [6, 1, 15, 10],     # 3: area 100
                    [8, 1, 17, 10],     # 4: area 100
                    [1, 1, 10, 10]])    # 5: tied with box 1, listed later
  scores = np.array([.9, .95, .5, .6, .4, .95])
  # Box 1 first (tie with 5 in input order). IoU with 1: box 5 and box 0
  # 100/120, box 2 60/120 = 0.5 -> suppressed; box 3 50/170 = 0.29 and box 4
  # 30/190 survive. Box 3 next: box 4 has IoU 80/120 with it -> suppressed.
  np.testing.assert_array_equal(nms(boxes, scores, 0.3), [1, 3])
  # IoU equal to the threshold survives (> suppresses): 60/120 = 0.5.
  np.testing.assert_array_equal(
      nms(boxes[[1, 2]], scores[[1, 2]], 0.5), [0, 1])


def test_nms_equals_loop_on_random_boxes_with_ties():
  rng = np.random.default_rng(0)
  for trial in range(20):
    boxes, scores = _random_boxes(rng, 40)
    threshold = (0.3, 0.5, 0.0)[trial % 3]
    expected = _nms_loop(boxes.tolist(), scores.tolist(), threshold)
    np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)


def test_batched_nms_equals_nms_per_set():
  rng = np.random.default_rng(1)
  sets = [_random_boxes(rng, 40) for _ in range(6)]
  boxes = np.stack([b for b, _ in sets])
  scores = np.stack([s for _, s in sets])
  valid = np.ones(scores.shape, bool)
  valid[2, 25:] = False                    # A padded set.
  valid[4] = False                         # An empty set.
  for max_keep in (40, 5):
    indices, kept = batched_nms(boxes, scores, valid, 0.3, max_keep)
    indices, kept = np.asarray(indices), np.asarray(kept)
    assert indices.shape == (6, max_keep)
    for b in range(6):
      rows = np.flatnonzero(valid[b])
      expected = rows[_nms_loop(boxes[b, rows].tolist(),
                                scores[b, rows].tolist(), 0.3)][:max_keep]
      np.testing.assert_array_equal(indices[b][kept[b]], expected)
      assert not kept[b, len(expected):].any()
    if max_keep == 5:
      assert kept[0].all()                 # Truncated: more than 5 survive.
    else:
      assert kept[0].sum() > 5
