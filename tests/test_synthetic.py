"""The generated demo datasets: layout, annotations, determinism, difficulty."""

import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cnnjax.data import synthetic
from cnnjax.data import voc

_SIZES = dict(num_trainval=80, num_test=80)


@pytest.fixture(scope='module')
def demo_devkit(tmp_path_factory):
  return synthetic.demo_voc(str(tmp_path_factory.mktemp('demo')), seed=0,
                            num_workers=2, **_SIZES)


def _tree_bytes(root):
  contents = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        contents[os.path.relpath(path, root)] = f.read()
  return contents


def test_demo_voc_is_deterministic_and_cached(demo_devkit, tmp_path):
  # Generated again elsewhere, in this process instead of 2 workers.
  again = synthetic.demo_voc(str(tmp_path), seed=0, num_workers=0, **_SIZES)
  assert os.path.basename(os.path.dirname(again)) == os.path.basename(
      os.path.dirname(demo_devkit))
  first, second = _tree_bytes(demo_devkit), _tree_bytes(again)
  assert len(first) == 2 * 160 + 4 * 21  # JPEG + XML; 4 splits x (1 + 20)
  assert first == second
  # Cached: a second call returns the folder without touching it.
  marker = os.path.join(again, 'VOC2007', 'Annotations', '000001.xml')
  mtime = os.stat(marker).st_mtime_ns
  assert synthetic.demo_voc(str(tmp_path), seed=0, **_SIZES) == again
  assert os.stat(marker).st_mtime_ns == mtime
  # Another seed is another dataset, in another folder.
  other = synthetic.demo_voc(str(tmp_path), seed=1, num_workers=0,
                             num_trainval=20, num_test=20)
  assert other != again and 'seed1' in other


def test_demo_voc_reads_back_as_voc(demo_devkit):
  splits = {split: voc.load_voc_split(demo_devkit, '2007', split)
            for split in ('train', 'val', 'trainval', 'test')}
  assert len(splits['trainval']) == 80 and len(splits['test']) == 80
  ids = {split: [image.image_id for image in images]
         for split, images in splits.items()}
  assert sorted(ids['train'] + ids['val']) == ids['trainval']
  assert not set(ids['trainval']) & set(ids['test'])
  for split in ('trainval', 'test'):
    images = splits[split]
    labels = np.concatenate([image.labels for image in images])
    assert set(labels.tolist()) == set(range(20)), split  # every class
    for image in images:
      assert (image.width, image.height) == synthetic.DEMO_VOC_IMAGE_SIZE
      assert image.decode().shape == (120, 160, 3)
      boxes = image.boxes
      assert (boxes[:, :2] >= 1).all() and (boxes[:, 2] <= 160).all()
      assert (boxes[:, 3] <= 120).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
    difficult = np.concatenate([image.difficult for image in images])
    truncated = np.concatenate([image.truncated for image in images])
    assert 0.02 < difficult.mean() < 0.3, (split, difficult.mean())
    assert 0.05 < truncated.mean() < 0.5, (split, truncated.mean())
    assert 1.5 < len(labels) / len(images) < 3.5


def test_demo_voc_per_class_image_sets_match_annotations(demo_devkit):
  main = os.path.join(demo_devkit, 'VOC2007', 'ImageSets', 'Main')
  for split in ('train', 'val', 'trainval', 'test'):
    images = voc.load_voc_split(demo_devkit, '2007', split)
    for c, name in enumerate(voc.VOC_CLASSES):
      with open(os.path.join(main, f'{name}_{split}.txt')) as f:
        rows = [line.split() for line in f]
      assert [row[0] for row in rows] == [image.image_id for image in images]
      for row, image in zip(rows, images):
        of_class = image.labels == c
        if (of_class & ~image.difficult).any():
          expected = 1
        elif of_class.any():
          expected = 0
        else:
          expected = -1
        assert int(row[1]) == expected, (name, split, image.image_id)


def test_gt_box_crops(demo_devkit):
  images = voc.load_voc_split(demo_devkit, '2007', 'test')
  crops, labels = synthetic.gt_box_crops(demo_devkit, 'test', size=16)
  assert crops.shape == (sum(len(i.labels) for i in images), 16, 16, 3)
  assert crops.dtype == np.uint8
  np.testing.assert_array_equal(labels,
                                np.concatenate([i.labels for i in images]))
  easy, easy_labels = synthetic.gt_box_crops(demo_devkit, 'test', size=16,
                                             include_difficult=False)
  keep = np.concatenate([~i.difficult for i in images])
  np.testing.assert_array_equal(easy_labels, labels[keep])
  np.testing.assert_array_equal(easy, crops[keep])
  # Area-resized to 1x1, a crop is the mean colour of the box's pixels
  # (1-based inclusive box -> rows y1-1 .. y2-1), channel order included.
  means, _ = synthetic.gt_box_crops(demo_devkit, 'test', size=1)
  expected = [image.decode()[y1 - 1:y2, x1 - 1:x2].reshape(-1, 3).mean(axis=0)
              for image in images for x1, y1, x2, y2 in image.boxes]
  np.testing.assert_allclose(means[:, 0, 0], expected, atol=0.51)


def test_colour_alone_does_not_name_the_class(demo_devkit):
  # Logistic regression on the mean colour of the GT crops: near chance
  # (0.05); the default-size set (300 + 300 images) measures 0.07.
  train, train_labels = synthetic.gt_box_crops(demo_devkit, 'trainval', 16)
  test, test_labels = synthetic.gt_box_crops(demo_devkit, 'test', 16)
  colour = lambda x: x.reshape(len(x), -1, 3).mean(axis=1) / 255.0
  model = LogisticRegression(max_iter=2000).fit(colour(train), train_labels)
  accuracy = model.score(colour(test), test_labels)
  assert accuracy < 0.2, accuracy


def test_demo_classification(tmp_path):
  kwargs = dict(num_classes=48, per_class=3, image_size=40)
  path = synthetic.demo_classification(str(tmp_path / 'a'), num_workers=0,
                                       **kwargs)
  again = synthetic.demo_classification(str(tmp_path / 'b'), num_workers=2,
                                        **kwargs)
  train = synthetic.DemoClassificationSource(path, 'train')
  val = synthetic.DemoClassificationSource(path, 'val')
  assert train.class_names == synthetic.classification_classes()
  assert train.num_classes == 48 and len(set(train.class_names)) == 48
  assert train.class_names[:2] == ('aeroplane_v0', 'aeroplane_v1')
  assert len(train) == 48 * 3 and len(val) == 48 * 1
  np.testing.assert_array_equal(np.bincount(train.labels), np.full(48, 3))
  record = train[5]
  assert record['image'].shape == (40, 40, 3)
  assert record['image'].dtype == np.uint8
  assert record['label'] == 5 and isinstance(record['label'], int)
  # Deterministic whatever the number of workers; images differ.
  for split in ('train', 'val'):
    other = synthetic.DemoClassificationSource(again, split)
    np.testing.assert_array_equal(
        np.asarray(synthetic.DemoClassificationSource(path, split).images),
        np.asarray(other.images))
  assert len({train[i]['image'].tobytes() for i in range(len(train))}) == 144
  assert train[0]['image'].std() > 10
  with pytest.raises(FileNotFoundError, match="split 'test' not found"):
    synthetic.DemoClassificationSource(path, 'test')
  # The SUN-397 stand-in's test split (50/10/40 per class) joins the same
  # folder on request; train and val are left as they were.
  before = np.asarray(train.images).copy()
  assert synthetic.demo_classification(str(tmp_path / 'a'), num_workers=0,
                                       test=True, **kwargs) == path
  test = synthetic.DemoClassificationSource(path, 'test')
  np.testing.assert_array_equal(np.bincount(test.labels), np.full(48, 2))
  np.testing.assert_array_equal(
      np.asarray(synthetic.DemoClassificationSource(path, 'train').images),
      before)
  seen = {train[i]['image'].tobytes() for i in range(len(train))}
  assert not seen & {test[i]['image'].tobytes() for i in range(len(test))}
  with pytest.raises(ValueError, match='num_classes'):
    synthetic.demo_classification(str(tmp_path), num_classes=49)
