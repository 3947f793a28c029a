"""R-CNN detector training and test scoring over a feature store."""

import jax
import ml_collections
import numpy as np

from cnnjax.analysis import ablations
from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.detection import nms
from cnnjax.detection import rcnn
from cnnjax.detection import task as detect_task
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
      overlap = regions.iou(boxes[r:r + 1], gt[g:g + 1])[0, 0]
      expected[r, gt_labels[g]] = max(expected[r, gt_labels[g]], overlap)
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
  writer.write_shard(0, {'fc7': feats},
                     {k: np.array(v) for k, v in rows.items()})
  return images, writer.finalize(), num_classes


def test_train_and_detect_on_a_separable_toy_problem(tmp_path):
  images, store, k = _toy_detection_problem(tmp_path)
  reader = rcnn.AblatedRows(store, 'fc7', 'unroll')
  config = rcnn.SvmConfig()
  scale = rcnn.feature_scale(reader, config)
  sample = reader.features(slice(0, store.num_rows)) * scale
  np.testing.assert_allclose(np.linalg.norm(sample, axis=1).mean(), 20.0,
                             rtol=1e-4)
  w, b = rcnn.train_detectors(reader, images, scale, k, config)
  candidates = rcnn.score_candidates(reader, scale, w, b, top_k=100)
  dets = rcnn.suppress(rcnn.candidate_boxes(reader, candidates['rows']),
                       candidates['scores'], candidates['rows'] >= 0, 0.3)
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


def _random_store(tmp_path, num_images=7, layer_shape=(2, 2, 3), seed=0):
  """A store of GT and proposal rows with random features and boxes; tied
  features (and so tied scores) in every image."""
  rng = np.random.default_rng(seed)
  feats, rows = [], {'image_index': [], 'box': [], 'is_gt': [], 'label': []}
  for i in range(num_images):
    num = int(rng.integers(3, 40)) if i != 3 else 2      # image 3: GT only
    xy = rng.integers(1, 60, (num, 2))
    boxes = np.concatenate([xy, xy + rng.integers(4, 40, (num, 2))], 1)
    f = rng.integers(0, 3, (num,) + layer_shape).astype(np.float32)
    feats.append(f)
    rows['image_index'] += [i] * num
    rows['box'] += list(boxes)
    rows['is_gt'] += [r < 2 for r in range(num)]
    rows['label'] += [0 if r < 2 else -1 for r in range(num)]
  feats = np.concatenate(feats)
  writer = store_lib.FeatureStoreWriter(
      str(tmp_path / 'rand'), {'pool5': (layer_shape, 'float32')},
      num_rows=len(feats), shard_rows=50)
  for shard in range(-(-len(feats) // 50)):
    part = slice(shard * 50, (shard + 1) * 50)
    writer.write_shard(shard, {'pool5': feats[part]},
                       {k: np.array(v)[part] for k, v in rows.items()})
  return writer.finalize()


def test_padded_ablated_reads_equal_the_ablation_of_the_rows(tmp_path):
  # sp-shuffle: each row's permutation must follow its row id, not its
  # position in the padded batch.
  store = _random_store(tmp_path)
  reader = rcnn.AblatedRows(store, 'pool5', 'sp-shuffle', seed=3)
  span = reader.image_rows(2)
  rows = np.concatenate([[5, 0, 17, 40], np.arange(span.start, span.stop)])
  expected = ablations.apply_ablation(
      'sp-shuffle', store.layer('pool5').read()[rows], rng=jax.random.key(3),
      example_ids=rows)
  np.testing.assert_array_equal(reader.features(rows[:4]), expected[:4])
  np.testing.assert_array_equal(reader.features(span), expected[4:])


def test_candidates_and_nms_equal_a_loop_per_image_and_class(tmp_path):
  store = _random_store(tmp_path)
  reader = rcnn.AblatedRows(store, 'pool5', 'unroll')
  rng = np.random.default_rng(1)
  weights = rng.integers(-2, 3, (12, 4)).astype(np.float32)
  biases = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
  scale, top_k = 0.5, 6
  candidates = rcnn.score_candidates(reader, scale, weights, biases,
                                     top_k=top_k)
  found = rcnn.suppress(rcnn.candidate_boxes(reader, candidates['rows']),
                        candidates['scores'], candidates['rows'] >= 0, 0.3)
  image_index = store.rows('image_index')
  is_gt = store.rows('is_gt').astype(bool)
  boxes = store.rows('box')
  for k in range(4):
    expected = []
    for i in range(7):
      rows = np.flatnonzero((image_index == i) & ~is_gt)
      # The reader's features are checked by the test above.
      scores = reader.features(rows) * scale @ weights[:, k] + biases[k]
      order = sorted(range(len(rows)), key=lambda r: -scores[r])[:top_k]
      for j in nms(boxes[rows[order]], scores[order], 0.3):
        expected.append((i, scores[order[j]], tuple(boxes[rows[order[j]]])))
    assert [int(i) for i in found[k].image_index] == [e[0] for e in expected]
    np.testing.assert_allclose(found[k].scores, [e[1] for e in expected],
                               rtol=1e-6)
    assert [tuple(b) for b in found[k].boxes] == [e[2] for e in expected]


def test_chance_candidates_rank_proposals_at_random(tmp_path):
  store = _random_store(tmp_path)
  reader = rcnn.AblatedRows(store, 'pool5', 'unroll')
  got = rcnn.chance_candidates(reader, 4, top_k=10, seed=3)
  again = rcnn.chance_candidates(reader, 4, top_k=10, seed=3)
  np.testing.assert_array_equal(got['rows'], again['rows'])
  for image in range(reader.num_images):
    proposals = reader.proposal_rows(image)
    for k in range(4):
      rows = got['rows'][image, k]
      scores = got['scores'][image, k]
      found = rows[rows >= 0]
      # min(R, top_k) distinct proposals (never GT rows), best first.
      assert len(found) == min(len(proposals), 10)
      assert set(found) <= set(proposals) and len(set(found)) == len(found)
      assert np.all(np.diff(scores[:len(found)]) <= 0)
      assert np.all((scores[:len(found)] >= 0) & (scores[:len(found)] < 1))
  # Classes are ranked independently.
  assert not np.array_equal(got['rows'][:, 0], got['rows'][:, 1])


def test_chance_ap_is_far_below_a_learned_detector(tmp_path):
  images, store, k = _toy_detection_problem(tmp_path, num_images=30)
  reader = rcnn.AblatedRows(store, 'fc7', 'unroll')
  test_config = ml_collections.ConfigDict(dict(top_k=100, nms_threshold=0.3))
  chance = detect_task.chance_ap(reader, images, test_config)
  # Two of five proposals per image hit the object: random scores rank
  # each class's ten hits among 150 proposals, then NMS keeps one hit per
  # image; a detector that learned scores 0.9 and more (test above).
  ap = chance['ap'][:3]                        # the toy's classes
  assert 0.05 < ap.mean() < 0.4, ap
