"""R-CNN detector training and test scoring over a feature store."""

import numpy as np

from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.detection import rcnn
from cnnjax.features import store as store_lib
from cnnjax import metrics


def test_class_overlaps_equals_loop():
  rng = np.random.default_rng(0)
  xy = rng.integers(1, 80, (30, 2))
  boxes = np.concatenate([xy, xy + rng.integers(2, 40, (30, 2))], 1)
  gt = boxes[:6]
  gt_labels = np.array([0, 2, 2, 5, 0, 1])
  got = rcnn.class_overlaps(boxes, gt, gt_labels, 7)
  expected = np.zeros((30, 7))
  for r in range(30):
    for g in range(6):
      expected[r, gt_labels[g]] = max(expected[r, gt_labels[g]],
                                      regions.iou(boxes[r:r + 1], gt[g:g + 1])[0, 0])
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def _toy_detection_problem(tmp_path, num_images=8, num_classes=3, seed=0):
  """Images with one object each; a proposal's feature encodes its class
  when it overlaps the object (IoU >= 0.5), noise otherwise."""
  rng = np.random.default_rng(seed)
  dim = 8
  images, feats, rows = [], [], {'image_index': [], 'box': [], 'is_gt': [],
                                 'label': []}
  for i in range(num_images):
    label = i % num_classes
    gt = np.array([[20, 20, 60, 60]], np.int32)
    images.append(VocImage(f'{i:06d}', '', 100, 100, gt,
                           np.array([label], np.int32), np.array([False])))
    props = np.array([[21, 19, 61, 59], [22, 22, 58, 62], [60, 60, 95, 95],
                      [1, 1, 30, 30], [70, 5, 99, 40]], np.int32)
    boxes = np.concatenate([gt, props])
    overlaps = regions.iou(boxes, gt)[:, 0]
    for b, box in enumerate(boxes):
      f = rng.normal(0, 0.1, dim)
      if overlaps[b] >= 0.5:
        f[label] += 3.0
      else:
        f[num_classes:] += 1.0
      feats.append(f)
      rows['image_index'].append(i)
      rows['box'].append(box)
      rows['is_gt'].append(b == 0)
      rows['label'].append(label if b == 0 else -1)
  feats = np.array(feats, np.float32)
  writer = store_lib.FeatureStoreWriter(
      str(tmp_path / 'store'), {'fc7': ((dim,), 'float32')},
      num_rows=len(feats), shard_rows=len(feats))
  writer.write_shard(0, {'fc7': feats}, {k: np.array(v) for k, v in rows.items()})
  return images, writer.finalize(), num_classes


def test_train_and_detect_on_a_separable_toy_problem(tmp_path):
  images, store, k = _toy_detection_problem(tmp_path)
  reader = rcnn.AblatedRows(store, 'fc7', 'unroll')
  config = rcnn.SvmConfig()
  scale = rcnn.feature_scale(reader, config)
  sample = reader.features(slice(0, store.num_rows)) * scale
  np.testing.assert_allclose(np.linalg.norm(sample, axis=1).mean(), 20.0,
                             rtol=1e-4)
  w, b = rcnn.train_detectors(reader, images, scale, k, config,
                              log=lambda _: None)
  dets = rcnn.detect(reader, scale, w, b, log=lambda _: None)
  assert len(dets) == k
  for c, found in enumerate(dets):
    # GT rows are never scored at test time.
    assert not any((box == [20, 20, 60, 60]).all() for box in found.boxes)
    gt = [metrics.GroundTruth(im.boxes[im.labels == c],
                              im.difficult[im.labels == c]) for im in images]
    ap, _, _ = metrics.det_average_precision(found, gt)
    assert ap > 0.9
    # NMS at 0.3 keeps one of the two overlapping hits per image.
    assert len(found.boxes) <= 4 * len(images)


def test_load_or_computes_once(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {'w': np.arange(3.0)}

  path = str(tmp_path / 'sub' / 'svm.npz')
  first = rcnn.load_or(path, compute)
  second = rcnn.load_or(path, compute)
  assert len(calls) == 1
  np.testing.assert_array_equal(first['w'], second['w'])
  assert sorted(p.name for p in (tmp_path / 'sub').iterdir()) == ['svm.npz']
