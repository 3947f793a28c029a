"""VOC devkit reader/writer against direct XML reads and hand-worked labels."""

import os
import shutil
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from cnnjax.data import images as images_lib
from cnnjax.data import voc


def _etree_objects(xml_path):
  """An independent read: (boxes, class indices, difficult) from the XML."""
  root = ET.parse(xml_path).getroot()
  boxes, labels, difficult = [], [], []
  for obj in root.iter('object'):
    bb = obj.find('bndbox')
    boxes.append([int(bb.find(t).text)
                  for t in ('xmin', 'ymin', 'xmax', 'ymax')])
    labels.append(voc.VOC_CLASSES.index(obj.find('name').text))
    difficult.append(obj.find('difficult').text == '1')
  return boxes, labels, difficult


def test_class_list_is_devkit_order():
  assert voc.VOC_CLASSES == tuple(
      'aeroplane bicycle bird boat bottle bus car cat chair cow diningtable '
      'dog horse motorbike person pottedplant sheep sofa train tvmonitor'
      .split())


def test_voc_mini_matches_direct_xml_read(voc_mini_devkit):
  images = voc.load_voc_split(str(voc_mini_devkit), '2007', 'trainval')
  assert [im.image_id for im in images] == [f'00000{i}' for i in range(1, 6)]
  root = voc_mini_devkit / 'VOC2007'
  for image in images:
    boxes, labels, difficult = _etree_objects(
        root / 'Annotations' / f'{image.image_id}.xml')
    np.testing.assert_array_equal(image.boxes, np.array(boxes).reshape(-1, 4))
    np.testing.assert_array_equal(image.labels, labels)
    np.testing.assert_array_equal(image.difficult, difficult)
    assert image.boxes.dtype == np.int32 and image.labels.dtype == np.int32
    assert image.path == str(root / 'JPEGImages' / f'{image.image_id}.jpg')
  # Hand-checked: 000005 is 500x375 with chairs 3 and 5 difficult.
  assert (images[4].width, images[4].height) == (500, 375)
  np.testing.assert_array_equal(images[4].difficult,
                                [False, False, True, False, True])
  np.testing.assert_array_equal(images[4].boxes[2], [5, 244, 67, 374])
  assert [len(im.boxes) for im in images] == [2, 1, 2, 7, 5]


def test_split_order_follows_split_file(voc_mini_devkit):
  ids = [im.image_id for im in voc.load_voc_split(str(voc_mini_devkit),
                                                   split='train')]
  assert ids == ['000005', '000003']


def test_cls_labels_voc_mini(voc_mini_devkit):
  images = voc.load_voc_split(str(voc_mini_devkit), split='trainval')
  expected = -np.ones((5, 20), np.int8)
  c = voc.VOC_CLASSES.index
  expected[0, [c('dog'), c('person')]] = 1
  expected[1, c('train')] = 1
  expected[2, [c('sofa'), c('chair')]] = 1
  expected[3, c('car')] = 1
  expected[4, c('chair')] = 1  # Difficult chairs too, but non-difficult win.
  labels = voc.cls_labels(images)
  assert labels.dtype == np.int8
  np.testing.assert_array_equal(labels, expected)


def test_cls_labels_only_difficult_is_zero():
  boxes = np.array([[1, 1, 5, 5], [2, 2, 6, 6], [1, 1, 9, 9]], np.int32)
  image = voc.VocImage('x', 'x.jpg', 10, 10, boxes=boxes,
                       labels=np.array([8, 8, 11], np.int32),
                       difficult=np.array([True, True, False]))
  labels = voc.cls_labels([image])[0]
  assert labels[8] == 0 and labels[11] == 1
  assert (np.delete(labels, [8, 11]) == -1).all()


def test_decode_matches_opencv(voc_mini_devkit):
  image = voc.load_voc_split(str(voc_mini_devkit), split='val')[0]
  rgb = image.decode()
  assert rgb.dtype == np.uint8 and rgb.shape == (image.height, image.width, 3)
  np.testing.assert_array_equal(rgb, cv2.imread(image.path)[..., ::-1])


def _mini_devkit(tmp_path, voc_mini_devkit):
  """A writable copy of two voc_mini images in tmp_path."""
  root = tmp_path / 'VOCdevkit' / 'VOC2007'
  for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
    (root / sub).mkdir(parents=True)
  for image_id in ('000001', '000005'):
    for sub, ext in (('Annotations', 'xml'), ('JPEGImages', 'jpg')):
      shutil.copy(voc_mini_devkit / 'VOC2007' / sub / f'{image_id}.{ext}',
                  root / sub / f'{image_id}.{ext}')
  (root / 'ImageSets' / 'Main' / 'test.txt').write_text('000001\n000005\n')
  return root


def _edit_xml(path, old, new):
  text = path.read_text()
  assert old in text
  path.write_text(text.replace(old, new, 1))


def test_errors_name_the_file(tmp_path, voc_mini_devkit):
  root = _mini_devkit(tmp_path, voc_mini_devkit)
  devkit = str(root.parent)
  assert len(voc.load_voc_split(devkit, split='test')) == 2

  xml = root / 'Annotations' / '000005.xml'
  original = xml.read_text()
  xml.write_text(original[:len(original) // 2])  # Truncated XML.
  with pytest.raises(ValueError, match='000005.xml'):
    voc.load_voc_split(devkit, split='test')

  xml.write_text(original)
  _edit_xml(xml, '<name>chair</name>', '<name>armchair</name>')
  with pytest.raises(ValueError,
                     match=r"000005.xml.*unknown class name 'armchair'"):
    voc.load_voc_split(devkit, split='test')

  for old, new in (('<xmax>324</xmax>', '<xmax>501</xmax>'),  # x2 > width
                   ('<ymin>211</ymin>', '<ymin>0</ymin>'),    # y1 < 1
                   ('<xmin>263</xmin>', '<xmin>325</xmin>')):  # x2 < x1
    xml.write_text(original)
    _edit_xml(xml, old, new)
    with pytest.raises(ValueError, match='000005.xml.*object 0'):
      voc.load_voc_split(devkit, split='test')
  xml.write_text(original)

  jpeg = root / 'JPEGImages' / '000005.jpg'
  data = jpeg.read_bytes()
  jpeg.write_bytes(data[:len(data) // 2])  # Truncated: OpenCV would not fail.
  image = voc.load_voc_split(devkit, split='test')[1]
  with pytest.raises(ValueError, match='000005.jpg'):
    image.decode()
  jpeg.write_bytes(b'not a jpeg at all')
  with pytest.raises(ValueError, match='000005.jpg'):
    image.decode()

  jpeg.write_bytes(data)
  _edit_xml(xml, '<width>500</width>', '<width>501</width>')
  with pytest.raises(ValueError, match='000005.jpg.*501x375'):
    voc.load_voc_split(devkit, split='test')[1].decode()
  xml.write_text(original)

  os.remove(jpeg)
  with pytest.raises(FileNotFoundError, match='000005.jpg'):
    voc.load_voc_split(devkit, split='test')
  with pytest.raises(FileNotFoundError, match='trainval.txt'):
    voc.load_voc_split(devkit, split='trainval')


def test_write_annotation_round_trip(tmp_path):
  boxes = np.array([[1, 2, 30, 40], [5, 6, 64, 48]], np.int32)
  path = tmp_path / 'Annotations' / 'img7.xml'
  voc.write_voc_annotation(str(path), 'img7', 64, 48, boxes, [14, 0],
                           [False, True], [True, False])
  _, labels, difficult = _etree_objects(path)
  assert labels == [14, 0] and difficult == [False, True]
  image = voc.read_voc_annotation(str(path), 'img7', 'img7.jpg')
  np.testing.assert_array_equal(image.boxes, boxes)
  np.testing.assert_array_equal(image.labels, [14, 0])
  np.testing.assert_array_equal(image.difficult, [False, True])
  np.testing.assert_array_equal(image.truncated, [True, False])
  assert (image.width, image.height) == (64, 48)
  with pytest.raises(ValueError, match='bad.xml'):
    voc.write_voc_annotation(str(tmp_path / 'bad.xml'), 'bad', 64, 48,
                             [[1, 1, 65, 10]], [0], [False], [False])


def test_write_image_sets_devkit_format(tmp_path):
  rgb = np.full((8, 8, 3), 128, np.uint8)

  def make(image_id, labels, difficult):
    images_lib.write_jpeg(str(tmp_path / 'JPEGImages' / f'{image_id}.jpg'), rgb)
    voc.write_voc_annotation(
        str(tmp_path / 'Annotations' / f'{image_id}.xml'), image_id, 8, 8,
        [[1, 1, 4, 4]] * len(labels), labels, difficult, [False] * len(labels))
  make('a', [0], [False])
  make('b', [0, 6], [True, False])
  make('c', [6], [False])
  images = [voc.read_voc_annotation(
      str(tmp_path / 'Annotations' / f'{i}.xml'), i,
      str(tmp_path / 'JPEGImages' / f'{i}.jpg')) for i in 'abc']
  voc.write_image_sets(str(tmp_path), {'trainval': ['a', 'b'], 'test': ['c']},
                       images)
  main = tmp_path / 'ImageSets' / 'Main'
  assert (main / 'trainval.txt').read_text() == 'a\nb\n'
  assert (main / 'aeroplane_trainval.txt').read_text() == 'a  1\nb  0\n'
  assert (main / 'car_trainval.txt').read_text() == 'a -1\nb  1\n'
  assert (main / 'car_test.txt').read_text() == 'c  1\n'
  assert len(list(main.glob('*_test.txt'))) == 20
  loaded = voc.load_voc_split(str(tmp_path), split='trainval')
  np.testing.assert_array_equal(loaded[1].labels, [0, 6])
  np.testing.assert_array_equal(loaded[0].decode(), rgb)
  with pytest.raises(ValueError, match='zz'):
    voc.write_image_sets(str(tmp_path), {'x': ['zz']}, images)
