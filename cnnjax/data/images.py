"""JPEG decoding and encoding at the edge of the data pipeline.

Decoded images are uint8 HWC **RGB** everywhere in cnnjax; the BGR flip of
Caffe's inputs happens later, in `preprocess.to_caffe_input` and the region
warp. Decoding is strict: a truncated file raises instead of coming back with
grey rows (OpenCV's `imread` only prints a warning), because a silently
damaged image would corrupt features without anyone noticing.
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np
from PIL import Image


def decode_image(path: str,
                 expected_size: Optional[tuple[int, int]] = None) -> np.ndarray:
  """Reads an image file into uint8 [H, W, 3] RGB.

  Grey-scale and CMYK files (a few exist in ImageNet) are converted to RGB.

  Args:
    path: the image file (JPEG, or anything Pillow reads).
    expected_size: (width, height) the annotation declares, checked so that a
      box annotation is never applied to a different-sized image.

  Returns:
    uint8 [H, W, 3] RGB.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file cannot be decoded (corrupt or truncated), or its size
      differs from `expected_size`; the message names the file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'image file not found: {path}')
  try:
    with Image.open(path) as image:
      image.load()  # Raises on truncated data, unlike OpenCV.
      rgb = np.asarray(image.convert('RGB'))  # [H, W, 3]
  except OSError as err:  # Includes PIL.UnidentifiedImageError.
    raise ValueError(f'cannot decode image {path}: {err}') from err
  if expected_size is not None:
    width, height = expected_size
    if rgb.shape[:2] != (height, width):
      raise ValueError(
          f'image {path} decodes to {rgb.shape[1]}x{rgb.shape[0]} (WxH) but '
          f'its annotation says {width}x{height}')
  return rgb


def write_jpeg(path: str, image_rgb: np.ndarray, quality: int = 95) -> None:
  """Encodes uint8 [H, W, 3] RGB as a JPEG file, atomically.

  Args:
    path: destination; written through a temp name + rename so a reader
      never sees half a file.
    image_rgb: uint8 [H, W, 3] RGB.
    quality: JPEG quality (1..100).

  Raises:
    ValueError: `image_rgb` is not uint8 [H, W, 3].
  """
  image_rgb = np.asarray(image_rgb)
  if image_rgb.dtype != np.uint8 or image_rgb.shape[2:] != (3,):
    raise ValueError(f'{path}: expected uint8 [H, W, 3] RGB, got '
                     f'{image_rgb.dtype} {image_rgb.shape}')
  buffer = io.BytesIO()
  Image.fromarray(image_rgb).save(buffer, format='JPEG', quality=quality)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(buffer.getvalue())
  os.replace(tmp, path)
