"""R-CNN region geometry: IoU, the context warp (SPEC 3 examples), windows."""

import math

import cv2
import numpy as np
import pytest

from cnnjax.data import preprocess
from cnnjax.data import regions
from cnnjax.data import voc

HEIGHT, WIDTH = 375, 500  # The SPEC worked examples' image.


def _image(seed=0, height=HEIGHT, width=WIDTH):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                              np.uint8)


def _mean_image(seed):
  rng = np.random.default_rng(seed)
  return rng.uniform(90, 130, (256, 256, 3)).astype(np.float32)


def _loop_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, (ax1, ay1, ax2, ay2) in enumerate(a):
    for j, (bx1, by1, bx2, by2) in enumerate(b):
      iw = min(ax2, bx2) - max(ax1, bx1) + 1
      ih = min(ay2, by2) - max(ay1, by1) + 1
      inter = max(iw, 0) * max(ih, 0)
      union = ((ax2 - ax1 + 1) * (ay2 - ay1 + 1) +
               (bx2 - bx1 + 1) * (by2 - by1 + 1) - inter)
      out[i, j] = inter / union
  return out


def test_iou_plus_one_convention():
  # Hand-worked: 10x10 boxes overlapping in a 5x10 strip: 50 / 150.
  np.testing.assert_allclose(
      regions.iou([[1, 1, 10, 10]], [[6, 1, 15, 10], [11, 1, 20, 10],
                                     [1, 1, 10, 10]]), [[1 / 3, 0, 1]])
  rng = np.random.default_rng(0)
  xy = rng.integers(1, 60, (30, 2))
  a = np.concatenate([xy, xy + rng.integers(0, 30, (30, 2))], 1)
  xy = rng.integers(1, 60, (20, 2))
  b = np.concatenate([xy, xy + rng.integers(0, 30, (20, 2))], 1)
  np.testing.assert_allclose(regions.iou(a, b), _loop_iou(a, b))


def _matlab_round(v):
  return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _reference_warp(image_rgb, box, size, context, mean_crop):
  """rcnn_im_crop.m ('warp') transcribed with a per-pixel bilinear resize."""
  height, width = image_rgb.shape[:2]
  x1, y1, x2, y2 = (int(v) for v in box)
  if context == 0:  # R-CNN's padding == 0 branch: the box itself, warped.
    ex1, ey1, ex2, ey2 = x1, y1, x2, y2
  else:
    scale = size / (size - 2 * context)
    half_w, half_h = (x2 - x1 + 1) / 2, (y2 - y1 + 1) / 2
    cx, cy = x1 + half_w, y1 + half_h
    ex1 = _matlab_round(cx - half_w * scale)
    ey1 = _matlab_round(cy - half_h * scale)
    ex2 = _matlab_round(cx + half_w * scale)
    ey2 = _matlab_round(cy + half_h * scale)
  unclipped_w, unclipped_h = ex2 - ex1 + 1, ey2 - ey1 + 1
  pad_x1, pad_y1 = max(0, 1 - ex1), max(0, 1 - ey1)
  ex1, ey1 = max(1, ex1), max(1, ey1)
  ex2, ey2 = min(width, ex2), min(height, ey2)
  clipped_w, clipped_h = ex2 - ex1 + 1, ey2 - ey1 + 1
  scale_x, scale_y = size / unclipped_w, size / unclipped_h
  crop_w = _matlab_round(clipped_w * scale_x)
  crop_h = _matlab_round(clipped_h * scale_y)
  pad_x = _matlab_round(pad_x1 * scale_x)
  pad_y = _matlab_round(pad_y1 * scale_y)
  crop_h, crop_w = min(crop_h, size - pad_y), min(crop_w, size - pad_x)
  window = image_rgb[ey1 - 1:ey2, ex1 - 1:ex2].astype(np.float64)
  out = np.zeros((size, size, 3))

  def taps(i, source_len, out_len):
    s = min(max((i + 0.5) * source_len / out_len - 0.5, 0.0), source_len - 1)
    i0 = math.floor(s)
    return i0, min(i0 + 1, source_len - 1), s - i0

  for oy in range(crop_h):
    r0, r1, fy = taps(oy, clipped_h, crop_h)
    for ox in range(crop_w):
      c0, c1, fx = taps(ox, clipped_w, crop_w)
      value = ((window[r0, c0] * (1 - fx) + window[r0, c1] * fx) * (1 - fy) +
               (window[r1, c0] * (1 - fx) + window[r1, c1] * fx) * fy)
      y, x = pad_y + oy, pad_x + ox
      out[y, x] = value[::-1] - mean_crop[y, x]
  return out


def test_spec_example_no_padding():
  image = _image()
  geometry = regions.warp_geometry([[100, 50, 299, 249]], (HEIGHT, WIDTH))
  np.testing.assert_array_equal(geometry.expanded, [[84, 34, 316, 266]])
  np.testing.assert_array_equal(geometry.clipped, [[84, 34, 316, 266]])
  np.testing.assert_array_equal(geometry.crop_size, [[227, 227]])
  np.testing.assert_array_equal(geometry.pad, [[0, 0]])
  warped = regions.warp_region(image, np.array([100, 50, 299, 249]))
  part = image[33:266, 83:316, ::-1].astype(np.float32)  # 1-based 34..266
  expected = cv2.resize(part, (227, 227), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(warped, expected - np.float32(
      preprocess.IMAGENET_MEAN_BGR), atol=1e-4)


def test_spec_example_whole_image_padding_and_mean():
  image = _image(1)
  mean = _mean_image(2)
  geometry = regions.warp_geometry([[1, 1, 500, 375]], (HEIGHT, WIDTH))
  np.testing.assert_array_equal(geometry.crop_size, [[195, 194]])
  np.testing.assert_array_equal(geometry.pad, [[16, 16]])
  warped = regions.warp_region(image, np.array([1, 1, 500, 375]), mean=mean)
  resized = cv2.resize(image[:, :, ::-1].astype(np.float32), (195, 194),
                       interpolation=cv2.INTER_LINEAR)
  mean_crop = mean[14:241, 14:241]  # Centre 227 crop of the 256 mean.
  np.testing.assert_allclose(warped[16:210, 16:211],
                             resized - mean_crop[16:210, 16:211], atol=1e-4)
  padding = np.ones((227, 227), bool)
  padding[16:210, 16:211] = False
  assert (warped[padding] == 0).all()  # Padding equals the mean.


def test_spec_example_clipped_bottom():
  image = _image(3)
  geometry = regions.warp_geometry([[10, 300, 60, 370]], (HEIGHT, WIDTH))
  np.testing.assert_array_equal(geometry.clipped, [[6, 294, 65, 375]])
  np.testing.assert_array_equal(geometry.crop_size, [[227, 222]])
  np.testing.assert_array_equal(geometry.pad, [[0, 0]])
  warped = regions.warp_region(image, np.array([10, 300, 60, 370]))
  assert (warped[222:] == 0).all()
  assert (np.abs(warped[:222]).sum(axis=(1, 2)) > 0).all()
  mean_crop = preprocess.crop_mean(None, 227)
  np.testing.assert_allclose(
      warped, _reference_warp(image, [10, 300, 60, 370], 227, 16, mean_crop),
      atol=1e-3)


def _random_boxes(rng, count, height, width):
  x1 = rng.integers(1, width, count)
  y1 = rng.integers(1, height, count)
  x2 = np.minimum(width, x1 + rng.integers(0, width // 2, count))
  y2 = np.minimum(height, y1 + rng.integers(0, height // 2, count))
  return np.stack([x1, y1, x2, y2], 1)


def test_warp_region_matches_per_pixel_reference():
  rng = np.random.default_rng(4)
  image = _image(5, 61, 83)
  mean = rng.uniform(90, 130, (48, 48, 3)).astype(np.float32)
  boxes = np.concatenate([_random_boxes(rng, 10, 61, 83),
                          [[1, 1, 83, 61], [83, 61, 83, 61], [1, 30, 2, 31]]])
  for size, context in ((40, 4), (31, 0)):
    mean_crop = preprocess.crop_mean(mean, size)
    for box in boxes:
      np.testing.assert_allclose(
          regions.warp_region(image, box, size, context, mean),
          _reference_warp(image, box, size, context, mean_crop), atol=1e-3,
          err_msg=f'box {box} size {size} context {context}')


def test_warp_mirror_flips_image_pixels_not_the_mean():
  image = _image(6)
  mean = _mean_image(7)
  box = np.array([1, 1, 500, 375])
  plain = regions.warp_region(image, box, mean=mean)
  mirrored = regions.warp_region(image, box, mean=mean, mirror=True)
  mean_crop = mean[14:241, 14:241]
  raw = np.where(plain != 0, plain + mean_crop, 0)
  np.testing.assert_allclose(mirrored, np.where(raw[:, ::-1] != 0,
                                                raw[:, ::-1] - mean_crop, 0),
                             atol=1e-4)
  # The image sits at columns 227-16-195 = 16 .. 211 once mirrored too.
  assert (mirrored[:, 211:] == 0).all() and (mirrored[:, 16:211] != 0).any()


def test_warp_regions_matches_warp_region():
  rng = np.random.default_rng(8)
  image = _image(9, 97, 131)
  boxes = np.concatenate([_random_boxes(rng, 11, 97, 131), [[1, 1, 131, 97]]])
  mirror = rng.random(len(boxes)) < 0.5
  mean = rng.uniform(90, 130, (64, 64, 3)).astype(np.float32)
  batched = np.asarray(regions.warp_regions(image, boxes, 57, 7, mean, mirror,
                                            max_batch=8))
  assert batched.shape == (12, 57, 57, 3) and batched.dtype == np.float32
  for box, flip, warped in zip(boxes, mirror, batched):
    np.testing.assert_allclose(
        warped, regions.warp_region(image, box, 57, 7, mean, bool(flip)),
        atol=1e-3)
  assert regions.warp_regions(image, np.zeros((0, 4), int), 57, 7).shape == (
      0, 57, 57, 3)
  with pytest.raises(ValueError, match='box 0'):
    regions.warp_regions(image, [[0, 1, 5, 5]], 57, 7)


def test_build_windows_labels_and_overlaps(voc_mini_devkit):
  images = voc.load_voc_split(str(voc_mini_devkit), split='trainval')
  rng = np.random.default_rng(10)
  proposals = [_random_boxes(rng, 40, im.height, im.width) for im in images]
  # A proposal near a GT box: must be foreground of that class.
  proposals[0][0] = images[0].boxes[0] + [2, 2, 0, 0]
  windows = regions.build_windows(images, proposals)
  total = sum(len(im.boxes) + 40 for im in images)
  assert windows.boxes.shape == (total, 4) and windows.labels.dtype == np.int32
  row = 0
  for index, (image, props) in enumerate(zip(images, proposals)):
    for box in np.concatenate([image.boxes, props]):
      overlaps = _loop_iou([box], image.boxes)[0]
      best = int(np.argmax(overlaps))
      label = image.labels[best] + 1 if overlaps[best] >= 0.5 else 0
      assert windows.image_index[row] == index
      np.testing.assert_array_equal(windows.boxes[row], box)
      assert windows.labels[row] == label
      assert windows.overlaps[row] == pytest.approx(overlaps[best], abs=1e-6)
      row += 1
  # Every GT box (difficult included) is a window of its own class.
  first_proposal = len(images[0].boxes)
  assert windows.labels[first_proposal] == voc.VOC_CLASSES.index('dog') + 1
  chairs = windows.image_index == 4
  np.testing.assert_array_equal(windows.labels[chairs][:5], [9] * 5)


def test_window_sampler(voc_mini_devkit):
  images = voc.load_voc_split(str(voc_mini_devkit), split='trainval')
  proposals = [_random_boxes(np.random.default_rng(i), 30, im.height, im.width)
               for i, im in enumerate(images)]
  windows = regions.build_windows(images, proposals)
  make = lambda **kw: regions.WindowSampler(
      windows, images, batch_size=8, fg_fraction=0.25, seed=3, size=35,
      context=3, num_workers=2, cache_size=2, **kw)
  sampler = make()
  batch = sampler.batch_at(11)
  assert batch['image'].shape == (8, 35, 35, 3)
  assert (batch['label'][:2] > 0).all() and (batch['label'][2:] == 0).all()
  chosen, mirror = sampler.sample(11)
  np.testing.assert_array_equal(batch['label'], windows.labels[chosen])
  for row, (window, flip) in enumerate(zip(chosen, mirror)):
    image = images[windows.image_index[window]].decode()
    np.testing.assert_array_equal(
        batch['image'][row],
        regions.warp_region(image, windows.boxes[window], 35, 3, None, flip))
  halves = [make(process_index=p, process_count=2).batch_at(11) for p in (0, 1)]
  np.testing.assert_array_equal(
      np.concatenate([h['image'] for h in halves]), batch['image'])
  np.testing.assert_array_equal(make().batch_at(11)['image'], batch['image'])
  iterator = sampler.iterate(10)
  next(iterator)
  np.testing.assert_array_equal(next(iterator)['label'], batch['label'])
  iterator.close()
  # Uniform with replacement over the pooled lists; fair mirror coin.
  draws = [sampler.sample(step) for step in range(300)]
  fg = np.concatenate([c[:2] for c, _ in draws])
  assert set(fg.tolist()) == set(np.flatnonzero(windows.labels > 0).tolist())
  assert 0.45 < np.mean([m for _, m in draws]) < 0.55
  sampler.close()


def test_decoded_image_cache_is_lru(voc_mini_devkit):
  images = voc.load_voc_split(str(voc_mini_devkit), split='trainval')
  cache = regions.DecodedImageCache(images, capacity=2)
  first = cache.get(0)
  np.testing.assert_array_equal(first, images[0].decode())
  assert cache.get(0) is first
  cache.get(1)
  cache.get(0)  # 0 is now the most recent: 1 is evicted by 2, not 0.
  cache.get(2)
  assert cache.get(0) is first
  second = cache.get(1)
  assert cache.get(1) is second and cache.get(2) is not None
  assert cache.get(0) is not first  # Evicted by 1 and 2.
