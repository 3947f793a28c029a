"""Feature store: encodings, sharded reads, streaming, atomic writes."""

import os

import jax
import numpy as np
import pytest

from cnnjax.features import store as store_lib

SHAPE = (3, 3, 8)          # 72 values: a multiple of 8, so binary packs exactly
NUM_ROWS, SHARD_ROWS = 11, 4


def _features(seed, num_rows=NUM_ROWS, shape=SHAPE):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_rows,) + shape).astype(np.float32)
  x[x < -0.5] = 0.0            # post-ReLU-like zeros and some negatives kept
  return x


def _row_meta(start, stop):
  return {'image_id': [f'{i:06d}' for i in range(start, stop)],
          'label': np.arange(start, stop, dtype=np.int32) % 5,
          'box': np.arange(start * 4, stop * 4, dtype=np.int32).reshape(-1, 4)}


def _write_store(directory, features, encoding, shard_rows=SHARD_ROWS,
                 shards=None):
  writer = store_lib.FeatureStoreWriter(
      directory, {'pool5': (features.shape[1:], encoding)},
      {'source': 'test'}, num_rows=len(features), shard_rows=shard_rows)
  for k in (range(writer.num_shards) if shards is None else shards):
    start, stop = writer.shard_range(k)
    writer.write_shard(k, {'pool5': features[start:stop]},
                       _row_meta(start, stop))
  return writer


@pytest.mark.parametrize('encoding', store_lib.ENCODINGS)
def test_round_trip_per_encoding(tmp_path, encoding):
  x = _features(0)
  store = _write_store(tmp_path, x, encoding).finalize()
  view = store.layer('pool5')
  expected = {'float32': x, 'float16': x.astype(np.float16),
              'binary': x > 0}[encoding]
  natural = view.read(dtype=None)
  assert natural.dtype == expected.dtype and natural.shape == x.shape
  np.testing.assert_array_equal(natural, expected)
  np.testing.assert_array_equal(view.read(), expected.astype(np.float32))
  # Rows in any order, across shard boundaries, by mask, by slice, by int.
  rows = np.array([10, 0, 5, 4, 3, 9])
  np.testing.assert_array_equal(view.read(rows), expected[rows])
  mask = np.arange(NUM_ROWS) % 3 == 1
  np.testing.assert_array_equal(view.read(mask), expected[mask])
  np.testing.assert_array_equal(view[2:9], expected[2:9])
  np.testing.assert_array_equal(view[-1], expected[-1])
  assert view.read([]).shape == (0,) + SHAPE
  # Row metadata is gathered in row order.
  meta = _row_meta(0, NUM_ROWS)
  np.testing.assert_array_equal(store.rows('image_id'), meta['image_id'])
  np.testing.assert_array_equal(store.rows('label'), meta['label'])
  np.testing.assert_array_equal(store.rows('box'), meta['box'])
  assert store.metadata == {'source': 'test'}
  assert view.shape == (NUM_ROWS,) + SHAPE and view.num_shards == 3


def test_binary_is_32x_smaller_than_float32(tmp_path):
  x = _features(1, num_rows=64, shape=(4, 4, 32))
  f32 = _write_store(tmp_path / 'f32', x, 'float32', 64).finalize()
  binary = _write_store(tmp_path / 'bin', x, 'binary', 64).finalize()
  dense, packed = f32.layer('pool5').shard(0), binary.layer('pool5').shard(0)
  assert packed.shape == (64, 4 * 4 * 32 // 8) and packed.dtype == np.uint8
  assert dense.nbytes == 32 * packed.nbytes
  size = lambda s: os.path.getsize(os.path.join(s.directory, 'pool5',
                                                '00000.npy'))
  assert size(f32) > 30 * size(binary)   # the .npy header is all that differs
  # Bits follow np.packbits of the flat (H, W, C) feature: first byte, hand.
  first = (x[0].reshape(-1)[:8] > 0).astype(int)
  assert packed[0, 0] == int(''.join(map(str, first)), 2)


def test_binary_pads_features_not_multiple_of_8(tmp_path):
  x = _features(2, shape=(5,))
  view = _write_store(tmp_path, x, 'binary').finalize().layer('pool5')
  assert view.shard(0).shape == (SHARD_ROWS, 1)
  np.testing.assert_array_equal(view.read(dtype=None), x > 0)


def test_streaming_chunks_equal_full_read(tmp_path):
  x = _features(3)
  view = _write_store(tmp_path, x, 'float16').finalize().layer('pool5')
  chunks = list(view.iter_chunks(3))
  assert [start for start, _ in chunks] == [0, 3, 6, 9]
  assert [len(chunk) for _, chunk in chunks] == [3, 3, 3, 2]
  np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]),
                                view.read())
  whole = list(view.iter_chunks(100))
  assert len(whole) == 1
  np.testing.assert_array_equal(whole[0][1], view.read())


def test_killed_write_leaves_nothing_a_reader_or_writer_trusts(tmp_path):
  x = _features(4)
  _write_store(tmp_path, x, 'float32', shards=[0])
  # A writer killed inside shard 1: its array landed, a temp file is half
  # written, and its marker never came.
  start, stop = SHARD_ROWS, 2 * SHARD_ROWS
  np.save(tmp_path / 'pool5' / '00001.npy', x[start:stop])
  leftovers = [tmp_path / 'pool5' / '00002.npy.tmp4242',
               tmp_path / 'shards' / '00001.npz.tmp4242']
  for path in leftovers:
    path.write_bytes(b'half a file')
  with pytest.raises(FileNotFoundError, match='unfinished store: 1 shards'):
    store_lib.FeatureStore.open(tmp_path)
  writer = store_lib.FeatureStoreWriter(
      tmp_path, {'pool5': (SHAPE, 'float32')}, {'source': 'test'},
      num_rows=NUM_ROWS, shard_rows=SHARD_ROWS)
  assert not any(path.exists() for path in leftovers)
  assert writer.finished_shards() == [0]
  with pytest.raises(RuntimeError, match=r'2 of 3 shards unwritten'):
    writer.finalize()
  for k in (1, 2):
    lo, hi = writer.shard_range(k)
    writer.write_shard(k, {'pool5': x[lo:hi]}, _row_meta(lo, hi))
  np.testing.assert_array_equal(writer.finalize().layer('pool5').read(), x)


def test_resuming_with_other_settings_raises(tmp_path):
  _write_store(tmp_path, _features(5), 'float32', shards=[0])
  with pytest.raises(ValueError, match=r'writer.json.*metadata.source'):
    store_lib.FeatureStoreWriter(
        tmp_path, {'pool5': (SHAPE, 'float32')}, {'source': 'other'},
        num_rows=NUM_ROWS, shard_rows=SHARD_ROWS)
  with pytest.raises(ValueError, match=r'writer.json.*layers'):
    store_lib.FeatureStoreWriter(
        tmp_path, {'pool5': (SHAPE, 'binary')}, {'source': 'test'},
        num_rows=NUM_ROWS, shard_rows=SHARD_ROWS)


def test_write_shard_validates_rows_and_layers(tmp_path):
  writer = store_lib.FeatureStoreWriter(
      tmp_path, {'fc7': ((6,), 'float32')}, num_rows=5, shard_rows=3)
  good = np.zeros((3, 6), np.float32)
  with pytest.raises(ValueError, match="'label' has 2 rows"):
    writer.write_shard(0, {'fc7': good}, {'label': [1, 2]})
  with pytest.raises(ValueError, match='got layers'):
    writer.write_shard(0, {'fc6': good}, {})
  with pytest.raises(ValueError, match='do not match the layer shape'):
    writer.write_shard(0, {'fc7': np.zeros((3, 7), np.float32)}, {})
  with pytest.raises(ValueError, match='unknown feature encoding'):
    store_lib.FeatureStoreWriter(tmp_path / 'x', {'fc7': ((6,), 'int8')},
                                 num_rows=5, shard_rows=3)


def test_sharded_load_on_8_devices_equals_read(tmp_path):
  assert jax.device_count() == 8
  x = _features(6, num_rows=13)               # not a multiple of 8: padded
  view = _write_store(tmp_path, x, 'float16').finalize().layer('pool5')
  mesh = jax.make_mesh((8,), ('data',))
  values, valid = view.to_sharded_jax(mesh)
  assert values.shape == (16,) + SHAPE and values.dtype == np.float32
  assert values.sharding.spec == jax.sharding.PartitionSpec('data')
  host = np.asarray(values)
  np.testing.assert_array_equal(host[:13], view.read())
  np.testing.assert_array_equal(host[13:], 0.0)
  np.testing.assert_array_equal(np.asarray(valid), np.arange(16) < 13)
  for shard in values.addressable_shards:     # each device holds its block
    rows = shard.index[0]
    assert shard.data.shape[0] == 2
    np.testing.assert_array_equal(np.asarray(shard.data), host[rows])
