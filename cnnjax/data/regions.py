"""Region geometry of R-CNN (SPEC 3): IoU, the context warp, finetuning windows.

Boxes are (x1, y1, x2, y2), 1-based inclusive pixel indices; IoU uses the +1
convention. The warp follows R-CNN's `rcnn_im_crop.m` ('warp' mode, padding
16): the box is grown about its centre by size / (size - 2 * context), the
grown edges rounded half away from zero (MATLAB `round`), clipped to the
image; the clipped part is resized bilinearly (no anti-aliasing, half-pixel
centres, edge pixels repeated: OpenCV INTER_LINEAR and MATLAB `imresize(...,
'bilinear', 'antialiasing', false)` agree) and placed where the grown box
would put it in a size x size canvas; the mean (centre crop of the mean
image) is subtracted where image pixels are, so the padding is 0 after
subtraction.

Two implementations share `warp_geometry`: `warp_region` (one box, OpenCV,
used by the finetuning sampler's worker threads) and `warp_regions` (many
boxes of one image, one jitted gather; for feature extraction). Both use the
same interpolation formula; they agree within 1e-3 on the 0..255 scale (3e-5
measured: OpenCV rounds its coefficients to float32, the jitted path takes
float64 taps rounded once to float32).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
from typing import Iterator, NamedTuple, Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import preprocess
from cnnjax.data.voc import VocImage

# Image sides are padded up to a multiple of this before the jitted warp, so
# the few VOC image shapes share compiled code.
_IMAGE_PAD_MULTIPLE = 128


def iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
  """Pairwise IoU with the +1 area convention.

  Args:
    boxes_a: [N, 4] (x1, y1, x2, y2), inclusive.
    boxes_b: [M, 4].

  Returns:
    float64 [N, M].
  """
  a = np.asarray(boxes_a, np.float64).reshape(-1, 4)  # [N, 4]
  b = np.asarray(boxes_b, np.float64).reshape(-1, 4)  # [M, 4]
  inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) -
                    np.maximum(a[:, None, 0], b[None, :, 0]) + 1, 0, None)
  inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) -
                    np.maximum(a[:, None, 1], b[None, :, 1]) + 1, 0, None)
  inter = inter_w * inter_h  # [N, M]
  area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)  # [N]
  area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # [M]
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def round_half_away(x: np.ndarray) -> np.ndarray:
  """MATLAB's round: halves go away from zero (numpy rounds them to even)."""
  return np.sign(x) * np.floor(np.abs(x) + 0.5)


class WarpGeometry(NamedTuple):
  """Where each box's pixels land in the warped canvas (int64 arrays).

  Attributes:
    expanded: [N, 4] the context-grown box, before clipping (1-based).
    clipped: [N, 4] the grown box clipped to the image (1-based inclusive):
      the pixels that are resized.
    crop_size: [N, 2] (w, h) the clipped part is resized to.
    pad: [N, 2] (x, y) 0-based canvas offset of the resized part.
  """
  expanded: np.ndarray
  clipped: np.ndarray
  crop_size: np.ndarray
  pad: np.ndarray


def warp_geometry(boxes: np.ndarray, image_hw: tuple[int, int],
                  size: int = 227, context: int = 16) -> WarpGeometry:
  """R-CNN's warp geometry for each box (rcnn_im_crop.m, vectorised).

  With context 0 the box is warped as it is (R-CNN skips the growth then;
  growing by a factor of 1 would widen it by a pixel).

  Args:
    boxes: int [N, 4] inside the image, 1-based inclusive.
    image_hw: (height, width) of the image.
    size: canvas side (227).
    context: padding in canvas pixels on each side (16).

  Returns:
    The WarpGeometry.

  Raises:
    ValueError: a box outside the image or inverted.
  """
  height, width = image_hw
  boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
  bad = ((boxes[:, 0] < 1) | (boxes[:, 1] < 1) | (boxes[:, 2] > width) |
         (boxes[:, 3] > height) | (boxes[:, 2] < boxes[:, 0]) |
         (boxes[:, 3] < boxes[:, 1]))
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f'box {i} {boxes[i].tolist()} is outside the '
                     f'{width}x{height} image or inverted (1-based inclusive)')
  if context == 0:
    expanded = boxes
  else:
    scale = size / (size - 2 * context)
    half = (boxes[:, 2:] - boxes[:, :2] + 1) / 2  # [N, 2] (w/2, h/2)
    center = boxes[:, :2] + half  # [N, 2]
    expanded = round_half_away(np.concatenate(
        [center - half * scale, center + half * scale], axis=1))
    expanded = expanded.astype(np.int64)  # [N, 4]
  unclipped = expanded[:, 2:] - expanded[:, :2] + 1  # [N, 2] (w, h)
  pad_before = np.maximum(0, 1 - expanded[:, :2])  # [N, 2]
  clipped = np.concatenate(
      [np.maximum(1, expanded[:, :2]),
       np.minimum([width, height], expanded[:, 2:])], axis=1)
  clipped_wh = clipped[:, 2:] - clipped[:, :2] + 1  # [N, 2]
  scale_xy = size / unclipped  # [N, 2]
  crop_size = round_half_away(clipped_wh * scale_xy).astype(np.int64)
  pad = round_half_away(pad_before * scale_xy).astype(np.int64)
  crop_size = np.minimum(crop_size, size - pad)  # Keep it inside the canvas.
  return WarpGeometry(expanded, clipped, crop_size, pad)


def warp_region(image_rgb: np.ndarray, box: np.ndarray, size: int = 227,
                context: int = 16, mean: Optional[np.ndarray] = None,
                mirror: bool = False) -> np.ndarray:
  """One box warped with context: the network input of R-CNN.

  Args:
    image_rgb: uint8 [H, W, 3] RGB.
    box: int [4] (x1, y1, x2, y2), 1-based inclusive, inside the image.
    size: output side.
    context: canvas pixels of context on each side.
    mean: None (per-channel fallback), float [3], or a BGR mean image
      [S, S, 3] (S >= size) whose centre crop is subtracted.
    mirror: flip the canvas left-right before the mean is subtracted (Caffe's
      WindowDataLayer mirrors the image pixels, not the mean).

  Returns:
    float32 [size, size, 3] BGR, mean subtracted, 0 where padding.
  """
  geometry = warp_geometry(box, image_rgb.shape[:2], size, context)
  x1, y1, x2, y2 = geometry.clipped[0]
  crop_w, crop_h = (int(v) for v in geometry.crop_size[0])
  pad_x, pad_y = (int(v) for v in geometry.pad[0])
  part = cv2.cvtColor(image_rgb[y1 - 1:y2, x1 - 1:x2],
                      cv2.COLOR_RGB2BGR).astype(np.float32)  # [h, w, 3] BGR
  resized = cv2.resize(part, (crop_w, crop_h), interpolation=cv2.INTER_LINEAR)
  if mirror:
    resized = resized[:, ::-1]
    pad_x = size - pad_x - crop_w
  rows, cols = slice(pad_y, pad_y + crop_h), slice(pad_x, pad_x + crop_w)
  canvas = np.zeros((size, size, 3), np.float32)
  np.subtract(resized, preprocess.crop_mean(mean, size)[rows, cols],
              out=canvas[rows, cols])
  return canvas


class RegionTaps(NamedTuple):
  """Bilinear sampling of each box's warp, per canvas row and column.

  Attributes (each [N, size]; rows index the image's y, cols its x):
    rows0, rows1: int32 0-based image rows of the two taps.
    row_frac: float32 weight of rows1 (0 outside the placed part).
    row_valid: bool, the canvas row shows image pixels.
    cols0, cols1, col_frac, col_valid: the same along x.
  """
  rows0: np.ndarray
  rows1: np.ndarray
  row_frac: np.ndarray
  row_valid: np.ndarray
  cols0: np.ndarray
  cols1: np.ndarray
  col_frac: np.ndarray
  col_valid: np.ndarray


def _axis_taps(first: np.ndarray, length: np.ndarray, out_length: np.ndarray,
               pad: np.ndarray, size: int):
  """1-D bilinear taps (OpenCV INTER_LINEAR) resizing `length` to `out_length`.

  Args:
    first: [N] 1-based image index of the clipped part's first pixel.
    length: [N] clipped part length (source pixels).
    out_length: [N] resized length.
    pad: [N] canvas offset of the resized part.
    size: canvas side.

  Returns:
    (index0 int32 [N, size], index1 int32, frac float32, valid bool).
  """
  out = np.arange(size)[None, :] - pad[:, None]  # [N, S] index in the part
  valid = (out >= 0) & (out < out_length[:, None])
  last = (length - 1)[:, None].astype(np.float64)
  source = np.clip((out + 0.5) * (length / out_length)[:, None] - 0.5, 0, last)
  index0 = np.floor(source)
  frac = np.where(valid, source - index0, 0.0)
  index1 = np.minimum(index0 + 1, last)
  base = (first - 1)[:, None]
  return ((base + index0).astype(np.int32), (base + index1).astype(np.int32),
          frac.astype(np.float32), valid)


def region_taps(boxes: np.ndarray, image_hw: tuple[int, int],
                size: int = 227, context: int = 16,
                mirror: Optional[np.ndarray] = None) -> RegionTaps:
  """The sampling taps of `warp_regions`, computed on the host (cheap).

  Exposed so that a jitted feature extractor can fuse the warp into its
  forward pass: `apply_region_taps(image, taps, mean)` inside the jit.

  Args:
    boxes: int [N, 4] 1-based inclusive, inside the image.
    image_hw: (height, width).
    size: canvas side.
    context: context pixels on each side.
    mirror: bool [N], boxes whose canvas is flipped left-right.

  Returns:
    The RegionTaps.
  """
  geometry = warp_geometry(boxes, image_hw, size, context)
  clipped_wh = geometry.clipped[:, 2:] - geometry.clipped[:, :2] + 1
  cols = _axis_taps(geometry.clipped[:, 0], clipped_wh[:, 0],
                    geometry.crop_size[:, 0], geometry.pad[:, 0], size)
  rows = _axis_taps(geometry.clipped[:, 1], clipped_wh[:, 1],
                    geometry.crop_size[:, 1], geometry.pad[:, 1], size)
  if mirror is not None:
    flip = np.asarray(mirror, bool)[:, None]  # [N, 1]
    cols = tuple(np.where(flip, c[:, ::-1], c) for c in cols)
  return RegionTaps(*rows, *cols)


def _warp_one(image, rows0, rows1, row_frac, row_valid, cols0, cols1, col_frac,
              col_valid, mean):
  """One box: [H, W, 3] uint8 RGB + [S] taps -> [S, S, 3] BGR minus mean."""
  def gather(rows, cols):
    return image[rows[:, None], cols[None, :]].astype(jnp.float32)  # [S, S, 3]
  fx = col_frac[None, :, None]  # [1, S, 1]
  fy = row_frac[:, None, None]  # [S, 1, 1]
  # The formula and order of OpenCV's INTER_LINEAR: along x, then along y.
  top = gather(rows0, cols0) * (1 - fx) + gather(rows0, cols1) * fx
  bottom = gather(rows1, cols0) * (1 - fx) + gather(rows1, cols1) * fx
  value = top * (1 - fy) + bottom * fy  # [S, S, 3] RGB
  valid = (row_valid[:, None] & col_valid[None, :])[..., None]  # [S, S, 1]
  return jnp.where(valid, value[..., ::-1] - mean, 0.0)


def apply_region_taps(image_rgb: jax.Array, taps: RegionTaps,
                      mean: jax.Array) -> jax.Array:
  """Warps every box of `taps` (pure jnp; jit it or call inside a jit).

  Args:
    image_rgb: uint8 [H, W, 3] RGB (may be padded beyond the real image: the
      taps never reach the padding).
    taps: from `region_taps`, each [N, S].
    mean: float32 [S, S, 3] BGR (`preprocess.crop_mean`).

  Returns:
    float32 [N, S, S, 3] BGR, mean subtracted, 0 where padding.
  """
  return jax.vmap(_warp_one, in_axes=(None,) + (0,) * 8 + (None,))(
      image_rgb, *taps, mean)


_apply_region_taps_jit = jax.jit(apply_region_taps)


def _bucket(n: int, max_batch: int) -> int:
  """Smallest power of two >= n (capped at max_batch): few compiled shapes."""
  return min(max_batch, 1 << max(0, int(n - 1).bit_length()))


def warp_regions(image_rgb: np.ndarray, boxes: np.ndarray, size: int = 227,
                 context: int = 16, mean: Optional[np.ndarray] = None,
                 mirror: Optional[np.ndarray] = None,
                 max_batch: int = 256) -> jax.Array:
  """Warps many boxes of one image at once (jitted); see `warp_region`.

  Boxes go through in chunks of `max_batch`, the last padded to a power of
  two, and the image is zero-padded to a multiple of 128 per side, so a whole
  VOC run compiles a handful of shapes. The result lives on the default
  device, ready for the network: 2,000 regions at 227 are 1.2 GB of float32,
  so callers extracting features pass a few hundred boxes at a time.

  Args:
    image_rgb: uint8 [H, W, 3] RGB.
    boxes: int [N, 4] 1-based inclusive, inside the image.
    size: output side.
    context: context pixels on each side.
    mean: as for `warp_region`.
    mirror: optional bool [N], boxes to flip left-right.
    max_batch: boxes per jitted call.

  Returns:
    float32 [N, size, size, 3] BGR, equal to `warp_region` box by box within
    1e-3.
  """
  height, width = image_rgb.shape[:2]
  boxes = np.asarray(boxes).reshape(-1, 4)
  taps = region_taps(boxes, (height, width), size, context, mirror)
  padded_h = -(-height // _IMAGE_PAD_MULTIPLE) * _IMAGE_PAD_MULTIPLE
  padded_w = -(-width // _IMAGE_PAD_MULTIPLE) * _IMAGE_PAD_MULTIPLE
  image = jnp.asarray(np.pad(image_rgb, ((0, padded_h - height),
                                         (0, padded_w - width), (0, 0))))
  mean = jnp.asarray(preprocess.crop_mean(mean, size))
  outputs = []
  for start in range(0, len(boxes), max_batch):
    count = min(max_batch, len(boxes) - start)
    # Pad the chunk by repeating its first box: valid taps, rows dropped below.
    rows = np.arange(start, start + _bucket(count, max_batch))
    rows = np.where(rows < start + count, rows, start)
    chunk = RegionTaps(*(t[rows] for t in taps))
    outputs.append(_apply_region_taps_jit(image, chunk, mean)[:count])
  if not outputs:
    return jnp.zeros((0, size, size, 3), jnp.float32)
  return jnp.concatenate(outputs) if len(outputs) > 1 else outputs[0]


class Windows(NamedTuple):
  """Flat finetuning windows over a set of images.

  Attributes:
    image_index: int32 [W] index into the image list.
    boxes: int32 [W, 4] (x1, y1, x2, y2) 1-based inclusive.
    labels: int32 [W] 0 = background, 1..20 = VOC_CLASSES index + 1.
    overlaps: float32 [W] IoU with the GT box it overlaps most (0 if none).
  """
  image_index: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray
  overlaps: np.ndarray


def build_windows(images: Sequence[VocImage],
                  proposals: Sequence[np.ndarray],
                  fg_threshold: float = 0.5) -> Windows:
  """R-CNN finetuning windows: every GT box and proposal of every image.

  A window takes the class of the GT box it overlaps most (difficult GT boxes
  included, as R-CNN's window file does); it is foreground if that IoU is
  >= fg_threshold, else background (label 0).

  Args:
    images: the annotated images (VOC07 trainval for the study).
    proposals: int [P_i, 4] per image, 1-based inclusive.
    fg_threshold: IoU making a window foreground.

  Returns:
    The Windows, GT boxes first then proposals, image by image.

  Raises:
    ValueError: no images, or `proposals` does not have one entry per image.
  """
  if not images:
    raise ValueError('build_windows needs at least one image')
  if len(images) != len(proposals):
    raise ValueError(f'{len(images)} images but {len(proposals)} proposal '
                     'arrays')
  parts = []
  for index, (image, boxes) in enumerate(zip(images, proposals)):
    all_boxes = np.concatenate(
        [image.boxes, np.asarray(boxes, np.int32).reshape(-1, 4)])  # [W_i, 4]
    overlaps = np.zeros(len(all_boxes))
    labels = np.zeros(len(all_boxes), np.int32)
    if len(image.boxes):
      pairwise = iou(all_boxes, image.boxes)  # [W_i, G]
      best = pairwise.argmax(axis=1)
      overlaps = pairwise[np.arange(len(all_boxes)), best]
      labels = np.where(overlaps >= fg_threshold, image.labels[best] + 1, 0)
    parts.append((np.full(len(all_boxes), index), all_boxes, labels, overlaps))
  image_index, boxes, labels, overlaps = (np.concatenate(c)
                                          for c in zip(*parts))
  return Windows(image_index.astype(np.int32), boxes.astype(np.int32),
                 labels.astype(np.int32), overlaps.astype(np.float32))


class DecodedImageCache:
  """A small thread-safe LRU of decoded images (windows share images).

  `get(i)` returns `images[i].decode()`, decoding each image once while it
  stays among the `capacity` most recently used.
  """

  def __init__(self, images: Sequence[VocImage], capacity: int):
    self._images = images
    self._capacity = capacity
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def get(self, index: int) -> np.ndarray:
    with self._lock:
      if index in self._cache:
        self._cache.move_to_end(index)
        return self._cache[index]
    decoded = self._images[index].decode()  # Outside the lock: slow.
    with self._lock:
      self._cache[index] = decoded
      while len(self._cache) > self._capacity:
        self._cache.popitem(last=False)
    return decoded


class WindowSampler:
  """R-CNN finetuning batches: fixed foreground fraction, with replacement.

  `batch_at(step)` draws `int(batch_size * fg_fraction)` foreground then the
  rest background windows uniformly with replacement from the pooled lists,
  and a mirror coin per window, all from `default_rng([seed, step])`: a pure
  function of (seed, step), split across processes by global position.
  """

  def __init__(self, windows: Windows, images: Sequence[VocImage],
               batch_size: int = 128, fg_fraction: float = 0.25, *,
               seed: int, size: int = 227, context: int = 16,
               mean: Optional[np.ndarray] = None,
               num_workers: Optional[int] = None, process_index: int = 0,
               process_count: int = 1, cache_size: int = 64):
    """Pools the windows and starts the worker threads.

    Args:
      windows: from `build_windows`.
      images: the images `windows.image_index` points into.
      batch_size: global batch size (128).
      fg_fraction: foreground share of each batch (0.25 -> 32 of 128).
      seed: the data seed.
      size: network input side.
      context: warp context pixels.
      mean: as for `warp_region`.
      num_workers: decode/warp threads.
      process_index: this process.
      process_count: processes sharing each global batch.
      cache_size: decoded images kept.

    Raises:
      ValueError: no foreground or no background windows, or a bad split.
    """
    self.windows = windows
    self.batch_size = batch_size
    self.num_fg = int(batch_size * fg_fraction)
    self.seed = seed
    self.size = size
    self.context = context
    self.mean = preprocess.crop_mean(mean, size)
    self.local_slice = preprocess.process_slice(batch_size, process_index,
                                                process_count)
    self.fg_windows = np.flatnonzero(windows.labels > 0)
    self.bg_windows = np.flatnonzero(windows.labels == 0)
    if not len(self.fg_windows) or not len(self.bg_windows):
      raise ValueError(f'need foreground and background windows, got '
                       f'{len(self.fg_windows)} and {len(self.bg_windows)}')
    self._cache = DecodedImageCache(images, cache_size)
    self._pool = concurrent.futures.ThreadPoolExecutor(
        num_workers or preprocess.default_num_workers())

  def close(self) -> None:
    """Stops the worker threads."""
    self._pool.shutdown(wait=False, cancel_futures=True)

  def sample(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Window indices [B] and mirror flags bool [B] of global batch `step`."""
    rng = np.random.default_rng([self.seed, step])
    chosen = np.concatenate([
        self.fg_windows[rng.integers(len(self.fg_windows), size=self.num_fg)],
        self.bg_windows[rng.integers(len(self.bg_windows),
                                     size=self.batch_size - self.num_fg)]])
    mirror = rng.random(self.batch_size) < 0.5
    return chosen, mirror

  def batch_at(self, step: int) -> dict:
    """This process's slice of global batch `step`.

    Returns:
      {'image': float32 [B_local, size, size, 3] BGR mean-subtracted,
       'label': int32 [B_local] 0..20}.
    """
    chosen, mirror = self.sample(step)
    chosen, mirror = chosen[self.local_slice], mirror[self.local_slice]
    images = np.empty((len(chosen), self.size, self.size, 3), np.float32)
    image_index = self.windows.image_index[chosen]

    def fill(index: int) -> None:  # Every window of one image.
      image = self._cache.get(int(index))
      for row in np.flatnonzero(image_index == index):
        images[row] = warp_region(image, self.windows.boxes[chosen[row]],
                                  self.size, self.context, self.mean,
                                  bool(mirror[row]))

    list(self._pool.map(fill, np.unique(image_index)))
    return {'image': images, 'label': self.windows.labels[chosen]}

  def iterate(self, start_step: int = 0, depth: int = 2) -> Iterator[dict]:
    """batch_at(start_step), batch_at(start_step + 1), ... prefetched."""
    return preprocess.prefetch(self.batch_at, itertools.count(start_step),
                               depth)
