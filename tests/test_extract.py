"""Extraction: equals a direct forward, pads, resumes, 1 == 8 devices."""

import os

import jax
import numpy as np
import pytest

from cnnjax import sharding
from cnnjax.data import images as images_lib
from cnnjax.data import preprocess
from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.features import extract
from cnnjax.features import store as store_lib
from cnnjax.models import caffenet

WARP, CONTEXT = 67, 5
MODEL = {'num_classes': 21, 'width': 0.0625}
LAYERS = ('pool1', 'conv3', 'pool5', 'fc7')
BATCH, SHARD = 8, 16


def _image(tmp_path, name, width, height, boxes, labels, difficult, seed):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  path = str(tmp_path / f'{name}.jpg')
  images_lib.write_jpeg(path, pixels)
  return VocImage(name, path, width, height, np.asarray(boxes, np.int32),
                  np.asarray(labels, np.int32), np.asarray(difficult, bool))


def _random_boxes(rng, count, width, height):
  x = np.sort(rng.integers(1, width + 1, (count, 2)), axis=1)
  y = np.sort(rng.integers(1, height + 1, (count, 2)), axis=1)
  return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """Three small JPEGs with 9 + 11 + 5 = 25 GT boxes (not a batch multiple)."""
  tmp_path = tmp_path_factory.mktemp('voc')
  rng = np.random.default_rng(0)
  images = []
  for k, (w, h, n) in enumerate([(80, 60, 9), (70, 90, 11), (64, 64, 5)]):
    images.append(_image(tmp_path, f'00000{k}', w, h,
                         _random_boxes(rng, n, w, h),
                         rng.integers(0, 20, n), rng.random(n) < 0.3, k))
  # He-scaled weights and 0.1 biases keep the deep layers of this tiny net
  # away from all-zero; drawn in numpy (a jitted Caffe init compiles slowly).
  shapes = jax.eval_shape(
      caffenet.CaffeNet(**MODEL).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, WARP, WARP, 3), np.float32))['params']
  params = jax.tree_util.tree_map(
      lambda s: (np.full(s.shape, 0.1, np.float32) if len(s.shape) == 1 else
                 rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])),
                            s.shape).astype(np.float32)), shapes)
  return images, params


def _direct_features(images, params, source):
  """Reference: each image's boxes warped, then one plain model.apply."""
  mean = preprocess.mean_image()
  warped = np.concatenate([
      regions.warp_regions(im.decode(), boxes, size=WARP, context=CONTEXT,
                           mean=mean)
      for im, boxes in zip(images, source.boxes)])
  _, out = jax.jit(caffenet.CaffeNet(**MODEL).apply)({'params': params},
                                                     warped)
  return {name: np.asarray(out[name]) for name in LAYERS}


def _assert_close(got, want, name, tol=1e-5):
  """float32 equality up to summation order: tolerance scaled to the layer."""
  assert got.shape == want.shape, name
  assert np.abs(want).max() > 0, f'{name} is all zero: a vacuous comparison'
  np.testing.assert_allclose(got, want, rtol=tol,
                             atol=tol * np.abs(want).max(), err_msg=name)


def _extract(params, source, out_dir, **kwargs):
  kwargs = {'batch_size': BATCH, 'shard_rows': SHARD, **kwargs}
  return extract.extract_features(params, MODEL, source, LAYERS, str(out_dir),
                                  warp_size=WARP, context=CONTEXT, **kwargs)


def test_gt_boxes_equal_direct_forward_with_padded_last_batch(dataset,
                                                              tmp_path):
  images, params = dataset
  source = extract.gt_boxes(images)
  assert source.num_rows == 25                # 3 batches of 8 + one padded
  store = _extract(params, source, tmp_path)
  expected = _direct_features(images, params, source)
  assert len(store) == 25 and store.layer('pool5').num_shards == 2
  for name in LAYERS:
    _assert_close(store.layer(name).read(), expected[name], name)
  np.testing.assert_array_equal(store.rows('box'),
                                np.concatenate([im.boxes for im in images]))
  np.testing.assert_array_equal(store.rows('label'),
                                np.concatenate([im.labels for im in images]))
  np.testing.assert_array_equal(
      store.rows('difficult'), np.concatenate([im.difficult for im in images]))
  np.testing.assert_array_equal(store.rows('image_index'),
                                np.repeat([0, 1, 2], [9, 11, 5]))
  np.testing.assert_array_equal(store.rows('image_id'),
                                np.repeat(['000000', '000001', '000002'],
                                          [9, 11, 5]))
  assert store.metadata['model'] == MODEL
  assert store.metadata['source']['kind'] == 'gt_boxes'


def test_one_and_eight_devices_agree(dataset, tmp_path):
  images, params = dataset
  source = extract.gt_boxes(images, include_difficult=False)
  one = sharding.data_mesh(jax.devices()[:1])
  single = _extract(params, source, tmp_path / 'one', mesh=one)
  eight = _extract(params, source, tmp_path / 'eight')
  assert len(single) == sum(int((~im.difficult).sum()) for im in images)
  for name in LAYERS:
    _assert_close(single.layer(name).read(), eight.layer(name).read(), name)


def test_killed_extraction_resumes_only_unfinished_shards(
    dataset, tmp_path, monkeypatch):
  images, params = dataset
  # (9 + 9 + 11 + 5) GT + 4 * 3 proposals = 46 rows: 6 shards of one batch
  # of 8, the last one padded.
  source = extract.proposal_boxes(
      images[:1] + images, [im.boxes[:3] for im in images[:1] + images])
  kwargs = {'shard_rows': 8}
  warped_rows = []
  real_warp = regions.warp_regions

  def counting_warp(image, boxes, **kw):
    warped_rows.append(len(boxes))
    return real_warp(image, boxes, **kw)

  monkeypatch.setattr(regions, 'warp_regions', counting_warp)
  real_write = store_lib.FeatureStoreWriter.write_shard

  def dies_at_shard_2(self, index, *args):
    if index == 2:
      raise RuntimeError('killed')
    real_write(self, index, *args)

  monkeypatch.setattr(store_lib.FeatureStoreWriter, 'write_shard',
                      dies_at_shard_2)
  with pytest.raises(RuntimeError, match='killed'):
    _extract(params, source, tmp_path, **kwargs)
  shard_files = [tmp_path / 'pool5' / f'{k:05d}.npy' for k in (0, 1)]
  mtimes = [os.stat(f).st_mtime_ns for f in shard_files]
  with pytest.raises(FileNotFoundError, match='unfinished'):
    store_lib.FeatureStore.open(tmp_path)

  monkeypatch.setattr(store_lib.FeatureStoreWriter, 'write_shard', real_write)
  warped_rows.clear()
  store = _extract(params, source, tmp_path, **kwargs)
  assert source.num_rows == 46
  assert sum(warped_rows) == 46 - 16          # shards 2 to 5 only
  assert [os.stat(f).st_mtime_ns for f in shard_files] == mtimes
  expected = _direct_features(images[:1] + images, params, source)
  for name in LAYERS:
    _assert_close(store.layer(name).read(), expected[name], name)
  np.testing.assert_array_equal(
      store.rows('is_gt'), np.concatenate(
          [np.arange(n + 3) < n for n in (9, 9, 11, 5)]))
  np.testing.assert_array_equal(
      store.rows('label')[~store.rows('is_gt')], -1)

  with pytest.raises(ValueError, match='params_sha256'):
    _extract(jax.tree_util.tree_map(lambda p: p * 2, params), source,
             tmp_path, **kwargs)


def test_whole_images_with_per_layer_encodings(dataset, tmp_path):
  images, params = dataset
  source = extract.whole_images(images)
  np.testing.assert_array_equal(
      source.rows['box'], [[1, 1, 80, 60], [1, 1, 70, 90], [1, 1, 64, 64]])
  encodings = {'pool1': 'binary', 'conv3': 'float16', 'pool5': 'float32',
               'fc7': 'binary'}
  store = _extract(params, source, tmp_path, encoding=encodings)
  expected = _direct_features(images, params, source)
  for name in ('pool1', 'fc7'):
    np.testing.assert_array_equal(store.layer(name).read(dtype=None),
                                  expected[name] > 0, err_msg=name)
  _assert_close(store.layer('conv3').read(), expected['conv3'], 'conv3',
                tol=1e-3)                     # float16 keeps 11 bits
  _assert_close(store.layer('pool5').read(), expected['pool5'], 'pool5')


def test_bad_arguments_raise(dataset, tmp_path):
  images, params = dataset
  source = extract.whole_images(images)
  with pytest.raises(ValueError, match="unknown layers \\['relu9'\\]"):
    extract.extract_features(params, MODEL, source, ['relu9'], str(tmp_path))
  with pytest.raises(ValueError, match='multiple of the 8 devices'):
    extract.extract_features(params, MODEL, source, ['fc7'], str(tmp_path),
                             batch_size=6, warp_size=WARP)
  with pytest.raises(ValueError, match='not a multiple of batch_size'):
    extract.extract_features(params, MODEL, source, ['fc7'], str(tmp_path),
                             batch_size=8, shard_rows=12, warp_size=WARP)
