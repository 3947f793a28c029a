"""TFDS sources: the SUN-397 study split, VOC box conversion, missing data."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cnnjax.data import sources
from cnnjax.data import voc


def test_study_split_exact_per_class_counts():
  sizes = {0: 100, 1: 37, 2: 11, 3: 3, 4: 1, 7: 20}
  # floor(0.5 n) train, floor(0.1 n) val, the rest test.
  expected = {0: (50, 10, 40), 1: (18, 3, 16), 2: (5, 1, 5), 3: (1, 0, 2),
              4: (0, 0, 1), 7: (10, 2, 8)}
  labels = np.random.default_rng(0).permutation(
      np.repeat(list(sizes), list(sizes.values())))
  split = sources.study_split(labels, seed=3)
  everything = np.concatenate([split['train'], split['val'], split['test']])
  assert sorted(everything.tolist()) == list(range(len(labels)))  # disjoint
  for name in split:
    assert split[name].dtype == np.int64
    assert (np.diff(split[name]) > 0).all()  # sorted
  for label, counts in expected.items():
    got = tuple(int((labels[split[name]] == label).sum())
                for name in ('train', 'val', 'test'))
    assert got == counts, label


def test_study_split_is_deterministic_in_the_seed():
  labels = np.repeat(np.arange(5), 40)
  a = sources.study_split(labels, seed=0)
  b = sources.study_split(labels.copy(), seed=0)
  c = sources.study_split(labels, seed=1)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(a['train'], c['train'])
  with pytest.raises(ValueError, match='summing to 1'):
    sources.study_split(labels, 0, fractions=(0.5, 0.2, 0.4))


def test_tfds_boxes_invert_tfds_conversion_exactly():
  # TFDS stores float32(x / width) for XML integers 1 <= x <= width; rounding
  # x * width back must recover x for every image side up to 1000.
  for width in range(1, 1001):
    x = np.arange(1, width + 1)
    stored = (x / width).astype(np.float32)
    bbox = np.stack([stored, stored, stored, stored], axis=1)
    boxes = sources.tfds_boxes_to_voc(bbox, width, width)
    assert (boxes == x[:, None]).all(), width
  # Order: TFDS (ymin, xmin, ymax, xmax) -> (x1, y1, x2, y2).
  bbox = np.float32([[20 / 375, 10 / 500, 370 / 375, 60 / 500]])
  np.testing.assert_array_equal(sources.tfds_boxes_to_voc(bbox, 500, 375),
                                [[10, 20, 60, 370]])


def test_tfds_voc_labels_are_the_devkit_classes():
  names = tfds.builder('voc/2007').info.features['objects']['label'].names
  assert tuple(names) == voc.VOC_CLASSES


@pytest.mark.parametrize('name, split, expected', [
    ('imagenet2012', 'train',
     ['ILSVRC2012_img_train.tar', '{root}/downloads/manual/',
      'tfds build imagenet2012 --data_dir={root} --file_format=array_record']),
    ('sun397', 'train',
     ['tfds build sun397/tfds --data_dir={root} --file_format=array_record']),
])
def test_missing_dataset_fails_with_the_steps(tmp_path, name, split,
                                              expected):
  root = str(tmp_path / 'tfds')
  with pytest.raises(sources.DatasetNotPreparedError) as error:
    sources.classification_source(name, split, root, workdir=str(tmp_path))
  message = str(error.value)
  assert 'is not prepared' in message
  for text in expected:
    assert text.format(root=root) in message
  assert 'tfds convert_format --dataset_version_dir=' in message
  assert not os.path.exists(os.path.join(str(tmp_path), 'sun397_split.json'))


def test_missing_voc_fails_with_the_steps(tmp_path):
  root = str(tmp_path)
  with pytest.raises(sources.DatasetNotPreparedError,
                     match='tfds build voc/2007 --data_dir=' + root):
    sources.tfds_voc_images('test', root)


def test_imagenet_records_are_uniform():
  with tfds.testing.mock_data(num_examples=6):  # Plumbing only.
    source = sources.classification_source('imagenet2012', 'val')
    assert len(source) == 6 and source.num_classes == 1000
    assert source.class_names[0] == 'n01440764'
    for i in range(len(source)):
      record = source[i]
      assert set(record) == {'image', 'label'}
      assert record['image'].dtype == np.uint8
      assert record['image'].ndim == 3 and record['image'].shape[2] == 3
      assert isinstance(record['label'], int) and 0 <= record['label'] < 1000
    with pytest.raises(ValueError, match='imagenet2012 split'):
      sources.classification_source('imagenet2012', 'test')


def _fake_data_source(examples_by_name):
  """An `as_data_source` replacement serving given examples per builder.

  Honours the image decoder the way TFDS's numpy path does: SkipDecoding
  gives the JPEG bytes, otherwise the decoded uint8 array.
  """
  def as_data_source(builder, split, decoders=None, deserialize_method=None):
    del deserialize_method
    skip = decoders is not None and isinstance(decoders.get('image'),
                                               tfds.decode.SkipDecoding)
    records = []
    for example in examples_by_name[builder.name][split]:
      record = dict(example)
      if not skip:
        record['image'] = np.asarray(Image.open(io.BytesIO(example['image'])))
      records.append(record)
    return records
  return as_data_source


def _jpeg(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG')
  return buffer.getvalue()


def test_sun397_study_split_recorded_in_workdir(tmp_path, monkeypatch):
  labels = np.repeat([0, 1, 2], [30, 20, 10])
  labels = np.random.default_rng(1).permutation(labels)
  pixels = np.full((6, 5, 3), 7, np.uint8)
  examples = [{'image': _jpeg(pixels), 'label': int(label)}
              for label in labels]
  fake = _fake_data_source({'sun397': {'train+validation+test': examples}})
  workdir = str(tmp_path)
  with tfds.testing.mock_data(as_data_source_fn=fake):
    train = sources.classification_source('sun397', 'train', workdir=workdir,
                                          seed=5)
    expected = sources.study_split(labels, seed=5)
    np.testing.assert_array_equal(train.indices, expected['train'])
    assert len(train) == 15 + 10 + 5 and train.num_classes == 397
    assert [train[i]['label'] for i in range(len(train))] == labels[
        expected['train']].tolist()
    assert train[0]['image'].shape == (6, 5, 3)
    with open(os.path.join(workdir, 'sun397_split.json')) as f:
      recorded = json.load(f)
    assert recorded['seed'] == 5 and recorded['num_examples'] == 60
    for name in ('train', 'val', 'test'):
      assert recorded['splits'][name] == expected[name].tolist()
    # Later runs read the recorded split instead of recomputing it.
    monkeypatch.setattr(sources, 'study_split', None)
    test = sources.classification_source('sun397', 'test', workdir=workdir,
                                         seed=5)
    np.testing.assert_array_equal(test.indices, expected['test'])
    with pytest.raises(ValueError, match='sun397_split.json: recorded for '
                       'seed 5'):
      sources.classification_source('sun397', 'val', workdir=workdir, seed=6)


def _tfds_voc_example(image: voc.VocImage) -> dict:
  """What TFDS's VOC builder stores for one devkit image (its own formula)."""
  with open(image.path, 'rb') as f:
    jpeg = f.read()
  bbox = [(y1 / image.height, x1 / image.width, y2 / image.height,
           x2 / image.width) for x1, y1, x2, y2 in image.boxes]
  return {
      'image': jpeg,
      'image/filename': f'{image.image_id}.jpg'.encode(),
      'objects': {
          'bbox': np.asarray(bbox, np.float32).reshape(-1, 4),
          'label': image.labels.astype(np.int64),
          'is_difficult': image.difficult,
          'is_truncated': image.truncated,
          'pose': np.zeros(len(image.labels), np.int64),
      },
  }


def test_tfds_voc_images_match_the_devkit(voc_mini_devkit):
  devkit = voc.load_voc_split(str(voc_mini_devkit), '2007', 'trainval')
  shuffled = [devkit[i] for i in np.random.default_rng(0).permutation(
      len(devkit))]  # TFDS stores records shuffled.
  fake = _fake_data_source({'voc': {
      'train+validation': [_tfds_voc_example(image) for image in shuffled]}})
  with tfds.testing.mock_data(as_data_source_fn=fake):
    images = sources.tfds_voc_images('trainval')
  assert [image.image_id for image in images] == [
      image.image_id for image in devkit]
  for got, want in zip(images, devkit):
    assert isinstance(got, voc.VocImage)
    assert (got.width, got.height) == (want.width, want.height)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    assert got.boxes.dtype == np.int32
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.difficult, want.difficult)
    np.testing.assert_array_equal(got.truncated, want.truncated)
    np.testing.assert_array_equal(got.decode(), want.decode())
    assert got.path.startswith('tfds:voc/2007/train+validation[')
  with pytest.raises(ValueError, match='VOC split'):
    sources.tfds_voc_images('everything')


def test_demo_and_unknown_sources(tmp_path):
  source = sources.classification_source(
      'demo', 'val', str(tmp_path),
      demo_options=dict(num_classes=4, per_class=5, image_size=24,
                        num_workers=0))
  assert len(source) == 4 and source.num_classes == 4
  record = source[3]
  assert record['image'].shape == (24, 24, 3) and record['label'] == 3
  with pytest.raises(ValueError, match="unknown classification source 'sun'"):
    sources.classification_source('sun', 'train')


def test_grey_images_become_rgb():
  grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
  for image in (grey, grey[..., None]):
    rgb = sources._as_rgb(image, 'x')
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[..., 1], grey)
  with pytest.raises(ValueError, match='where: expected a uint8'):
    sources._as_rgb(np.zeros((2, 2, 3), np.float32), 'where')
