"""Caffe preprocessing and the deterministic batchers vs numpy references."""

import cv2
import numpy as np
import pytest

from cnnjax.data import preprocess

RESIZE, CROP = 20, 16  # Tiny stand-ins for 256 / 227.


def test_mean_image_fallback_and_file(tmp_path):
  fallback = preprocess.mean_image()
  assert fallback.shape == (256, 256, 3) and fallback.dtype == np.float32
  np.testing.assert_allclose(fallback[17, 200], [104.00698793, 116.66876762,
                                                 122.67891434], rtol=1e-7)
  chw = np.random.default_rng(0).uniform(0, 255, (3, 256, 256))
  chw = chw.astype(np.float32)
  path = tmp_path / 'mean.npy'
  np.save(path, chw)
  hwc = preprocess.mean_image(str(path))
  assert hwc[5, 7, 2] == chw[2, 5, 7] and hwc[200, 3, 0] == chw[0, 200, 3]
  small = preprocess.mean_image(str(path), size=128)
  # Bilinear 2x reduction of half-pixel-centred grids = 2x2 block average.
  np.testing.assert_allclose(
      small, hwc.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3)), atol=1e-3)
  np.save(path, chw[0])
  with pytest.raises(ValueError, match='mean.npy'):
    preprocess.mean_image(str(path))


def test_resize_and_caffe_input():
  image = np.random.default_rng(1).integers(0, 256, (30, 45, 3), np.uint8)
  resized = preprocess.resize_ignore_aspect(image, 24)
  assert resized.shape == (24, 24, 3) and resized.dtype == np.uint8
  np.testing.assert_array_equal(
      resized, cv2.resize(image, (24, 24), interpolation=cv2.INTER_LINEAR))
  x = preprocess.to_caffe_input(image, np.array([1.0, 2.0, 3.0]))
  assert x.dtype == np.float32
  # Channel 0 of the input is blue = RGB channel 2, minus the blue mean.
  assert x[4, 9, 0] == float(image[4, 9, 2]) - 1.0
  assert x[4, 9, 2] == float(image[4, 9, 0]) - 3.0


def test_center_crop_offset_14():
  image = np.arange(256 * 256).reshape(256, 256, 1)
  crop = preprocess.center_crop(image, 227)
  assert crop.shape == (227, 227, 1)
  assert crop[0, 0, 0] == 14 * 256 + 14 and crop[-1, -1, 0] == 240 * 256 + 240
  mean = np.random.default_rng(2).normal(size=(256, 256, 3)).astype(np.float32)
  np.testing.assert_array_equal(preprocess.crop_mean(mean, 227),
                                mean[14:241, 14:241])
  np.testing.assert_array_equal(preprocess.crop_mean(None, 5)[3, 1],
                                np.float32(preprocess.IMAGENET_MEAN_BGR))


def _find_window(image, window):
  """(top, left, mirrored) of `window` inside `image`, by exhaustive search."""
  size = window.shape[0]
  for top in range(image.shape[0] - size + 1):
    for left in range(image.shape[1] - size + 1):
      candidate = image[top:top + size, left:left + size]
      for mirrored, view in ((False, candidate), (True, candidate[:, ::-1])):
        if np.array_equal(view, window):
          return top, left, mirrored
  raise AssertionError('window not found')


def test_train_crop_offsets_and_mirror_are_uniform():
  image = np.random.default_rng(3).normal(size=(12, 12, 3))
  rng = np.random.default_rng(4)
  found = [_find_window(image, preprocess.train_crop(image, rng, 9))
           for _ in range(400)]
  tops, lefts, mirrors = zip(*found)
  assert set(tops) == set(range(4)) and set(lefts) == set(range(4))
  assert 0.4 < np.mean(mirrors) < 0.6


def _source(n=13, seed=5):
  """Random-size RGB examples, like a decoded dataset."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (int(rng.integers(18, 30)),
                                          int(rng.integers(18, 30)), 3),
                                 np.uint8),
           'label': int(i * 7 % 5)} for i in range(n)]


def _reference(example, mean):
  """Caffe's test-time transform, written out: resize, BGR - mean, centre."""
  resized = cv2.resize(example['image'], (RESIZE, RESIZE),
                       interpolation=cv2.INTER_LINEAR)
  full = resized[:, :, ::-1].astype(np.float32) - mean
  offset = (RESIZE - CROP) // 2
  return full[offset:offset + CROP, offset:offset + CROP]


def test_batcher_is_pure_function_of_seed_and_step():
  source = _source()
  mean = np.random.default_rng(6).uniform(90, 130, (RESIZE, RESIZE, 3))
  make = lambda **kw: preprocess.ClassificationBatcher(
      source, 4, seed=7, train=True, resize=RESIZE, crop=CROP, mean=mean,
      num_workers=2, **kw)
  first, second = make(), make()
  batch = first.batch_at(5)
  assert batch['image'].shape == (4, CROP, CROP, 3)
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
  for key in batch:  # A fresh batcher, other calls in between: same batch.
    second.batch_at(2)
    np.testing.assert_array_equal(second.batch_at(5)[key], batch[key])
  assert not np.array_equal(first.batch_at(6)['image'], batch['image'])
  # Each example is a crop (maybe mirrored) of its own mean-subtracted image.
  for row, index in enumerate(first.indices_at(5)):
    resized = cv2.resize(source[index]['image'], (RESIZE, RESIZE),
                         interpolation=cv2.INTER_LINEAR)
    full = resized[:, :, ::-1].astype(np.float32) - mean.astype(np.float32)
    _find_window(full, batch['image'][row])
    assert batch['label'][row] == source[index]['label']
  # Process slices of the global batch.
  halves = [make(process_index=p, process_count=2).batch_at(5) for p in (0, 1)]
  for key in batch:
    np.testing.assert_array_equal(
        np.concatenate([h[key] for h in halves]), batch[key])
  # iterate() is batch_at() step after step.
  iterator = first.iterate(4)
  for step in (4, 5, 6):
    np.testing.assert_array_equal(next(iterator)['image'],
                                  first.batch_at(step)['image'])
  iterator.close()
  first.close()


def test_batcher_epochs_visit_every_example_once():
  source = _source(n=13)
  batcher = preprocess.ClassificationBatcher(source, 4, seed=0, train=False,
                                             resize=RESIZE, crop=CROP)
  assert batcher.steps_per_epoch == 3
  for epoch in range(2):
    seen = np.concatenate([batcher.indices_at(epoch * 3 + s) for s in range(3)])
    assert len(set(seen.tolist())) == 12
  assert not np.array_equal(batcher.indices_at(0), batcher.indices_at(3))
  batch = batcher.batch_at(1)  # train=False: centre crops, no mirror.
  mean = preprocess.mean_image(None, RESIZE)
  for row, index in enumerate(batcher.indices_at(1)):
    np.testing.assert_allclose(batch['image'][row],
                               _reference(source[index], mean), atol=1e-4)


def test_eval_batches_pad_and_mask_the_last_batch():
  source = _source(n=10)
  mean = preprocess.mean_image(None, RESIZE)
  batches = list(preprocess.eval_batches(source, 4, resize=RESIZE, crop=CROP,
                                         num_workers=2))
  assert len(batches) == 3
  np.testing.assert_array_equal(batches[2]['mask'], [True, True, False, False])
  np.testing.assert_array_equal(batches[2]['index'], [8, 9, -1, -1])
  assert (batches[2]['image'][2:] == 0).all()
  images = np.concatenate([b['image'] for b in batches])[:10]
  labels = np.concatenate([b['label'] for b in batches])[:10]
  for i, example in enumerate(source):
    np.testing.assert_allclose(images[i], _reference(example, mean), atol=1e-4)
    assert labels[i] == example['label']
  second_process = list(preprocess.eval_batches(
      source, 4, resize=RESIZE, crop=CROP, process_index=1, process_count=2))
  assert len(second_process) == 3
  np.testing.assert_array_equal(second_process[0]['index'], [2, 3])
  np.testing.assert_array_equal(second_process[2]['mask'], [False, False])
  np.testing.assert_array_equal(second_process[1]['image'],
                                batches[1]['image'][2:])


def test_batcher_rejects_bad_inputs():
  with pytest.raises(ValueError, match='fewer than one batch'):
    preprocess.ClassificationBatcher(_source(n=3), 4, seed=0, train=True)
  with pytest.raises(ValueError, match='divisible'):
    preprocess.ClassificationBatcher(_source(), 4, seed=0, train=True,
                                     process_count=3)
  with pytest.raises(ValueError, match='mean'):
    preprocess.ClassificationBatcher(_source(), 4, seed=0, train=True,
                                     resize=RESIZE,
                                     mean=np.zeros((256, 256, 3)))
  grey = [{'image': np.zeros((20, 20), np.uint8), 'label': 0}] * 4
  batcher = preprocess.ClassificationBatcher(grey, 4, seed=0, train=True,
                                             resize=RESIZE, crop=CROP)
  with pytest.raises(ValueError, match='example'):
    batcher.batch_at(0)
