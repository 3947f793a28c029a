"""The npz step cache: computed once, recomputed when its settings change."""

import numpy as np

from cnnjax import stepcache


def test_computes_once_and_again_for_other_settings(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {'w': np.arange(3.0) * len(calls), 'n': 7}

  path = str(tmp_path / 'sub' / 'svm.npz')
  first = stepcache.cached_arrays(path, compute, layer='fc7', C=1e-3)
  again = stepcache.cached_arrays(path, compute, C=1e-3, layer='fc7')
  assert len(calls) == 1
  np.testing.assert_array_equal(again['w'], [0.0, 1.0, 2.0])
  assert sorted(again) == ['n', 'w'] and int(again['n']) == 7
  np.testing.assert_array_equal(first['w'], again['w'])
  other = stepcache.cached_arrays(path, compute, layer='pool5', C=1e-3)
  assert len(calls) == 2
  np.testing.assert_array_equal(other['w'], [0.0, 2.0, 4.0])
  # Written atomically: no temporary file is left beside the cache.
  assert [p.name for p in (tmp_path / 'sub').iterdir()] == ['svm.npz']


def test_a_file_without_settings_is_recomputed(tmp_path):
  path = str(tmp_path / 'old.npz')
  np.savez(path, w=np.zeros(2))
  found = stepcache.cached_arrays(path, lambda: {'w': np.ones(2)}, k=1)
  np.testing.assert_array_equal(found['w'], [1.0, 1.0])
  with np.load(path) as saved:
    np.testing.assert_array_equal(saved['w'], [1.0, 1.0])


class _Store:
  def __init__(self, metadata, directory='/stores/a'):
    self.metadata, self.directory = metadata, directory


def test_store_signature_is_the_extraction_hash():
  assert stepcache.store_signature(_Store({'config_hash': 'abc'})) == 'abc'
  assert stepcache.store_signature(_Store({})) == '/stores/a'
