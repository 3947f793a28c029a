"""Feature ablations against numpy loop transcriptions of SPEC 6."""

import jax
import numpy as np
import pytest

from cnnjax.analysis import ablations


def caffe_index(c, y, x, h, w):
  return c * h * w + y * w + x


def loop_transform(acts, name):
  """Per example and filter, the transform written out over positions."""
  n, h, w, f = acts.shape
  if name in ('sp-max', 'sp-max-bin'):
    out = np.zeros((n, f), np.float32)
    for i in range(n):
      for c in range(f):
        peak = acts[i, :, :, c].max()
        out[i, c] = (peak > 0) if name == 'sp-max-bin' else peak
    return out
  out = np.zeros((n, f * h * w), np.float32)
  for i in range(n):
    for c in range(f):
      best_y, best_x, best = 0, 0, acts[i, 0, 0, c]
      for y in range(h):
        for x in range(w):
          if acts[i, y, x, c] > best:       # strict: first position wins ties
            best_y, best_x, best = y, x, acts[i, y, x, c]
      for y in range(h):
        for x in range(w):
          value = acts[i, y, x, c]
          if name == 'unroll':
            v = value
          elif name == 'bin':
            v = float(value > 0)
          else:                             # sm-bn-lc
            v = float(best > 0 and (y, x) == (best_y, best_x))
          out[i, caffe_index(c, y, x, h, w)] = v
  return out


@pytest.fixture(scope='module')
def tied_acts():
  rng = np.random.default_rng(0)
  acts = (np.maximum(rng.integers(-3, 4, size=(6, 3, 4, 5)), 0)).astype(
      np.float32)
  acts[0, :, :, 1] = 0.0                    # an all-zero map
  acts[1, :, :, 2] = 2.0                    # a constant map: argmax (0, 0)
  return acts


@pytest.mark.parametrize('name', ['unroll', 'sp-max', 'bin', 'sp-max-bin',
                                  'sm-bn-lc'])
def test_deterministic_ablations_match_loop(tied_acts, name):
  got = np.asarray(ablations.apply_ablation(name, tied_acts))
  np.testing.assert_array_equal(got, loop_transform(tied_acts, name))


def test_sm_bn_lc_hand_example():
  acts = np.zeros((1, 2, 2, 2), np.float32)
  acts[0, :, :, 0] = [[0.5, 3.0], [3.0, 1.0]]       # max 3 first at (0, 1)
  got = np.asarray(ablations.sm_bn_lc(acts))
  np.testing.assert_array_equal(got, [[0, 1, 0, 0, 0, 0, 0, 0]])


def test_fc_vectors_are_one_position_maps():
  acts = np.array([[0.0, 2.5, -1.0], [3.0, 0.0, 0.5]], np.float32)
  for name in ('unroll', 'sp-max'):
    np.testing.assert_array_equal(ablations.apply_ablation(name, acts), acts)
  for name in ('bin', 'sp-max-bin', 'sm-bn-lc'):
    np.testing.assert_array_equal(ablations.apply_ablation(name, acts),
                                  (acts > 0).astype(np.float32))
  np.testing.assert_array_equal(
      ablations.apply_ablation('sp-shuffle', acts, jax.random.key(0)), acts)


def test_sp_shuffle_permutes_each_map_independently_and_reproducibly():
  n, h, w, f = 40, 3, 3, 4
  acts = np.arange(n * h * w * f, dtype=np.float32).reshape(n, h, w, f)
  key = jax.random.key(7)
  got = np.asarray(ablations.sp_shuffle(acts, key))         # [N, F*H*W]
  maps = got.reshape(n, f, h * w)
  # Reference: the documented key schedule, applied with a numpy loop.
  noise = np.asarray(jax.vmap(lambda i: jax.random.uniform(
      jax.random.fold_in(key, i), (h * w, f)))(np.arange(n)))   # [N, P, F]
  for i in range(n):
    for c in range(f):
      order = np.argsort(noise[i, :, c], kind='stable')
      np.testing.assert_array_equal(
          maps[i, c], acts[i, :, :, c].reshape(-1)[order])
  # Values are only moved within their own map.
  np.testing.assert_array_equal(
      np.sort(maps, axis=-1),
      np.sort(acts.transpose(0, 3, 1, 2).reshape(n, f, h * w), axis=-1))
  # Different examples and filters see different permutations.
  positions = maps - maps.min(axis=-1, keepdims=True)       # [N, F, P]
  distinct = {tuple(p) for p in positions.reshape(-1, h * w).astype(int)}
  assert len(distinct) > 0.9 * n * f
  # Same key and ids -> same result, whatever the order or chunking.
  reordered = np.arange(n)[::-1]
  np.testing.assert_array_equal(
      np.asarray(ablations.sp_shuffle(acts[reordered], key, reordered)),
      got[reordered])
  assert not np.array_equal(
      np.asarray(ablations.sp_shuffle(acts, jax.random.key(8))), got)


def test_registry_errors():
  acts = np.ones((2, 2, 2, 3), np.float32)
  with pytest.raises(ValueError, match='valid: unroll, sp-shuffle'):
    ablations.apply_ablation('shuffle', acts)
  with pytest.raises(ValueError, match='needs a PRNG key'):
    ablations.apply_ablation('sp-shuffle', acts)
  with pytest.raises(ValueError, match=r'\[N, H, W, F\] or \[N, F\]'):
    ablations.apply_ablation('unroll', np.ones((2, 3, 4), np.float32))


def test_sharded_rows_match_unsharded(tied_acts):
  acts = np.concatenate([tied_acts, tied_acts[:2]])        # 8 rows
  rows = jax.sharding.NamedSharding(jax.make_mesh((8,), ('data',)),
                                    jax.sharding.PartitionSpec('data'))
  np.testing.assert_array_equal(
      ablations.sp_shuffle(jax.device_put(acts, rows), jax.random.key(3)),
      ablations.sp_shuffle(acts, jax.random.key(3)))
