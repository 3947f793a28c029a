"""Caffe's image preprocessing and a deterministic, threaded batcher.

The transform is Caffe's ImageNet pipeline (SPEC 2): resize to 256x256
ignoring the aspect ratio (bilinear), convert to float BGR minus the 256x256
mean image, then crop 227 (random + mirror for training, centre offset 14 for
test). The mean is subtracted *before* cropping, so a crop always carries the
matching crop of the mean image, as Caffe's DataTransformer does; mirroring
comes after, so the mirrored crop is mirror(image - mean).

`ClassificationBatcher.batch_at(step)` is a pure function of (seed, step): a
run restarted from a checkpoint at step s sees exactly the batches it would
have seen, and each process of a multi-process run builds only its slice of
the same global batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np

# Caffe's ilsvrc_2012_mean per-channel values, B, G, R.
IMAGENET_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# The size of Caffe's mean image (ilsvrc_2012_mean.npy is (3, 256, 256)).
MEAN_IMAGE_SIZE = 256


def default_num_workers() -> int:
  """Decode/transform threads: the cores, capped (JPEG decoding saturates)."""
  return min(16, os.cpu_count() or 1)


def mean_image(path: Optional[str] = None, size: int = 256) -> np.ndarray:
  """The ImageNet mean image, float32 [size, size, 3] HWC BGR.

  Args:
    path: Caffe's `ilsvrc_2012_mean.npy`, (3, 256, 256) CHW BGR; None for the
      per-channel fallback `IMAGENET_MEAN_BGR`.
    size: output side; the 256 mean image is resized (bilinear) to match a
      smaller demo resolution, so crops of it stay aligned with image crops.

  Returns:
    float32 [size, size, 3] BGR.

  Raises:
    FileNotFoundError: `path` is missing.
    ValueError: the array in `path` is not (3, H, W).
  """
  if path is None:
    return np.broadcast_to(np.asarray(IMAGENET_MEAN_BGR, np.float32),
                           (size, size, 3)).copy()
  if not os.path.isfile(path):
    raise FileNotFoundError(f'mean image file not found: {path}')
  chw = np.load(path)
  if chw.ndim != 3 or chw.shape[0] != 3:
    raise ValueError(f'mean image {path}: expected (3, H, W) BGR, got shape '
                     f'{chw.shape}')
  hwc = np.ascontiguousarray(chw.transpose(1, 2, 0), np.float32)  # [H, W, 3]
  if hwc.shape[:2] != (size, size):
    hwc = cv2.resize(hwc, (size, size), interpolation=cv2.INTER_LINEAR)
  return hwc


def resize_ignore_aspect(image_rgb: np.ndarray, size: int = 256) -> np.ndarray:
  """Bilinear resize to size x size ignoring the aspect (Caffe's ImageNet prep).

  Args:
    image_rgb: uint8 [H, W, 3].
    size: output side.

  Returns:
    uint8 [size, size, 3]; the input itself when already that size.
  """
  if image_rgb.shape[:2] == (size, size):
    return image_rgb
  return cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_LINEAR)


def to_caffe_input(image_rgb: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """Network input: float32 BGR minus the mean.

  Args:
    image_rgb: uint8 [..., H, W, 3] RGB.
    mean: float32 BGR, [H, W, 3] (a mean image) or [3] (per channel).

  Returns:
    float32 [..., H, W, 3] BGR, mean subtracted.
  """
  return image_rgb[..., ::-1].astype(np.float32) - np.asarray(mean, np.float32)


def crop_mean(mean: Optional[np.ndarray], crop: int) -> np.ndarray:
  """The mean to subtract from a crop x crop network input, [crop, crop, 3].

  Args:
    mean: None (per-channel fallback), float [3] (per channel) or a mean image
      [S, S, 3] with S >= crop, of which the centre crop is taken (R-CNN
      subtracts the centre 227 crop of the 256 mean from warped regions).

  Returns:
    float32 [crop, crop, 3] BGR, a read-only view (cheap enough per region).

  Raises:
    ValueError: a mean image smaller than the crop, or a bad shape.
  """
  if mean is None:
    mean = IMAGENET_MEAN_BGR
  mean = np.asarray(mean, np.float32)
  if mean.shape == (3,):
    return np.broadcast_to(mean, (crop, crop, 3))
  if mean.ndim != 3 or mean.shape[2] != 3 or min(mean.shape[:2]) < crop:
    raise ValueError(f'mean must be [3] or [S, S, 3] with S >= {crop}, got '
                     f'shape {mean.shape}')
  return center_crop(mean, crop)


def center_crop(image: np.ndarray, crop: int = 227) -> np.ndarray:
  """The centre crop x crop window, offset (H - crop) // 2 (14 for 256 -> 227).

  Args:
    image: [H, W, C] with H, W >= crop.

  Returns:
    [crop, crop, C], a view.
  """
  top = (image.shape[0] - crop) // 2
  left = (image.shape[1] - crop) // 2
  return image[top:top + crop, left:left + crop]


def train_crop(image: np.ndarray, rng: np.random.Generator,
               crop: int = 227) -> np.ndarray:
  """Caffe's training augmentation: a uniform random crop, mirrored w.p. 0.5.

  Apply it to the mean-subtracted image so the crop's mean is the matching
  crop of the mean image and the mirror comes last, as in Caffe.

  Args:
    image: [H, W, C] with H, W >= crop.
    rng: the example's generator (offsets, then the mirror coin).
    crop: output side.

  Returns:
    [crop, crop, C], a view.
  """
  top = int(rng.integers(image.shape[0] - crop + 1))
  left = int(rng.integers(image.shape[1] - crop + 1))
  window = image[top:top + crop, left:left + crop]
  return window[:, ::-1] if rng.random() < 0.5 else window


def prefetch(batch_fn: Callable[[int], dict], steps: Iterator[int],
             depth: int = 2) -> Iterator[dict]:
  """Yields batch_fn(step) for each step, computing `depth` batches ahead.

  One background thread assembles batches (each batch_fn fans out to its own
  worker pool), so the consumer's device step overlaps the decoding.

  Args:
    batch_fn: step -> batch.
    steps: the steps, in order (may be infinite).
    depth: batches in flight ahead of the consumer.

  Yields:
    The batches in step order.
  """
  with concurrent.futures.ThreadPoolExecutor(1) as executor:
    pending = collections.deque()
    try:
      for step in steps:
        pending.append(executor.submit(batch_fn, step))
        if len(pending) > depth:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:  # The consumer stopped early: drop the batches nobody will read.
      for future in pending:
        future.cancel()


def _image_mean(mean: Optional[np.ndarray], resize: int) -> np.ndarray:
  """The mean subtracted from a resized image: [resize, resize, 3] or [3]."""
  if mean is None:
    return mean_image(None, resize)
  mean = np.asarray(mean, np.float32)
  if mean.shape not in ((3,), (resize, resize, 3)):
    raise ValueError(f'mean must be [3] or [{resize}, {resize}, 3] (the '
                     f'resized image), got shape {mean.shape}')
  return mean


def _check_example(index: int, image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'example {index}: expected image uint8 [H, W, 3] RGB, '
                     f'got {image.dtype} {image.shape}')
  return image


def process_slice(global_size: int, process_index: int,
                   process_count: int) -> slice:
  """This process's contiguous slice of a global batch."""
  if global_size % process_count:
    raise ValueError(f'batch size {global_size} is not divisible by '
                     f'process_count {process_count}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in '
                     f'[0, {process_count})')
  local = global_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


class ClassificationBatcher:
  """Deterministic augmented batches from a random-access classification source.

  Order: epochs of a fixed permutation derived from (seed, epoch); the last
  incomplete batch of an epoch is dropped (training wants equal batches).
  Augmentation of the example at global batch position j of step s comes from
  `default_rng([seed, 1, s, j])`, so it does not depend on how the batch is
  split across processes or threads.
  """

  def __init__(self, source: Sequence[dict], batch_size: int, *, seed: int,
               train: bool, resize: int = 256, crop: int = 227,
               mean: Optional[np.ndarray] = None,
               num_workers: Optional[int] = None, process_index: int = 0,
               process_count: int = 1):
    """Fixes the sampling and starts the worker threads.

    Args:
      source: `len` and `__getitem__(i) -> {'image': uint8 [H, W, 3] RGB,
        'label': int}` (e.g. `tfds.data_source(...)`, the demo dataset).
      batch_size: the global batch size (all processes together).
      seed: the data seed.
      train: random crop + mirror if True, else the centre crop.
      resize: side of the aspect-ignoring resize (256; demo configs smaller).
      crop: network input side (227).
      mean: float32 BGR mean image [resize, resize, 3] or [3]; None for the
        per-channel fallback.
      num_workers: decode/transform threads.
      process_index: this process (jax.process_index()).
      process_count: processes sharing each global batch.

    Raises:
      ValueError: a source smaller than one batch, a bad process split, or a
        mean of the wrong shape.
    """
    if len(source) < batch_size:
      raise ValueError(f'source has {len(source)} examples, fewer than one '
                       f'batch of {batch_size}')
    self.source = source
    self.batch_size = batch_size
    self.seed = seed
    self.train = train
    self.resize = resize
    self.crop = crop
    self.mean = _image_mean(mean, resize)
    self.local_slice = process_slice(batch_size, process_index, process_count)
    self.steps_per_epoch = len(source) // batch_size
    self._pool = concurrent.futures.ThreadPoolExecutor(
        num_workers or default_num_workers())
    self._epoch_order = (-1, None)

  def close(self) -> None:
    """Stops the worker threads."""
    self._pool.shutdown(wait=False, cancel_futures=True)

  def _order(self, epoch: int) -> np.ndarray:
    cached_epoch, order = self._epoch_order
    if cached_epoch != epoch:
      order = np.random.default_rng([self.seed, 0, epoch]).permutation(
          len(self.source))
      self._epoch_order = (epoch, order)  # One tuple: safe across threads.
    return order

  def indices_at(self, step: int) -> np.ndarray:
    """Source indices of this process's part of batch `step`: [B_local]."""
    epoch, position = divmod(step, self.steps_per_epoch)
    start = position * self.batch_size
    batch = self._order(epoch)[start:start + self.batch_size]
    return batch[self.local_slice]

  def _example(self, step: int, position: int,
               index: int) -> tuple[np.ndarray, int]:
    """(network input [crop, crop, 3], label) of one example of batch `step`."""
    example = self.source[index]  # Decodes: fetch once.
    image = _check_example(index, example['image'])
    image = to_caffe_input(resize_ignore_aspect(image, self.resize), self.mean)
    if self.train:
      rng = np.random.default_rng([self.seed, 1, step, position])
      return train_crop(image, rng, self.crop), example['label']
    return center_crop(image, self.crop), example['label']

  def batch_at(self, step: int) -> dict:
    """This process's slice of global batch `step`.

    Returns:
      {'image': float32 [B_local, crop, crop, 3] BGR mean-subtracted,
       'label': int32 [B_local]}.
    """
    indices = self.indices_at(step)
    positions = range(self.local_slice.start, self.local_slice.stop)
    images = np.empty((len(indices), self.crop, self.crop, 3), np.float32)
    labels = np.empty((len(indices),), np.int32)

    def fill(row: int) -> None:
      images[row], labels[row] = self._example(step, positions[row],
                                               int(indices[row]))

    list(self._pool.map(fill, range(len(indices))))
    return {'image': images, 'label': labels}

  def iterate(self, start_step: int = 0, depth: int = 2) -> Iterator[dict]:
    """batch_at(start_step), batch_at(start_step + 1), ... prefetched."""
    return prefetch(self.batch_at, itertools.count(start_step), depth)


def eval_batches(source: Sequence[dict], batch_size: int, *,
                 resize: int = 256, crop: int = 227,
                 mean: Optional[np.ndarray] = None,
                 num_workers: Optional[int] = None, process_index: int = 0,
                 process_count: int = 1, depth: int = 2) -> Iterator[dict]:
  """Centre-crop batches over the whole source, in order, none dropped.

  The last batch is padded to full size (zero images, label 0) and `mask`
  marks the real examples, so every process runs the same number of equally
  shaped steps and metrics count each example exactly once.

  Args:
    source: as for ClassificationBatcher.
    batch_size: global batch size.
    resize: side of the aspect-ignoring resize.
    crop: network input side.
    mean: float32 BGR mean image [resize, resize, 3] or [3]; None: fallback.
    num_workers: decode/transform threads.
    process_index: this process.
    process_count: processes sharing each global batch.
    depth: batches prefetched.

  Yields:
    {'image': float32 [B_local, crop, crop, 3], 'label': int32 [B_local],
     'mask': bool [B_local], 'index': int64 [B_local] source index (-1 for
     padding)} for this process's slice of each global batch.
  """
  mean = _image_mean(mean, resize)
  local_slice = process_slice(batch_size, process_index, process_count)
  num_batches = -(-len(source) // batch_size)
  local_size = local_slice.stop - local_slice.start

  def batch_at(step: int) -> dict:
    indices = np.arange(step * batch_size, (step + 1) * batch_size)[local_slice]
    mask = indices < len(source)
    images = np.zeros((local_size, crop, crop, 3), np.float32)
    labels = np.zeros((local_size,), np.int32)

    def fill(row: int) -> None:
      example = source[int(indices[row])]
      image = _check_example(int(indices[row]), example['image'])
      images[row] = center_crop(
          to_caffe_input(resize_ignore_aspect(image, resize), mean), crop)
      labels[row] = example['label']

    list(pool.map(fill, np.flatnonzero(mask)))
    return {'image': images, 'label': labels, 'mask': mask,
            'index': np.where(mask, indices, -1)}

  with concurrent.futures.ThreadPoolExecutor(
      num_workers or default_num_workers()) as pool:
    yield from prefetch(batch_at, iter(range(num_batches)), depth)
