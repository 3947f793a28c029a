"""Selective-search proposals, R-CNN's .mat boxes and the proposal cache."""

import os

import numpy as np
import pytest
import scipy.io

from cnnjax.data import images as image_io
from cnnjax.data import proposals
from cnnjax.data import voc


def test_xywh_to_boxes_hand_examples():
  # OpenCV (x, y, w, h), 0-based, w/h pixels covered -> 1-based inclusive.
  rects = np.array([[0, 0, 1, 1], [10, 20, 30, 40], [4, 0, 20, 7]])
  np.testing.assert_array_equal(
      proposals.xywh_to_boxes(rects),
      [[1, 1, 1, 1], [11, 21, 40, 60], [5, 1, 24, 7]])
  assert proposals.xywh_to_boxes(rects).dtype == np.int32


def test_filter_small_boxes_drops_either_short_side():
  # R-CNN's FilterBoxesWidth: keep iff width >= 20 AND height >= 20 (sides
  # counted inclusively: x2 - x1 + 1).
  boxes = np.array([
      [1, 1, 20, 20],    # 20 x 20: kept
      [1, 1, 19, 40],    # 19 wide: dropped
      [5, 5, 44, 23],    # 40 x 19: dropped
      [10, 10, 29, 100],  # 20 x 91: kept
  ], np.int32)
  np.testing.assert_array_equal(proposals.filter_small_boxes(boxes),
                                boxes[[0, 3]])


def test_recall_at_hand_examples():
  gt = [np.array([[1, 1, 10, 10]]), np.array([[1, 1, 10, 10],
                                             [50, 50, 59, 59]])]
  # (1,1,10,20) overlaps (1,1,10,10) with IoU 100 / 200 = 0.5 exactly;
  # (1,1,10,21): 100 / 210 < 0.5.
  found = [np.array([[1, 1, 10, 20]]), np.array([[1, 1, 10, 21],
                                                [50, 50, 59, 59]])]
  assert proposals.recall_at(found, gt, 0.5) == pytest.approx(2 / 3)
  assert proposals.recall_at(found, gt, 0.51) == pytest.approx(1 / 3)
  assert proposals.recall_at([np.zeros((0, 4), np.int32)], [gt[0]]) == 0.0
  with pytest.raises(ValueError, match='2 proposal lists for 1'):
    proposals.recall_at(found, gt[:1])


def test_recall_at_matches_loop():
  rng = np.random.default_rng(0)

  def random_boxes(n):
    xy = rng.integers(1, 80, (n, 2))
    return np.concatenate([xy, xy + rng.integers(0, 40, (n, 2))], axis=1)

  gt = [random_boxes(int(rng.integers(1, 5))) for _ in range(6)]
  found = [random_boxes(30) for _ in range(6)]
  hits = total = 0
  for image_gt, boxes in zip(gt, found):
    for g in image_gt:
      best = 0.0
      for b in boxes:
        iw = min(g[2], b[2]) - max(g[0], b[0]) + 1
        ih = min(g[3], b[3]) - max(g[1], b[1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        union = ((g[2] - g[0] + 1) * (g[3] - g[1] + 1) +
                 (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)
        best = max(best, inter / union)
      hits += best >= 0.5
      total += 1
  assert proposals.recall_at(found, gt, 0.5) == pytest.approx(hits / total)


def _write_rcnn_mat(path, image_ids, boxes_yxyx):
  """R-CNN's layout: `images` an N x 1 cell of ids, `boxes` a 1 x N cell."""
  images = np.empty((len(image_ids), 1), dtype=object)
  cells = np.empty((1, len(image_ids)), dtype=object)
  for i, (image_id, boxes) in enumerate(zip(image_ids, boxes_yxyx)):
    images[i, 0] = image_id
    cells[0, i] = np.asarray(boxes, np.float64)
  scipy.io.savemat(path, {'images': images, 'boxes': cells})


def test_load_rcnn_mat_round_trip(tmp_path):
  path = str(tmp_path / 'voc_2007_test.mat')
  _write_rcnn_mat(path, ['000001', '000004', '000007'], [
      [[10, 20, 110, 220], [1, 1, 375, 500]],  # [y1 x1 y2 x2]
      np.zeros((0, 4)),
      [[5, 6, 7, 8]],
  ])
  loaded = proposals.load_rcnn_mat(path, ['000007', '000001', '000004'])
  np.testing.assert_array_equal(loaded[0], [[6, 5, 8, 7]])
  np.testing.assert_array_equal(loaded[1], [[20, 10, 220, 110],
                                            [1, 1, 500, 375]])
  assert loaded[2].shape == (0, 4)
  assert all(boxes.dtype == np.int32 for boxes in loaded)


def test_load_rcnn_mat_missing_id_names_it(tmp_path):
  path = str(tmp_path / 'boxes.mat')
  _write_rcnn_mat(path, ['000001'], [[[1, 2, 3, 4]]])
  with pytest.raises(KeyError, match=r"boxes\.mat.*'000002'"):
    proposals.load_rcnn_mat(path, ['000001', '000002'])
  scipy.io.savemat(str(tmp_path / 'other.mat'), {'x': np.zeros(3)})
  with pytest.raises(ValueError, match='other.mat: expected cells'):
    proposals.load_rcnn_mat(str(tmp_path / 'other.mat'), ['000001'])


def _check_valid(boxes, width, height):
  assert boxes.dtype == np.int32 and boxes.ndim == 2 and boxes.shape[1] == 4
  assert (boxes[:, :2] >= 1).all()
  assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
  assert ((boxes[:, 2:] - boxes[:, :2] + 1) >= proposals.MIN_BOX_SIDE).all()
  assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_selective_search_on_a_voc_image(voc_mini_devkit):
  image = voc.load_voc_split(str(voc_mini_devkit), '2007', 'trainval')[0]
  assert image.image_id == '000001'
  pixels = image.decode()
  boxes = proposals.selective_search(pixels)
  # 1,806 measured on this 353x500 image (R-CNN: ~2,000 per VOC image).
  assert len(boxes) > 1000
  _check_valid(boxes, image.width, image.height)
  assert proposals.recall_at([boxes], [image.boxes], 0.5) >= 0.9
  # OpenCV ranks with an unseeded random priority; the sorted output is
  # reproducible.
  np.testing.assert_array_equal(boxes, proposals.selective_search(pixels))


def _small_images(tmp_path, count=2):
  rng = np.random.default_rng(0)
  result = []
  for i in range(count):
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:] = rng.integers(0, 255, 3)
    y, x = rng.integers(0, 20, 2)
    pixels[y:y + 26, x:x + 30] = rng.integers(0, 255, 3)
    path = str(tmp_path / f'{i:06d}.jpg')
    image_io.write_jpeg(path, pixels)
    result.append(voc.VocImage(f'{i:06d}', path, 64, 48,
                               np.zeros((0, 4), np.int32),
                               np.zeros(0, np.int32), np.zeros(0, bool)))
  return result


def test_compute_proposals_caches_per_image(tmp_path, monkeypatch):
  images = _small_images(tmp_path)
  cache = str(tmp_path / 'cache')
  calls = []
  original = proposals.selective_search

  def counting(pixels):
    calls.append(1)
    return original(pixels)

  monkeypatch.setattr(proposals, 'selective_search', counting)
  first = proposals.compute_proposals(images, cache, num_workers=0)
  assert len(calls) == 2
  assert sorted(os.listdir(cache)) == ['000000.npy', '000001.npy']
  for image, boxes in zip(images, first):
    np.testing.assert_array_equal(boxes, original(image.decode()))
  again = proposals.compute_proposals(images, cache, num_workers=0)
  assert len(calls) == 2  # Nothing recomputed.
  os.remove(os.path.join(cache, '000001.npy'))
  third = proposals.compute_proposals(images, cache, num_workers=0)
  assert len(calls) == 3  # Only the missing one.
  for a, b, c in zip(first, again, third):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_compute_proposals_in_worker_processes(tmp_path):
  images = _small_images(tmp_path)
  parallel = proposals.compute_proposals(images, str(tmp_path / 'a'),
                                         num_workers=2)
  for image, boxes in zip(images, parallel):
    np.testing.assert_array_equal(boxes, proposals.selective_search(
        image.decode()))
