"""Which VOC2007 a config means: the demo set, a VOCdevkit folder, or TFDS.

`config.data` of the VOC experiments (detection, classification, analyses):

  voc: 'demo' | 'devkit' | 'tfds'
  devkit_dir: the VOCdevkit folder (voc='devkit')
  tfds_data_dir: TFDS data dir (voc='tfds'; '' = TFDS's default)
  data_dir: cache root of the generated demo data ('' = default)
  demo_trainval, demo_test, demo_seed: the demo set's size and seed
"""

from __future__ import annotations

import os

import ml_collections

from cnnjax.data import synthetic
from cnnjax.data import voc

VOC_SOURCES = ('demo', 'devkit', 'tfds')

PREPARE_VOC2007 = """\
VOC2007 is not at {where}. Prepare it with:
  mkdir -p ~/data && cd ~/data
  wget http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar
  wget http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar
  tar xf VOCtrainval_06-Nov-2007.tar && tar xf VOCtest_06-Nov-2007.tar
and pass data.devkit_dir=~/data/VOCdevkit (the folder holding VOC2007/), or
use data.voc=tfds after `tfds build voc/2007 --file_format=array_record`."""


def check_voc(data: ml_collections.ConfigDict) -> None:
  """Fails at once, with the steps to prepare it, when VOC2007 is missing."""
  if data.voc not in VOC_SOURCES:
    raise ValueError(f'data.voc={data.voc!r}; valid: {", ".join(VOC_SOURCES)}')
  if data.voc == 'devkit':
    year_dir = os.path.join(os.path.expanduser(data.devkit_dir or ''),
                            'VOC2007')
    if not data.devkit_dir or not os.path.isdir(
        os.path.join(year_dir, 'Annotations')):
      raise FileNotFoundError(PREPARE_VOC2007.format(
          where=year_dir if data.devkit_dir else 'data.devkit_dir (unset)'))


def voc_split(data: ml_collections.ConfigDict, split: str) -> list[voc.VocImage]:
  """The annotated images of `split` ('trainval', 'test', ...) of VOC2007."""
  check_voc(data)
  if data.voc == 'demo':
    devkit = synthetic.demo_voc(data.data_dir or None, seed=data.demo_seed,
                                num_trainval=data.demo_trainval,
                                num_test=data.demo_test)
    return voc.load_voc_split(devkit, '2007', split)
  if data.voc == 'devkit':
    return voc.load_voc_split(os.path.expanduser(data.devkit_dir), '2007',
                              split)
  from cnnjax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.tfds_voc_images(split, data.tfds_data_dir or None)


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The `config.data` block with its defaults (the demo set)."""
  defaults = dict(voc='demo', devkit_dir='', tfds_data_dir='', data_dir='',
                  demo_trainval=300, demo_test=300, demo_seed=0)
  unknown = set(overrides) - set(defaults)
  if unknown:
    raise ValueError(f'unknown data config keys {sorted(unknown)}; known: '
                     f'{sorted(defaults)}')
  return ml_collections.ConfigDict({**defaults, **overrides})
