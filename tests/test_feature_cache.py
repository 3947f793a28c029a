"""The workdir's feature cache: reuse, and refusal of features of stale params."""

import cv2
import jax
import numpy as np
import pytest

from cnnjax import checkpoints
from cnnjax import nets as nets_lib
from cnnjax.data import voc
from cnnjax.features import cache
from cnnjax.models import caffenet

MODEL = {'num_classes': 5, 'width': 0.0625}
SIZE = 67


def _images(tmp_path):
  rng = np.random.default_rng(0)
  images = []
  for i in range(2):
    path = str(tmp_path / f'{i}.jpg')
    cv2.imwrite(path, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    images.append(voc.VocImage(f'{i:06d}', path, 50, 40,
                               np.array([[3, 4, 30, 35]], np.int32),
                               np.array([i], np.int32), np.array([False])))
  return images


def _net(directory, seed):
  params = caffenet.init_params(caffenet.CaffeNet(**MODEL),
                                jax.random.key(seed), SIZE)
  checkpoints.save_params(str(directory), params)
  return nets_lib.Net('pretrained', str(directory), None, MODEL, SIZE, 5, None)


def test_cached_store_is_reused_and_refused_after_the_net_changes(tmp_path):
  images = _images(tmp_path)
  net = _net(tmp_path / 'net', seed=0)
  kwargs = dict(layers=('pool5',), workdir=str(tmp_path / 'work'),
                batch_size=8)
  store = cache.features(net, images, 'test', 'gt', **kwargs)
  first = store.layer('pool5').read(np.arange(2))
  assert first.shape[0] == 2 and np.abs(first).sum() > 0
  again = cache.features(net, images, 'test', 'gt', **kwargs)
  np.testing.assert_array_equal(again.layer('pool5').read(np.arange(2)), first)
  with pytest.raises(ValueError, match='lacks layers'):
    cache.features(net, images, 'test', 'gt', **dict(kwargs, layers=('fc7',)))

  retrained = _net(tmp_path / 'net2', seed=1)  # same name, other params
  with pytest.raises(ValueError, match='other params'):
    cache.features(retrained, images, 'test', 'gt', **kwargs)
