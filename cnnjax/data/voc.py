"""PASCAL VOC devkit reader and writer (SPEC 5).

Layout read and written: `<devkit>/VOC<year>/{ImageSets/Main/<split>.txt,
Annotations/<id>.xml, JPEGImages/<id>.jpg}`. Boxes are kept exactly as the
XML has them: (x1, y1, x2, y2), 1-based inclusive pixel indices. Every
malformed input raises with the offending file named, because a silently
skipped object changes the AP numbers the study reports.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from typing import Mapping, Optional, Sequence

import numpy as np

from cnnjax import config_lib
from cnnjax.data.images import decode_image

__all__ = [
    'VOC_CLASSES', 'VocImage', 'load_voc_split', 'read_voc_annotation',
    'cls_labels', 'decode_image', 'write_voc_annotation', 'write_image_sets',
    'voc_year_dir',
]

# The 20 classes in devkit order (class index = position here).
VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous.
class VocImage:
  """One annotated image.

  Attributes:
    image_id: the devkit id, e.g. '000005'.
    path: the JPEG file.
    width: image width in pixels, from the XML.
    height: image height in pixels, from the XML.
    boxes: int32 [N, 4] (x1, y1, x2, y2), 1-based inclusive, as in the XML.
    labels: int32 [N] indices into VOC_CLASSES.
    difficult: bool [N].
    truncated: bool [N], or None where the source does not record it.
  """
  image_id: str
  path: str
  width: int
  height: int
  boxes: np.ndarray
  labels: np.ndarray
  difficult: np.ndarray
  truncated: Optional[np.ndarray] = None

  def decode(self) -> np.ndarray:
    """The image as uint8 [height, width, 3] RGB (size checked against XML)."""
    return decode_image(self.path, (self.width, self.height))


def voc_year_dir(devkit_dir: str, year: str = '2007') -> str:
  """`<devkit_dir>/VOC<year>`, or `devkit_dir` itself if it is that folder."""
  if os.path.isdir(os.path.join(devkit_dir, 'Annotations')):
    return devkit_dir
  return os.path.join(devkit_dir, f'VOC{year}')


def _check_boxes(where: str, boxes: np.ndarray, width: int,
                 height: int) -> None:
  """Raises if a box leaves the image or is inverted (1-based inclusive)."""
  for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes).reshape(-1, 4)):
    if x1 < 1 or y1 < 1 or x2 > width or y2 > height or x2 < x1 or y2 < y1:
      raise ValueError(
          f'{where}: object {i} box (x1={x1}, y1={y1}, x2={x2}, y2={y2}) is '
          f'outside the {width}x{height} image or inverted (boxes are 1-based '
          'inclusive)')


def _int_field(path: str, node: ET.Element, tag: str, default=None) -> int:
  """An integer child `tag` of `node`; integral floats ('12.0') accepted."""
  child = node.find(tag)
  if child is None or child.text is None or not child.text.strip():
    if default is not None:
      return default
    raise ValueError(f'{path}: <{node.tag}> has no <{tag}>')
  text = child.text.strip()
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f'{path}: <{tag}> is not a number: {text!r}') from None
  if value != int(value):
    raise ValueError(f'{path}: <{tag}> is not an integer pixel index: {text!r}')
  return int(value)


def read_voc_annotation(xml_path: str, image_id: str,
                        image_path: str) -> VocImage:
  """Parses one devkit annotation file.

  Args:
    xml_path: `Annotations/<id>.xml`.
    image_id: the devkit id.
    image_path: the matching JPEG (recorded, not read).

  Returns:
    The VocImage, objects in file order (difficult ones included).

  Raises:
    FileNotFoundError: the XML is missing.
    ValueError: malformed/truncated XML, a missing field, an unknown class, or
      a box outside the image.
  """
  if not os.path.isfile(xml_path):
    raise FileNotFoundError(f'annotation file not found: {xml_path}')
  try:
    root = ET.parse(xml_path).getroot()
  except ET.ParseError as err:
    raise ValueError(f'malformed annotation XML {xml_path}: {err}') from err
  size = root.find('size')
  if size is None:
    raise ValueError(f'{xml_path}: no <size> element')
  width = _int_field(xml_path, size, 'width')
  height = _int_field(xml_path, size, 'height')
  boxes, labels, difficult, truncated = [], [], [], []
  for obj in root.findall('object'):
    name_node = obj.find('name')
    name = (name_node.text or '').strip() if name_node is not None else ''
    if name not in _CLASS_INDEX:
      raise ValueError(f'{xml_path}: unknown class name {name!r}; expected '
                       f'one of {", ".join(VOC_CLASSES)}')
    bndbox = obj.find('bndbox')
    if bndbox is None:
      raise ValueError(f'{xml_path}: object {name!r} has no <bndbox>')
    boxes.append([_int_field(xml_path, bndbox, tag)
                  for tag in ('xmin', 'ymin', 'xmax', 'ymax')])
    labels.append(_CLASS_INDEX[name])
    # VOC2012 omits <difficult> on some objects: absent means not difficult.
    difficult.append(_int_field(xml_path, obj, 'difficult', default=0) != 0)
    truncated.append(_int_field(xml_path, obj, 'truncated', default=0) != 0)
  boxes = np.asarray(boxes, np.int32).reshape(-1, 4)  # [N, 4]
  _check_boxes(xml_path, boxes, width, height)
  return VocImage(image_id=image_id, path=image_path, width=width,
                  height=height, boxes=boxes,
                  labels=np.asarray(labels, np.int32),
                  difficult=np.asarray(difficult, bool),
                  truncated=np.asarray(truncated, bool))


def load_voc_split(devkit_dir: str, year: str = '2007',
                   split: str = 'test') -> list[VocImage]:
  """Reads every image of a devkit split, in the order of the split file.

  Args:
    devkit_dir: the VOCdevkit folder (or its VOC<year> folder directly).
    year: '2007' etc.
    split: 'train', 'val', 'trainval' or 'test' (any ImageSets/Main name).

  Returns:
    One VocImage per id of `ImageSets/Main/<split>.txt`.

  Raises:
    FileNotFoundError: the split file, an XML or a JPEG is missing.
    ValueError: see `read_voc_annotation`.
  """
  root = voc_year_dir(devkit_dir, year)
  split_file = os.path.join(root, 'ImageSets', 'Main', f'{split}.txt')
  if not os.path.isfile(split_file):
    raise FileNotFoundError(f'split file not found: {split_file}')
  with open(split_file) as f:
    image_ids = [line.split()[0] for line in f if line.strip()]
  images = []
  for image_id in image_ids:
    image_path = os.path.join(root, 'JPEGImages', f'{image_id}.jpg')
    if not os.path.isfile(image_path):
      raise FileNotFoundError(
          f'image file not found: {image_path} (listed in {split_file})')
    images.append(read_voc_annotation(
        os.path.join(root, 'Annotations', f'{image_id}.xml'), image_id,
        image_path))
  return images


def cls_labels(images: Sequence[VocImage]) -> np.ndarray:
  """PASCAL-CLS image labels: int8 [N_img, 20].

  +1 if the image has a non-difficult instance of the class, 0 if it has only
  difficult ones (ignored by the classification AP), -1 otherwise.
  """
  labels = -np.ones((len(images), len(VOC_CLASSES)), np.int8)
  for row, image in enumerate(images):
    labels[row, image.labels[image.difficult]] = 0
    labels[row, image.labels[~image.difficult]] = 1  # Wins over difficult.
  return labels


def write_voc_annotation(path: str, image_id: str, width: int, height: int,
                         boxes: np.ndarray, labels: np.ndarray,
                         difficult: np.ndarray,
                         truncated: np.ndarray) -> None:
  """Writes a devkit-style annotation XML that `read_voc_annotation` reads.

  Args:
    path: destination `Annotations/<id>.xml` (written atomically).
    image_id: the devkit id; the XML names `<id>.jpg`.
    width: image width.
    height: image height.
    boxes: int [N, 4] (x1, y1, x2, y2) 1-based inclusive.
    labels: int [N] indices into VOC_CLASSES.
    difficult: bool [N].
    truncated: bool [N].

  Raises:
    ValueError: a box outside the image, a bad label, or mismatched lengths.
  """
  boxes = np.asarray(boxes).reshape(-1, 4)
  labels, difficult, truncated = (np.asarray(a).reshape(-1)
                                  for a in (labels, difficult, truncated))
  if not len(boxes) == len(labels) == len(difficult) == len(truncated):
    raise ValueError(f'{path}: boxes/labels/difficult/truncated lengths differ:'
                     f' {len(boxes)}/{len(labels)}/{len(difficult)}/'
                     f'{len(truncated)}')
  if len(labels) and (labels.min() < 0 or labels.max() >= len(VOC_CLASSES)):
    raise ValueError(f'{path}: labels must be in [0, {len(VOC_CLASSES)}): '
                     f'{labels.tolist()}')
  _check_boxes(path, boxes, width, height)
  root = ET.Element('annotation')
  ET.SubElement(root, 'folder').text = 'VOC2007'
  ET.SubElement(root, 'filename').text = f'{image_id}.jpg'
  size = ET.SubElement(root, 'size')
  for tag, value in (('width', width), ('height', height), ('depth', 3)):
    ET.SubElement(size, tag).text = str(int(value))
  ET.SubElement(root, 'segmented').text = '0'
  for box, label, diff, trunc in zip(boxes, labels, difficult, truncated):
    obj = ET.SubElement(root, 'object')
    ET.SubElement(obj, 'name').text = VOC_CLASSES[int(label)]
    ET.SubElement(obj, 'pose').text = 'Unspecified'
    ET.SubElement(obj, 'truncated').text = str(int(bool(trunc)))
    ET.SubElement(obj, 'difficult').text = str(int(bool(diff)))
    bndbox = ET.SubElement(obj, 'bndbox')
    for tag, value in zip(('xmin', 'ymin', 'xmax', 'ymax'), box):
      ET.SubElement(bndbox, tag).text = str(int(value))
  ET.indent(root, space='\t')
  config_lib.write_text_atomic(
      path, ET.tostring(root, encoding='unicode') + '\n')


def write_image_sets(devkit_year_dir: str, splits: Mapping[str, Sequence[str]],
                     images: Sequence[VocImage]) -> None:
  """Writes `ImageSets/Main/<split>.txt` and `<class>_<split>.txt` files.

  The per-class files follow the devkit format, one `<id> <label>` line per
  image with the label right-aligned in two characters (' 1', '-1', ' 0'),
  the PASCAL-CLS labels of `cls_labels`.

  Args:
    devkit_year_dir: the `VOC<year>` folder.
    splits: split name -> image ids in order.
    images: annotations covering every id named in `splits`.

  Raises:
    ValueError: a split names an id that `images` lacks.
  """
  by_id = {image.image_id: image for image in images}
  main_dir = os.path.join(devkit_year_dir, 'ImageSets', 'Main')
  for split, image_ids in splits.items():
    missing = [i for i in image_ids if i not in by_id]
    if missing:
      raise ValueError(f'split {split!r} names ids without annotations: '
                       f'{missing[:5]}')
    config_lib.write_text_atomic(os.path.join(main_dir, f'{split}.txt'),
                       ''.join(f'{i}\n' for i in image_ids))
    labels = cls_labels([by_id[i] for i in image_ids])  # [N, 20]
    for c, name in enumerate(VOC_CLASSES):
      config_lib.write_text_atomic(
          os.path.join(main_dir, f'{name}_{split}.txt'),
          ''.join(f'{i} {label:2d}\n'
                  for i, label in zip(image_ids, labels[:, c])))
