"""Dataset sources: TFDS random-access data sources (no TensorFlow needed).

`tfds.data_source` reads TFDS datasets prepared in the `array_record` format
with plain numpy (OpenCV decodes the images), so cnnjax never imports
TensorFlow. Building a dataset does need TensorFlow, once, in any
environment; a dataset that is not prepared fails at once with the exact
commands (`DatasetNotPreparedError`).

Records are uniform across classification sources, the demo included:
`source[i] -> {'image': uint8 [H, W, 3] RGB, 'label': int}`, with
`num_classes` and `class_names` on the source. PASCAL VOC records from TFDS
become `TfdsVocImage`s, the `voc.VocImage` of the rest of the code.

SUN-397 uses the study's own split (SPEC 2): 50% / 10% / 40% of the images of
every class, drawn with a fixed seed from all 108,753 images (TFDS config
`sun397/tfds`, its train+validation+test together), recorded as JSON in the
workdir so that every run of a study shares it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cnnjax import config_lib
from cnnjax.data import synthetic
from cnnjax.data import voc

SUN397_STUDY_FRACTIONS = (0.5, 0.1, 0.4)  # train, val, test of every class
SUN397_SPLIT_FILE = 'sun397_split.json'

# Our split names -> TFDS split expressions.
_IMAGENET_SPLITS = {'train': 'train', 'val': 'validation'}
_VOC_SPLITS = {'train': 'train', 'val': 'validation',
               'trainval': 'train+validation', 'test': 'test'}
_SUN397_ALL = 'train+validation+test'


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is missing or not in the array_record format."""


_BUILD = ('  pip install tensorflow tensorflow-datasets   # only to build\n'
          '  tfds build {name} --data_dir={root} --file_format=array_record')
_HOW_TO_PREPARE = {
    'imagenet2012': (
        'ImageNet needs a manual download:\n'
        '  1. Register at https://image-net.org/download-images and download '
        'ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar '
        '(6.3 GB).\n'
        '  2. Put both files in {root}/downloads/manual/\n'
        '  3. Build (in any environment with TensorFlow):\n' + _BUILD),
    'sun397/tfds': (
        'Build it (downloads SUN397.tar.gz, 37 GB, from '
        'vision.princeton.edu; in any environment with TensorFlow):\n' +
        _BUILD),
    'voc/2007': (
        'Build it (downloads VOCtrainval_06-Nov-2007.tar and '
        'VOCtest_06-Nov-2007.tar, 0.9 GB; in any environment with '
        'TensorFlow):\n' + _BUILD + '\n'
        'Or skip TFDS: read an unpacked VOCdevkit folder with '
        'cnnjax.data.voc.load_voc_split.'),
}


def prepare_instructions(name: str, data_dir: str | None = None) -> str:
  """The commands that prepare TFDS dataset `name` for `tfds_source`."""
  root = data_dir or tfds.core.constants.get_default_data_dir()
  steps = _HOW_TO_PREPARE.get(name.split(':')[0], 'Build it:\n' + _BUILD)
  version_dir = tfds.builder(name, data_dir=data_dir).data_dir
  return (steps.format(name=name, root=root) + '\n'
          'A copy already built as TFRecord can be converted instead:\n'
          f'  tfds convert_format --dataset_version_dir={version_dir} '
          '--out_file_format=array_record')


def tfds_source(name: str, split: str, data_dir: str | None = None,
                decoders: Mapping[str, Any] | None = None) -> Sequence[dict]:
  """`tfds.data_source(name, split=..., data_dir=...)`, never downloading.

  Args:
    name: TFDS name, e.g. 'imagenet2012', 'sun397/tfds', 'voc/2007'.
    split: TFDS split expression ('train', 'train+validation', ...).
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    decoders: TFDS decoders, e.g. {'image': tfds.decode.SkipDecoding()}.

  Returns:
    The random-access source (`len`, `[i]`).

  Raises:
    DatasetNotPreparedError: no array_record copy of the dataset exists; the
      message gives the commands that prepare it.
  """
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False, decoders=decoders)
  except NotImplementedError as error:  # TFDS's answer when no array_record.
    builder = tfds.builder(name, data_dir=data_dir)
    state = ('is prepared, but not as array_record'
             if builder.is_prepared() else 'is not prepared')
    raise DatasetNotPreparedError(
        f'TFDS dataset {name!r} {state} (looked in {builder.data_dir}).\n'
        + prepare_instructions(name, data_dir)) from error


def _as_rgb(image: Any, where: str) -> np.ndarray:
  """uint8 [H, W, 3]; grey-scale images (TFDS keeps their shape) become RGB."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=2)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'{where}: expected a uint8 [H, W, 3] RGB image, got '
                     f'{image.dtype} {image.shape}')
  return image


class ClassificationSource:
  """Uniform records `{'image': uint8 [H, W, 3] RGB, 'label': int}`.

  A view of a TFDS source, optionally restricted to some of its records.
  """

  def __init__(self, records: Sequence[dict], class_names: Sequence[str],
               name: str, indices: np.ndarray | None = None):
    """Args:
      records: the TFDS source (`[i]` gives a dict with 'image' and 'label').
      class_names: label names, in label order.
      name: for error messages.
      indices: the records of this view, in order (default: all).
    """
    self.records = records
    self.class_names = tuple(class_names)
    self.num_classes = len(self.class_names)
    self.name = name
    self.indices = (np.arange(len(records)) if indices is None
                    else np.asarray(indices, np.int64))

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    record = self.records[int(self.indices[index])]
    where = f'{self.name} record {int(self.indices[index])}'
    return {'image': _as_rgb(record['image'], where),
            'label': int(record['label'])}


def study_split(labels: np.ndarray, seed: int,
                fractions: Sequence[float] = SUN397_STUDY_FRACTIONS
                ) -> dict[str, np.ndarray]:
  """Splits every class separately into train / val / test.

  A class of n images gets floor(f_train * n) train and floor(f_val * n) val
  images, test takes the rest; which ones comes from one
  `np.random.default_rng(seed)` permuting the classes' members in label
  order. Pure: the same labels and seed always give the same split.

  Args:
    labels: int [N], the label of every image.
    seed: the split seed.
    fractions: (train, val, test), summing to 1.

  Returns:
    {'train', 'val', 'test'}: int64 sorted indices into `labels`; disjoint,
    together all of them.

  Raises:
    ValueError: fractions of the wrong length or not summing to 1.
  """
  if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9:
    raise ValueError(f'fractions must be (train, val, test) summing to 1, got '
                     f'{tuple(fractions)}')
  labels = np.asarray(labels).reshape(-1)
  rng = np.random.default_rng(seed)
  parts = {'train': [], 'val': [], 'test': []}
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    num_train = int(np.floor(fractions[0] * len(members) + 1e-9))
    num_val = int(np.floor(fractions[1] * len(members) + 1e-9))
    parts['train'].append(members[:num_train])
    parts['val'].append(members[num_train:num_train + num_val])
    parts['test'].append(members[num_train + num_val:])
  return {split: np.sort(np.concatenate(chunks + [np.zeros(0, np.int64)]))
          for split, chunks in parts.items()}


def _labels_of(name: str, split: str, data_dir: str | None) -> np.ndarray:
  """Every label of a TFDS split, reading records without decoding images."""
  records = tfds_source(name, split, data_dir,
                        decoders={'image': tfds.decode.SkipDecoding()})
  return np.asarray([int(records[i]['label']) for i in range(len(records))],
                    np.int64)


def sun397_split(data_dir: str | None, workdir: str | None,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """The study's SUN-397 split, read from or recorded in the workdir.

  Args:
    data_dir: TFDS data dir.
    workdir: where `sun397_split.json` is kept (None: computed, not kept).
    seed: split seed.

  Returns:
    {'train', 'val', 'test'}: indices into `sun397/tfds`
    'train+validation+test'.

  Raises:
    ValueError: the recorded split was made with another seed or for a
      dataset of another size (names the file).
  """
  path = os.path.join(workdir, SUN397_SPLIT_FILE) if workdir else None
  if path and os.path.isfile(path):
    with open(path) as f:
      recorded = json.load(f)
    num_examples = len(tfds_source('sun397/tfds', _SUN397_ALL, data_dir))
    if (recorded['seed'], recorded['num_examples']) != (seed, num_examples):
      raise ValueError(
          f'{path}: recorded for seed {recorded["seed"]} and '
          f'{recorded["num_examples"]} images, but this run has seed {seed} '
          f'and {num_examples} images; use another workdir or delete it')
    return {split: np.asarray(indices, np.int64)
            for split, indices in recorded['splits'].items()}
  labels = _labels_of('sun397/tfds', _SUN397_ALL, data_dir)
  splits = study_split(labels, seed)
  if path:
    config_lib.write_json_atomic(path, {
        'dataset': f'sun397/tfds {_SUN397_ALL}', 'seed': seed,
        'fractions': list(SUN397_STUDY_FRACTIONS),
        'num_examples': len(labels),
        'splits': {split: indices.tolist()
                   for split, indices in splits.items()},
    })
  return splits


def classification_source(name: str, split: str, data_dir: str | None = None,
                          *, workdir: str | None = None, seed: int = 0,
                          demo_options: Mapping[str, Any] | None = None):
  """A classification source by name, with uniform records.

  Args:
    name: 'demo' (generated, see `synthetic.demo_classification`),
      'imagenet2012' (TFDS, manual download) or 'sun397' (TFDS, the study's
      split).
    split: 'train' or 'val'; also 'test' for 'sun397' and 'demo' (its
      stand-in).
    data_dir: TFDS data dir, or the demo cache root for 'demo'.
    workdir: where the SUN-397 split is recorded.
    seed: the SUN-397 split seed.
    demo_options: keyword arguments of `synthetic.demo_classification`.

  Returns:
    A source: `len`, `[i] -> {'image', 'label'}`, `num_classes`,
    `class_names`.

  Raises:
    ValueError: an unknown name or split.
    DatasetNotPreparedError: see `tfds_source`.
  """
  if name == 'demo':
    path = synthetic.demo_classification(data_dir, test=split == 'test',
                                         **(demo_options or {}))
    return synthetic.DemoClassificationSource(path, split)
  if name == 'imagenet2012':
    if split not in _IMAGENET_SPLITS:
      raise ValueError(f'imagenet2012 split must be one of '
                       f'{sorted(_IMAGENET_SPLITS)}, got {split!r}')
    records = tfds_source(name, _IMAGENET_SPLITS[split], data_dir)
    return ClassificationSource(records, _label_names(name, data_dir), name)
  if name == 'sun397':
    splits = sun397_split(data_dir, workdir, seed)
    if split not in splits:
      raise ValueError(f'sun397 split must be one of {sorted(splits)}, got '
                       f'{split!r}')
    records = tfds_source('sun397/tfds', _SUN397_ALL, data_dir)
    return ClassificationSource(records, _label_names('sun397/tfds', data_dir),
                                'sun397', splits[split])
  raise ValueError(f"unknown classification source {name!r}; known: 'demo', "
                   "'imagenet2012', 'sun397'")


def _label_names(name: str, data_dir: str | None) -> tuple[str, ...]:
  return tuple(tfds.builder(name, data_dir=data_dir).info.features[
      'label'].names)


# ----------------------------------------------------------------------------
# PASCAL VOC from TFDS.


def tfds_boxes_to_voc(bbox: np.ndarray, width: int, height: int) -> np.ndarray:
  """TFDS VOC boxes back to the devkit's 1-based inclusive pixel boxes.

  TFDS's VOC builder stores each XML box as `BBox(ymin / height, xmin /
  width, ymax / height, xmax / width)` in float32, where xmin..ymax are the
  XML's 1-based inclusive integers and width/height the XML's image size.
  Multiplying back and rounding is the exact inverse: float32 keeps 24 bits,
  so `v * width` lies within 1e-4 of the integer for any side below 10^3
  (checked exhaustively in the tests).

  Args:
    bbox: float [N, 4] (ymin, xmin, ymax, xmax), normalised.
    width: image width in pixels.
    height: image height in pixels.

  Returns:
    int32 [N, 4] (x1, y1, x2, y2), 1-based inclusive.
  """
  bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
  scale = np.array([width, height, width, height], np.float64)
  return np.round(bbox[:, [1, 0, 3, 2]] * scale).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsVocImage(voc.VocImage):
  """A VocImage whose pixels are record `index` of a TFDS data source.

  `path` names the record (`tfds:voc/2007/test[12]`) and is no file; use
  `decode()`, as everywhere, to get the pixels.
  """
  records: Sequence[dict] | None = None
  index: int = 0

  def decode(self) -> np.ndarray:
    image = _as_rgb(self.records[self.index]['image'], self.path)
    if image.shape[:2] != (self.height, self.width):
      raise ValueError(f'{self.path}: decodes to {image.shape[1]}x'
                       f'{image.shape[0]} but was listed as {self.width}x'
                       f'{self.height}')
    return image


def tfds_voc_images(split: str = 'test', data_dir: str | None = None,
                    year: str = '2007') -> list[TfdsVocImage]:
  """The VOC images of a split from TFDS, as VocImages in devkit order.

  The listing reads the annotations and only the JPEG headers (image sizes);
  pixels are decoded on `decode()`. TFDS stores records shuffled; they are
  returned sorted by image id, the order of the devkit's ImageSets files.

  Args:
    split: 'train', 'val', 'trainval' or 'test'.
    data_dir: TFDS data dir.
    year: '2007' (or '2012', whose test split has no annotations).

  Returns:
    One TfdsVocImage per image, objects in XML order (difficult included).

  Raises:
    ValueError: an unknown split.
    DatasetNotPreparedError: see `tfds_source`.
  """
  if split not in _VOC_SPLITS:
    raise ValueError(f'VOC split must be one of {sorted(_VOC_SPLITS)}, got '
                     f'{split!r}')
  name = f'voc/{year}'
  listing = tfds_source(name, _VOC_SPLITS[split], data_dir,
                        decoders={'image': tfds.decode.SkipDecoding()})
  records = tfds_source(name, _VOC_SPLITS[split], data_dir)
  images = []
  for index in range(len(listing)):
    record = listing[index]
    with Image.open(io.BytesIO(record['image'])) as header:
      width, height = header.size
    objects = record['objects']
    filename = record['image/filename']
    if isinstance(filename, bytes):
      filename = filename.decode()
    images.append(TfdsVocImage(
        image_id=os.path.splitext(filename)[0],
        path=f'tfds:{name}/{_VOC_SPLITS[split]}[{index}]',
        width=width, height=height,
        boxes=tfds_boxes_to_voc(objects['bbox'], width, height),
        labels=np.asarray(objects['label'], np.int32).reshape(-1),
        difficult=np.asarray(objects['is_difficult'], bool).reshape(-1),
        truncated=np.asarray(objects['is_truncated'], bool).reshape(-1),
        records=records, index=index))
  return sorted(images, key=lambda image: image.image_id)
