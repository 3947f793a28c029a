"""An embedded, generated demo world: the whole study on a CPU in minutes.

Real ImageNet, PASCAL VOC and SUN-397 are far too big for a laptop; this
module draws a small stand-in "visual world" with numpy and OpenCV, offline
and deterministically from a seed:

* `demo_voc`: detection scenes in the exact VOCdevkit layout (JPEGs, XML with
  difficult/truncated flags, ImageSets with per-class files), written by and
  read back through `cnnjax.data.voc`, the same reader as real VOC2007. The 20
  classes carry the VOC names; each is a part-based drawing (a bus is a box
  with a row of windows on two wheels, a person a head over a torso over two
  legs, a cow a spotted body on four legs, ...). Identity is carried by shape
  and part layout: every class draws its colours from ONE shared distribution
  and its textures from groups shared with other classes, so colour alone
  cannot name the class. Scenes hold 1-5 objects at varied scale and aspect,
  small rotations and mirror images, over a cluttered background (blobs,
  sticks and the classification-only shapes below), with occlusion by later
  objects and clutter and truncation at the image border. As in VOC, a box is
  the extent of the VISIBLE part of the object; small or heavily occluded
  objects are flagged difficult.
* `demo_classification`: the stand-in for ImageNet pretraining, in the same
  visual world: one dominant object per image over clutter, 48 classes = the
  20 object classes in two fine-grained variants each (texture group, and
  for the bicycle a structural variant) plus 8 other shapes (star, hexagon,
  ...) that appear only as clutter in the detection scenes.

Everything is cached under `default_data_dir()` in a folder whose name spells
out the generator version and every parameter, so a changed size or seed
generates into a new folder; generation builds in a temporary folder and
renames it into place, so an interrupted run never leaves half a dataset.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from cnnjax.data import images as image_io
from cnnjax.data import voc
from cnnjax.data import workers

# Bump whenever the drawings change: the cache folders are keyed by it.
GENERATOR_VERSION = 1
DEMO_VOC_IMAGE_SIZE = (160, 120)  # (width, height)
_SUPERSAMPLE = 2  # Objects are drawn at 2x and area-downsampled (antialiasing).

# Annotation rules (fractions of the image / of the object's in-image area).
_MIN_VISIBLE = 0.35  # A placement that hides more of an earlier object fails.
_DIFFICULT_VISIBLE = 0.55  # Less visible than this: difficult.
_DIFFICULT_AREA = 0.015  # Visible box smaller than this share: difficult.


def default_data_dir() -> str:
  """`$CNNJAX_DATA_DIR`, else `~/.cache/cnnjax`."""
  return os.environ.get('CNNJAX_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'cnnjax')


# ----------------------------------------------------------------------------
# Drawings. An object is a list of parts in its unit frame: x in [0, 1] left
# to right, y in [0, 1] top to bottom; the frame is later stretched to the
# instance's width and height. Radii given "in height units" stay round.


@dataclasses.dataclass(frozen=True)
class _Part:
  """A filled polygon (thickness 0) or a polyline of the given thickness.

  Attributes:
    points: [K, 2] (x, y) in the unit frame.
    slot: which of the instance's four looks paints it: 0 body (the class
      texture group), 1 secondary, 2 dark, 3 accent.
    thickness: line width as a fraction of the object height; 0 = filled.
    closed: whether a polyline closes (rings, wheels).
  """
  points: np.ndarray
  slot: int
  thickness: float = 0.0
  closed: bool = False


def _poly(*xy: float) -> np.ndarray:
  return np.asarray(xy, np.float64).reshape(-1, 2)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
  return _poly(x0, y0, x1, y0, x1, y1, x0, y1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0,
             n: int = 28) -> np.ndarray:
  t = np.arange(n) * (2 * np.pi / n)
  c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
  x, y = rx * np.cos(t), ry * np.sin(t)
  return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _circle(cx: float, cy: float, radius: float, aspect: float) -> np.ndarray:
  """A circle of `radius` object heights in a frame of width/height `aspect`."""
  return _ellipse(cx, cy, radius / aspect, radius)


def _leaf(x0: float, y0: float, angle: float, length: float, width: float,
          aspect: float) -> np.ndarray:
  """An ellipse from (x0, y0) pointing at `angle` degrees (in height units)."""
  dx, dy = np.cos(np.radians(angle)), np.sin(np.radians(angle))
  t = np.arange(20) * (2 * np.pi / 20)
  along, across = length / 2 * (1 + np.cos(t)), width * np.sin(t)
  return np.stack([x0 + (along * dx - across * dy) / aspect,
                   y0 + along * dy + across * dx], axis=1)


def _legs(xs: Sequence[float], top: float, bottom: float, slot: int,
          thickness: float, r: np.random.Generator) -> list[_Part]:
  return [_Part(_poly(x, top, x + r.uniform(-0.04, 0.04), bottom), slot,
                thickness) for x in xs]


def _aeroplane(r, a, variant):
  del a, variant
  y, wx = r.uniform(0.4, 0.55), r.uniform(0.34, 0.48)
  half = r.uniform(0.07, 0.12)
  tip = r.uniform(0.0, 0.08)
  return [
      _Part(_poly(wx, y, wx + 0.12, tip, wx + 0.22, tip, wx + 0.17, y), 1),
      _Part(_poly(wx, y, wx + 0.12, 1 - tip, wx + 0.22, 1 - tip, wx + 0.17, y),
            1),
      _Part(_poly(0.02, y, 0.03, y - 0.33, 0.1, y - 0.33, 0.17, y), 1),
      _Part(_ellipse(0.5, y, 0.49, half), 0),
      _Part(_ellipse(0.86, y - half * 0.3, 0.06, half * 0.5), 3),
  ]


def _bicycle(r, a, variant):
  radius = r.uniform(0.25, 0.31)
  cy = 1 - radius - 0.03
  back, front = radius / a + 0.02, 1 - radius / a - 0.02
  top = r.uniform(0.28, 0.38)
  parts = [_Part(_circle(x, cy, radius, a), 2, 0.06, closed=True)
           for x in (back, front)]
  if variant == 0:  # Diamond frame.
    frame = _poly(back, cy, 0.45, cy, 0.63, top, 0.36, top, back, cy)
  else:  # Step-through frame with a front basket.
    frame = _poly(back, cy, 0.36, top, 0.42, cy - 0.05, 0.63, top)
    parts.append(_Part(_rect(0.66, top - 0.12, 0.84, top + 0.1), 1))
  parts += [
      _Part(frame, 0, 0.05),
      _Part(_poly(0.63, top, front, cy), 0, 0.05),
      _Part(_poly(0.63, top, 0.66, 0.1, 0.74, 0.1), 2, 0.04),
      _Part(_poly(0.36, top, 0.34, 0.16), 0, 0.04),
      _Part(_rect(0.27, 0.12, 0.4, 0.17), 3),
  ]
  return parts


def _bird(r, a, variant):
  del variant
  tilt = r.uniform(-20, 5)
  return [
      _Part(_poly(0.18, 0.55, 0.0, 0.42, 0.0, 0.72), 1),
      *_legs((0.42, 0.5), 0.72, 1.0, 2, 0.03, r),
      _Part(_ellipse(0.45, 0.55, 0.32, 0.2, tilt), 0),
      _Part(_ellipse(0.4, 0.5, 0.2, 0.1, tilt - 10), 1),
      _Part(_circle(0.76, 0.33, r.uniform(0.12, 0.16), a), 0),
      _Part(_circle(0.8, 0.29, 0.03, a), 2),
      _Part(_poly(0.86, 0.29, 1.0, 0.36, 0.86, 0.41), 3),
  ]


def _boat(r, a, variant):
  del a, variant
  deck = r.uniform(0.55, 0.68)
  return [
      _Part(_poly(0.5, deck, 0.5, 0.02), 2, 0.03),
      _Part(_poly(0.53, 0.05, 0.53, deck - 0.03, r.uniform(0.8, 0.96),
                  deck - 0.03), 1),
      _Part(_poly(0.47, 0.15, 0.47, deck - 0.03, r.uniform(0.12, 0.26),
                  deck - 0.03), 1),
      _Part(_poly(0.0, deck, 1.0, deck, 0.84, 0.95, 0.14, 0.95), 0),
      _Part(_rect(0.08, deck, 0.92, deck + 0.05), 3),
  ]


def _bottle(r, a, variant):
  del a, variant
  neck = r.uniform(0.3, 0.4)
  shoulder = r.uniform(0.32, 0.45)
  return [
      _Part(_rect(neck, 0.03, 1 - neck, 0.25), 0),
      _Part(_poly(neck, 0.22, 1 - neck, 0.22, 0.96, shoulder, 0.04, shoulder),
            0),
      _Part(_rect(0.04, shoulder - 0.01, 0.96, 1.0), 0),
      _Part(_rect(0.04, shoulder + 0.15, 0.96, shoulder + 0.35), 1),
      _Part(_rect(neck - 0.03, 0.0, 1.03 - neck, 0.07), 3),
  ]


def _window_row(x0: float, x1: float, y0: float, y1: float, count: int,
                slot: int) -> list[_Part]:
  step = (x1 - x0) / count
  return [_Part(_rect(x0 + i * step + step * 0.12, y0,
                      x0 + (i + 1) * step - step * 0.12, y1), slot)
          for i in range(count)]


def _bus(r, a, variant):
  del variant
  radius = r.uniform(0.11, 0.14)
  return [
      _Part(_rect(0.0, 0.02, 1.0, 0.86), 0),
      *_window_row(0.04, 0.84, 0.12, r.uniform(0.38, 0.45),
                   int(r.integers(4, 7)), 1),
      _Part(_rect(0.87, 0.14, 0.97, 0.8), 1),
      _Part(_rect(0.0, 0.66, 1.0, 0.7), 3),
      _Part(_circle(0.2, 0.86, radius, a), 2),
      _Part(_circle(0.8, 0.86, radius, a), 2),
  ]


def _car(r, a, variant):
  del variant
  roof = r.uniform(0.06, 0.16)
  radius = r.uniform(0.15, 0.19)
  return [
      _Part(_poly(0.18, 0.48, 0.3, roof, 0.68, roof, 0.84, 0.48), 0),
      _Part(_poly(0.26, 0.45, 0.34, roof + 0.06, 0.49, roof + 0.06, 0.49,
                  0.45), 1),
      _Part(_poly(0.52, 0.45, 0.52, roof + 0.06, 0.65, roof + 0.06, 0.77,
                  0.45), 1),
      _Part(_poly(0.0, 0.52, 0.05, 0.45, 0.95, 0.43, 1.0, 0.55, 1.0, 0.8, 0.0,
                  0.8), 0),
      _Part(_rect(0.93, 0.5, 1.0, 0.58), 3),
      _Part(_circle(0.2, 0.8, radius, a), 2),
      _Part(_circle(0.8, 0.8, radius, a), 2),
  ]


def _cat(r, a, variant):
  del variant
  head = r.uniform(0.15, 0.19)
  return [
      _Part(_poly(0.18, 0.6, 0.06, 0.4, r.uniform(0.0, 0.1), 0.12), 0, 0.06),
      *_legs((0.25, 0.33, 0.56, 0.64), 0.62, 1.0, 0, 0.07, r),
      _Part(_ellipse(0.42, 0.6, 0.28, r.uniform(0.14, 0.19)), 0),
      _Part(_poly(0.64, 0.28, 0.66, 0.04, 0.75, 0.22), 0),
      _Part(_poly(0.77, 0.22, 0.86, 0.04, 0.89, 0.3), 0),
      _Part(_circle(0.76, 0.36, head, a), 0),
      _Part(_circle(0.71, 0.33, 0.03, a), 3),
      _Part(_circle(0.82, 0.33, 0.03, a), 3),
      _Part(_circle(0.77, 0.42, 0.02, a), 2),
  ]


def _chair(r, a, variant):
  del a, variant
  seat = r.uniform(0.48, 0.58)
  return [
      _Part(_poly(0.1, 0.0, 0.28, 0.0, 0.3, seat, 0.12, seat), 0),
      *_legs((0.14, 0.9), seat + 0.08, 1.0, 0, 0.07, r),
      _Part(_poly(0.3, seat + 0.08, 0.32, 0.9), 0, 0.05),
      _Part(_rect(0.1, seat, 0.96, seat + 0.1), 0),
      _Part(_rect(0.3, seat - 0.05, 0.92, seat + 0.01), 1),
  ]


def _cow(r, a, variant):
  del variant
  return [
      *_legs((0.2, 0.29, 0.66, 0.75), 0.6, 1.0, 0, 0.09, r),
      _Part(_poly(0.12, 0.28, 0.04, 0.72), 2, 0.03),
      _Part(_rect(0.12, 0.22, 0.82, r.uniform(0.64, 0.72)), 0),
      _Part(_circle(0.62, 0.72, 0.06, a), 3),
      _Part(_poly(0.8, 0.18, 1.0, 0.24, 0.98, 0.5, 0.84, 0.5), 0),
      _Part(_poly(0.84, 0.18, 0.8, 0.04), 3, 0.03),
      _Part(_poly(0.95, 0.2, 0.99, 0.06), 3, 0.03),
  ]


def _diningtable(r, a, variant):
  del variant
  top = r.uniform(0.14, 0.26)
  parts = [
      _Part(_rect(0.05, top, 0.12, 1.0), 2),
      _Part(_rect(0.88, top, 0.95, 1.0), 2),
      _Part(_rect(0.3, top, 0.35, 0.88), 2),
      _Part(_rect(0.65, top, 0.7, 0.88), 2),
      _Part(_rect(0.0, top, 1.0, top + 0.14), 0),
  ]
  if r.uniform() < 0.6:  # Something on the table.
    x = r.uniform(0.2, 0.8)
    parts.append(_Part(_ellipse(x, top - 0.03, 0.09, 0.03), 3))
    parts.append(_Part(_circle(x + 0.15, top - 0.09, 0.08, a), 1))
  return parts


def _dog(r, a, variant):
  del variant
  return [
      *_legs((0.25, 0.33, 0.6, 0.68), 0.58, 1.0, 0, 0.08, r),
      _Part(_poly(0.17, 0.5, 0.07, r.uniform(0.2, 0.4)), 0, 0.05),
      _Part(_ellipse(0.43, 0.52, 0.3, r.uniform(0.13, 0.18)), 0),
      _Part(_circle(0.76, 0.32, r.uniform(0.12, 0.16), a), 0),
      _Part(_ellipse(0.9, 0.38, 0.08, 0.06), 0),
      _Part(_ellipse(0.7, 0.36, 0.05, 0.13, -10), 1),
      _Part(_circle(0.97, 0.36, 0.03, a), 2),
      _Part(_circle(0.8, 0.28, 0.025, a), 2),
  ]


def _horse(r, a, variant):
  del a, variant
  return [
      *_legs((0.24, 0.32, 0.62, 0.7), 0.5, 1.0, 0, 0.06, r),
      _Part(_poly(0.15, 0.38, 0.06, r.uniform(0.6, 0.75)), 1, 0.07),
      _Part(_ellipse(0.45, 0.42, 0.3, r.uniform(0.12, 0.16)), 0),
      _Part(_poly(0.62, 0.38, 0.72, 0.05, 0.82, 0.08, 0.76, 0.42), 0),
      _Part(_poly(0.7, 0.08, 0.63, 0.35), 1, 0.05),
      _Part(_ellipse(0.87, 0.13, 0.11, 0.06, 30), 0),
  ]


def _motorbike(r, a, variant):
  del variant
  radius = r.uniform(0.2, 0.25)
  back, front = radius / a + 0.02, 1 - radius / a - 0.02
  parts = [_Part(_poly(0.3, 0.62, 0.08, 0.68), 3, 0.04)]
  for x in (back, front):
    parts += [_Part(_circle(x, 0.76, radius, a), 2),
              _Part(_circle(x, 0.76, radius * 0.4, a), 3)]
  parts += [
      _Part(_poly(0.3, 0.42, 0.7, 0.36, 0.78, 0.6, 0.35, 0.66), 0),
      _Part(_ellipse(0.52, 0.37, 0.14, 0.08), 0),
      _Part(_poly(0.22, 0.36, 0.42, 0.32, 0.42, 0.4, 0.24, 0.43), 1),
      _Part(_poly(0.7, 0.38, 0.78, 0.1), 2, 0.04),
  ]
  return parts


def _person(r, a, variant):
  del variant
  spread = r.uniform(0.0, 0.12)
  return [
      _Part(_poly(0.42, 0.55, 0.38 - spread, 1.0), 1, 0.07),
      _Part(_poly(0.58, 0.55, 0.62 + spread, 1.0), 1, 0.07),
      _Part(_poly(0.25, 0.23, 0.08, 0.45, r.uniform(0.05, 0.2), 0.6), 0, 0.045),
      _Part(_poly(0.75, 0.23, 0.92, 0.45, r.uniform(0.8, 0.95), 0.6), 0, 0.045),
      _Part(_poly(0.22, 0.19, 0.78, 0.19, 0.72, 0.58, 0.28, 0.58), 0),
      _Part(_circle(0.5, 0.1, 0.09, a), 3),
  ]


def _pottedplant(r, a, variant):
  del variant
  parts = [_Part(_leaf(0.5, 0.62, angle, r.uniform(0.3, 0.55),
                       r.uniform(0.05, 0.08), a), 0)
           for angle in r.uniform(-165, -15, size=int(r.integers(5, 9)))]
  return parts + [
      _Part(_poly(0.22, 0.6, 0.78, 0.6, 0.68, 1.0, 0.32, 1.0), 1),
      _Part(_rect(0.18, 0.58, 0.82, 0.66), 1),
  ]


def _sheep(r, a, variant):
  del variant
  parts = _legs((0.25, 0.32, 0.62, 0.7), 0.6, 1.0, 2, 0.04, r)
  for _ in range(int(r.integers(10, 15))):
    x, y = r.uniform(0.2, 0.68), r.uniform(0.3, 0.58)
    parts.append(_Part(_circle(x, y, r.uniform(0.1, 0.15), a), 0))
  return parts + [
      _Part(_ellipse(0.83, 0.42, 0.09, 0.13, 15), 2),
      _Part(_ellipse(0.78, 0.32, 0.06, 0.03, -20), 2),
  ]


def _sofa(r, a, variant):
  del a, variant
  back = r.uniform(0.05, 0.2)
  count = int(r.integers(2, 4))
  return [
      _Part(_rect(0.05, 0.84, 0.09, 0.97), 2),
      _Part(_rect(0.91, 0.84, 0.95, 0.97), 2),
      _Part(_rect(0.04, back, 0.96, 0.56), 0),
      _Part(_rect(0.04, 0.5, 0.96, 0.86), 0),
      *_window_row(0.1, 0.9, 0.46, 0.58, count, 1),
      _Part(_rect(0.0, 0.34, 0.12, 0.86), 0),
      _Part(_rect(0.88, 0.34, 1.0, 0.86), 0),
  ]


def _train(r, a, variant):
  del variant
  wheels = int(r.integers(5, 9))
  parts = [
      _Part(_poly(0.0, 0.08, 0.9, 0.08, 1.0, 0.3, 1.0, 0.84, 0.0, 0.84), 0),
      _Part(_rect(0.0, 0.04, 0.9, 0.09), 2),
      *_window_row(0.03, 0.86, 0.2, r.uniform(0.38, 0.46),
                   int(r.integers(6, 10)), 1),
      _Part(_poly(0.91, 0.16, 0.98, 0.32, 0.98, 0.44, 0.91, 0.44), 1),
      _Part(_rect(0.0, 0.58, 1.0, 0.63), 3),
  ]
  return parts + [_Part(_circle(0.05 + 0.9 * (i + 0.5) / wheels, 0.86, 0.1, a),
                        2) for i in range(wheels)]


def _tvmonitor(r, a, variant):
  del a, variant
  bezel = r.uniform(0.04, 0.09)
  return [
      _Part(_poly(0.42, 0.8, 0.58, 0.8, 0.68, 1.0, 0.32, 1.0), 2),
      _Part(_rect(0.0, 0.0, 1.0, 0.84), 2),
      _Part(_rect(bezel, bezel, 1 - bezel, 0.84 - bezel), 0),
  ]


def _star(r, a, variant):
  del variant
  points = int(r.integers(5, 7))
  t = np.linspace(-np.pi / 2, 1.5 * np.pi, 2 * points, endpoint=False)
  radius = np.where(np.arange(2 * points) % 2, r.uniform(0.18, 0.26), 0.5)
  return [_Part(np.stack([0.5 + radius * np.cos(t) / a,
                          0.5 + radius * np.sin(t)], axis=1), 0)]


def _hexagon(r, a, variant):
  del r, variant
  t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
  return [_Part(np.stack([0.5 + 0.5 * np.cos(t) / a, 0.5 + 0.5 * np.sin(t)],
                         axis=1), 0)]


def _plus(r, a, variant):
  del a, variant
  arm = r.uniform(0.14, 0.2)
  return [_Part(_rect(0.5 - arm, 0.0, 0.5 + arm, 1.0), 0),
          _Part(_rect(0.0, 0.5 - arm, 1.0, 0.5 + arm), 0)]


def _ring(r, a, variant):
  del variant
  return [_Part(_circle(0.5, 0.5, 0.42, a), 0, r.uniform(0.12, 0.2),
                closed=True)]


def _crescent(r, a, variant):
  del a, variant
  t = np.linspace(-0.5 * np.pi, 0.5 * np.pi, 24)
  inner = r.uniform(0.15, 0.3)
  outer = np.stack([0.5 + 0.5 * np.cos(t), 0.5 + 0.5 * np.sin(t)], axis=1)
  back = np.stack([0.5 + inner * np.cos(t[::-1]), 0.5 + 0.5 * np.sin(t[::-1])],
                  axis=1)
  points = np.concatenate([outer, back])
  points[:, 0] = (points[:, 0] - 0.5) * 2  # The right half, stretched to fill.
  return [_Part(points, 0)]


def _arrow(r, a, variant):
  del a, variant
  shaft = r.uniform(0.12, 0.2)
  head = r.uniform(0.5, 0.65)
  return [_Part(_poly(0.0, 0.5 - shaft, head, 0.5 - shaft, head, 0.0, 1.0, 0.5,
                      head, 1.0, head, 0.5 + shaft, 0.0, 0.5 + shaft), 0)]


def _heart(r, a, variant):
  del r, a, variant
  t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
  return [_Part(np.stack([0.5 + x / 34, 0.45 + y / 34], axis=1), 0)]


def _lattice(r, a, variant):
  del a, variant
  bars = int(r.integers(3, 5))
  thickness = r.uniform(0.05, 0.09)
  parts = []
  for i in range(bars):
    at = (i + 0.5) / bars
    parts += [_Part(_poly(at, 0.0, at, 1.0), 0, thickness),
              _Part(_poly(0.0, at, 1.0, at), 0, thickness)]
  return parts


@dataclasses.dataclass(frozen=True)
class _Design:
  """How one class is drawn.

  Attributes:
    draw: (rng, aspect, variant) -> parts in the unit frame.
    aspect: typical width / height of the object box.
    textures: the texture group of the body in variant 0 and variant 1.
  """
  draw: Callable[[np.random.Generator, float, int], list[_Part]]
  aspect: float
  textures: tuple[str, str]


_OBJECT_DESIGNS = {
    'aeroplane': _Design(_aeroplane, 1.9, ('plain', 'striped')),
    'bicycle': _Design(_bicycle, 1.7, ('plain', 'plain')),
    'bird': _Design(_bird, 1.3, ('plain', 'spotted')),
    'boat': _Design(_boat, 1.3, ('plain', 'striped')),
    'bottle': _Design(_bottle, 0.36, ('plain', 'striped')),
    'bus': _Design(_bus, 1.8, ('plain', 'checked')),
    'car': _Design(_car, 2.0, ('plain', 'striped')),
    'cat': _Design(_cat, 1.2, ('plain', 'striped')),
    'chair': _Design(_chair, 0.7, ('plain', 'checked')),
    'cow': _Design(_cow, 1.6, ('plain', 'spotted')),
    'diningtable': _Design(_diningtable, 1.9, ('plain', 'checked')),
    'dog': _Design(_dog, 1.4, ('plain', 'spotted')),
    'horse': _Design(_horse, 1.35, ('plain', 'striped')),
    'motorbike': _Design(_motorbike, 1.7, ('plain', 'checked')),
    'person': _Design(_person, 0.42, ('plain', 'striped')),
    'pottedplant': _Design(_pottedplant, 0.8, ('plain', 'spotted')),
    'sheep': _Design(_sheep, 1.4, ('plain', 'spotted')),
    'sofa': _Design(_sofa, 2.1, ('plain', 'checked')),
    'train': _Design(_train, 3.0, ('plain', 'striped')),
    'tvmonitor': _Design(_tvmonitor, 1.25, ('plain', 'checked')),
}
assert tuple(_OBJECT_DESIGNS) == voc.VOC_CLASSES

# Shapes that are classes only in the classification set (clutter in scenes).
_SHAPE_DESIGNS = {
    'star': _Design(_star, 1.0, ('plain', 'striped')),
    'hexagon': _Design(_hexagon, 1.1, ('plain', 'checked')),
    'plus': _Design(_plus, 1.0, ('plain', 'spotted')),
    'ring': _Design(_ring, 1.0, ('plain', 'plain')),
    'crescent': _Design(_crescent, 0.6, ('plain', 'striped')),
    'arrow': _Design(_arrow, 1.6, ('plain', 'checked')),
    'heart': _Design(_heart, 1.0, ('plain', 'spotted')),
    'lattice': _Design(_lattice, 1.0, ('plain', 'plain')),
}


def classification_classes() -> tuple[str, ...]:
  """The demo classification classes in label order (48).

  The 20 VOC classes in two fine-grained variants each ('<class>_v0' and
  '<class>_v1': texture group, or structure for the bicycle), then the 8
  clutter shapes.
  """
  return tuple(f'{name}_v{variant}' for name in voc.VOC_CLASSES
               for variant in (0, 1)) + tuple(_SHAPE_DESIGNS)


def _class_design(name: str) -> tuple[_Design, int | None]:
  """The design of a classification class name and its fixed variant."""
  if name in _SHAPE_DESIGNS:
    return _SHAPE_DESIGNS[name], None
  base, _, variant = name.rpartition('_v')
  return _OBJECT_DESIGNS[base], int(variant)


# ----------------------------------------------------------------------------
# Looks: colours and textures, drawn from distributions shared by all classes.


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  """HSV in [0, 1] to float32 RGB in [0, 255]."""
  return np.float32(colorsys.hsv_to_rgb(h, s, v)) * 255


def _random_colour(r: np.random.Generator, dark: bool = False) -> np.ndarray:
  value = r.uniform(0.05, 0.35) if dark else r.uniform(0.25, 1.0)
  return _hsv_to_rgb(r.uniform(), r.uniform(0.1, 0.95), value)


def _contrasting_colour(r: np.random.Generator,
                        colour: np.ndarray) -> np.ndarray:
  other = _random_colour(r)
  if np.abs(other - colour).sum() < 120:  # Keep patterns visible.
    other = 255.0 - colour
  return other


_TEXTURE_GROUPS = {
    'plain': ('solid', 'solid', 'gradient'),
    'striped': ('stripes',),
    'spotted': ('dots', 'blotches'),
    'checked': ('checker',),
}


def _texture(r: np.random.Generator, kind: str, height: int, width: int,
             first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """A [height, width, 3] float32 RGB texture of two colours (read-only)."""
  yy = np.arange(height, dtype=np.float32)[:, None]  # [H, 1]
  xx = np.arange(width, dtype=np.float32)[None, :]  # [1, W]
  angle = r.uniform(0, np.pi)
  along = xx * np.cos(angle) + yy * np.sin(angle)  # [H, W]
  period = max(4.0, r.uniform(0.12, 0.3) * min(height, width))
  if kind == 'solid':
    return np.broadcast_to(first, (height, width, 3))
  if kind == 'gradient':
    weight = (along - along.min()) / max(float(np.ptp(along)), 1.0)
  elif kind == 'stripes':
    weight = (along / period + r.uniform()) % 1.0 < r.uniform(0.35, 0.65)
  elif kind == 'checker':
    weight = ((xx // period + yy // period) % 2).astype(bool)
  elif kind == 'dots':
    mask = np.zeros((height, width), np.uint8)
    count = int(height * width / period ** 2 * r.uniform(0.5, 1.2)) + 1
    for x, y, radius in zip(r.uniform(0, width, count),
                            r.uniform(0, height, count),
                            r.uniform(0.15, 0.35, count) * period):
      cv2.circle(mask, (int(x), int(y)), max(1, int(radius)), 1, -1)
    weight = mask.astype(bool)
  elif kind == 'blotches':
    small = r.normal(size=(max(2, int(height / period) + 1),
                           max(2, int(width / period) + 1))).astype(np.float32)
    weight = cv2.resize(small, (width, height),
                        interpolation=cv2.INTER_CUBIC) > r.uniform(-0.3, 0.3)
  else:
    raise ValueError(f'unknown texture {kind!r}')
  weight = np.asarray(weight, np.float32)[..., None]  # [H, W, 1]
  return first * (1 - weight) + second * weight


def _slot_looks(r: np.random.Generator, body_group: str
                ) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """(texture kind, colour, second colour) of slots 0-3 of one instance."""
  body = _random_colour(r)
  secondary = _random_colour(r)
  return [
      (str(r.choice(_TEXTURE_GROUPS[body_group])), body,
       _contrasting_colour(r, body)),
      (str(r.choice(_TEXTURE_GROUPS['plain'])), secondary,
       _contrasting_colour(r, secondary)),
      ('solid', _random_colour(r, dark=True), body),
      ('solid', _random_colour(r), body),
  ]


# ----------------------------------------------------------------------------
# Rendering.


def _render(r: np.random.Generator, parts: Sequence[_Part],
            looks: Sequence[tuple[str, np.ndarray, np.ndarray]], height: float,
            aspect: float) -> tuple[np.ndarray, np.ndarray]:
  """Draws parts into an RGB + alpha sprite about `height` pixels tall.

  The unit frame is stretched to height x (height * aspect), mirrored with
  probability 0.5 and rotated by up to 12 degrees; the sprite is the bounding
  box of the result. Drawing happens at _SUPERSAMPLE x and is area-averaged
  down, so edges are antialiased and alpha is fractional there.

  Returns:
    rgb float32 [h, w, 3] and alpha float32 [h, w] in [0, 1].
  """
  scale = np.array([height * aspect, height]) * _SUPERSAMPLE
  mirror = r.uniform() < 0.5
  angle = np.radians(r.uniform(-12, 12))
  rotation = np.array([[np.cos(angle), -np.sin(angle)],
                       [np.sin(angle), np.cos(angle)]])
  placed = []
  for part in parts:
    points = part.points.copy()
    if mirror:
      points[:, 0] = 1.0 - points[:, 0]
    placed.append((points - 0.5) * scale @ rotation.T)  # [K, 2] pixels
  margin = _SUPERSAMPLE * (1 + max(p.thickness for p in parts) * height)
  corner = np.concatenate(placed).min(axis=0) - margin
  size = np.ceil(np.concatenate(placed).max(axis=0) + margin - corner)
  size = (np.ceil(size / _SUPERSAMPLE) * _SUPERSAMPLE).astype(int)  # (w, h)
  rgb = np.zeros((size[1], size[0], 3), np.float32)
  covered = np.zeros((size[1], size[0]), np.uint8)
  textures = {}
  for part, points in zip(parts, placed):
    thickness = max(1, round(part.thickness * height * _SUPERSAMPLE))
    # Draw in the part's own window of the canvas (parts are often small).
    low = np.maximum(np.floor(points.min(axis=0) - corner) - thickness, 0)
    high = np.ceil(points.max(axis=0) - corner) + thickness + 1
    (x0, y0), (x1, y1) = low.astype(int), high.astype(int)
    window = np.s_[y0:y1, x0:x1]
    mask = np.zeros(covered[window].shape, np.uint8)
    fixed = np.round((points - corner - low) * 16).astype(np.int32)  # 4 bits
    if part.thickness:
      cv2.polylines(mask, [fixed], part.closed, 1, thickness, cv2.LINE_8, 4)
    else:
      cv2.fillPoly(mask, [fixed], 1, cv2.LINE_8, 4)
    if part.slot not in textures:
      textures[part.slot] = _texture(r, looks[part.slot][0], *covered.shape,
                                     *looks[part.slot][1:])
    np.copyto(rgb[window], textures[part.slot][window],
              where=mask[..., None].astype(bool))
    covered[window] |= mask
  # Soft directional light, so surfaces are not perfectly flat.
  xx = np.arange(size[0], dtype=np.float32)[None, :] / size[0] - 0.5  # [1, W]
  yy = np.arange(size[1], dtype=np.float32)[:, None] / size[1] - 0.5  # [H, 1]
  light_angle = r.uniform(0, 2 * np.pi)
  light = np.cos(light_angle) * xx + np.sin(light_angle) * yy  # [H, W]
  rgb *= (1.0 + r.uniform(0.0, 0.3) * light)[..., None]
  out_size = (size[0] // _SUPERSAMPLE, size[1] // _SUPERSAMPLE)
  return (cv2.resize(rgb, out_size, interpolation=cv2.INTER_AREA),
          cv2.resize(covered.astype(np.float32), out_size,
                     interpolation=cv2.INTER_AREA))


def _draw_design(r: np.random.Generator, design: _Design, height: float,
                 variant: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """One instance of a design: variant (random if None), look, jitter."""
  if variant is None:
    variant = int(r.integers(2))
  aspect = design.aspect * np.exp(r.uniform(-0.15, 0.15))
  looks = _slot_looks(r, design.textures[variant])
  return _render(r, design.draw(r, aspect, variant), looks, height, aspect)


def _clutter(r: np.random.Generator, height: float,
             with_shapes: bool) -> tuple[np.ndarray, np.ndarray]:
  """A background thing: a blob, a stick, a box, or one of the shapes."""
  kind = r.integers(4 if with_shapes else 3)
  looks = _slot_looks(r, str(r.choice(tuple(_TEXTURE_GROUPS))))
  if kind == 0:
    t = np.sort(r.uniform(0, 2 * np.pi, int(r.integers(5, 10))))
    radius = r.uniform(0.25, 0.5, len(t))
    parts = [_Part(np.stack([0.5 + radius * np.cos(t),
                             0.5 + radius * np.sin(t)], axis=1), 0)]
  elif kind == 1:
    parts = [_Part(r.uniform(0, 1, (int(r.integers(2, 4)), 2)), 0,
                   r.uniform(0.03, 0.1))]
  elif kind == 2:
    parts = [_Part(_rect(0.0, 0.0, 1.0, 1.0), 0)]
  else:
    design = list(_SHAPE_DESIGNS.values())[r.integers(len(_SHAPE_DESIGNS))]
    return _draw_design(r, design, height)
  return _render(r, parts, looks, height, np.exp(r.uniform(-0.7, 0.7)))


def _background(r: np.random.Generator, height: int,
                width: int) -> np.ndarray:
  """A smooth random colour field with a faint texture, float32 RGB."""
  grid = (int(r.integers(2, 5)), int(r.integers(2, 5)))
  colours = np.stack([_hsv_to_rgb(r.uniform(), r.uniform(0, 0.5),
                                  r.uniform(0.25, 0.95))
                      for _ in range(grid[0] * grid[1])]).reshape(*grid, 3)
  field = cv2.resize(colours, (width, height), interpolation=cv2.INTER_CUBIC)
  kind = str(r.choice(('solid', 'stripes', 'blotches', 'checker')))
  pattern = _texture(r, kind, height, width, np.zeros(3, np.float32),
                     np.full(3, 1.0, np.float32))
  return field * (1 + r.uniform(0, 0.15) * (pattern - 0.5))


@dataclasses.dataclass
class _Scene:
  """An image under construction and which object owns each pixel."""
  image: np.ndarray  # [H, W, 3] float32 RGB
  owner: np.ndarray  # [H, W] int32, -1 background/clutter, else object index
  in_image_area: list[int]  # per object: its pixels inside the image

  def window(self, sprite_shape: tuple[int, int], x0: int, y0: int
             ) -> tuple[slice, slice, slice, slice]:
    """(image rows, image cols, sprite rows, sprite cols) where they overlap."""
    height, width = self.owner.shape
    top, left = max(0, y0), max(0, x0)
    bottom = min(height, y0 + sprite_shape[0])
    right = min(width, x0 + sprite_shape[1])
    return (slice(top, bottom), slice(left, right),
            slice(top - y0, bottom - y0), slice(left - x0, right - x0))

  def cover(self, alpha: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """bool [H, W]: the pixels a sprite would own (alpha > 0.5)."""
    rows, cols, sprite_rows, sprite_cols = self.window(alpha.shape, x0, y0)
    covered = np.zeros(self.owner.shape, bool)
    covered[rows, cols] = alpha[sprite_rows, sprite_cols] > 0.5
    return covered

  def keeps_objects_visible(self, covered: np.ndarray) -> bool:
    """Whether every object stays at least _MIN_VISIBLE visible."""
    for index, area in enumerate(self.in_image_area):
      if np.sum((self.owner == index) & ~covered) < _MIN_VISIBLE * area:
        return False
    return True

  def paste(self, rgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int,
            owner: int) -> None:
    rows, cols, sprite_rows, sprite_cols = self.window(alpha.shape, x0, y0)
    a = alpha[sprite_rows, sprite_cols, None]
    self.image[rows, cols] = (self.image[rows, cols] * (1 - a) +
                              rgb[sprite_rows, sprite_cols] * a)
    self.owner[rows, cols][a[..., 0] > 0.5] = owner


def _add_clutter(r: np.random.Generator, scene: _Scene, count: int,
                 max_height: float, with_shapes: bool) -> None:
  """Pastes clutter; after objects exist, only where they stay visible."""
  height, width = scene.owner.shape
  for _ in range(count):
    rgb, alpha = _clutter(r, r.uniform(0.1, max_height) * height, with_shapes)
    x0 = int(r.integers(-alpha.shape[1] // 2, width))
    y0 = int(r.integers(-alpha.shape[0] // 2, height))
    if scene.keeps_objects_visible(scene.cover(alpha, x0, y0)):
      scene.paste(rgb, alpha, x0, y0, owner=-1)


def _finish(r: np.random.Generator, image: np.ndarray) -> np.ndarray:
  """Sensor noise, sometimes a little blur; uint8."""
  image = image + r.normal(0, r.uniform(2, 6), image.shape)
  if r.uniform() < 0.3:
    image = cv2.GaussianBlur(image, (3, 3), 0)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class _Objects:
  """Annotations of one scene (VOC conventions)."""
  boxes: np.ndarray  # int32 [N, 4] x1, y1, x2, y2 1-based inclusive
  labels: np.ndarray  # int32 [N]
  difficult: np.ndarray  # bool [N]
  truncated: np.ndarray  # bool [N]


def _offset(r: np.random.Generator, extent: int, limit: int,
            spill: float) -> int:
  """A sprite offset letting at most `spill` of its extent leave each side."""
  low = -int(spill * extent)
  high = limit - extent + int(spill * extent)
  return int(r.integers(min(low, high), max(low, high) + 1))


def _detection_scene(r: np.random.Generator, width: int, height: int,
                     first_label: int) -> tuple[np.ndarray, _Objects]:
  """One VOC-style scene; its first object has class `first_label`."""
  scene = _Scene(_background(r, height, width),
                 np.full((height, width), -1, np.int32), [])
  _add_clutter(r, scene, int(r.integers(2, 7)), 0.5, with_shapes=True)
  count = int(r.choice([1, 2, 3, 4, 5], p=[0.25, 0.3, 0.25, 0.12, 0.08]))
  labels, truncated = [], []
  for label in [first_label, *r.integers(len(voc.VOC_CLASSES), size=count - 1)]:
    design = _OBJECT_DESIGNS[voc.VOC_CLASSES[label]]
    object_height = height * np.exp(r.uniform(np.log(0.2), np.log(0.85)))
    object_height *= min(1.0, 0.95 * width / (object_height * design.aspect))
    rgb, alpha = _draw_design(r, design, object_height)
    # Fully inside where it fits, else (or 35% of the time) up to a quarter
    # of each side may leave the image.
    spill = 0.25 if r.uniform() < 0.35 else 0.0
    for _ in range(20):  # Placements; the first object always fits.
      x0, y0 = (_offset(r, extent, limit, spill)
                for extent, limit in zip(alpha.shape[::-1], (width, height)))
      covered = scene.cover(alpha, x0, y0)
      if covered.any() and scene.keeps_objects_visible(covered):
        break
    else:
      continue
    rows, cols = np.nonzero(alpha > 0.5)
    truncated.append(bool(x0 + cols.min() < 0 or y0 + rows.min() < 0 or
                          x0 + cols.max() >= width or
                          y0 + rows.max() >= height))
    scene.paste(rgb, alpha, x0, y0, owner=len(labels))
    scene.in_image_area.append(int(covered.sum()))
    labels.append(int(label))
  _add_clutter(r, scene, int(r.integers(0, 3)), 0.3, with_shapes=True)
  boxes, difficult = [], []
  for index, area in enumerate(scene.in_image_area):
    rows, cols = np.nonzero(scene.owner == index)
    boxes.append([cols.min() + 1, rows.min() + 1, cols.max() + 1,
                  rows.max() + 1])
    box_area = (cols.max() - cols.min() + 1) * (rows.max() - rows.min() + 1)
    difficult.append(len(rows) < _DIFFICULT_VISIBLE * area or
                     box_area < _DIFFICULT_AREA * width * height)
  return _finish(r, scene.image), _Objects(
      boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
      labels=np.asarray(labels, np.int32), difficult=np.asarray(difficult),
      truncated=np.asarray(truncated))


def _classification_image(r: np.random.Generator, size: int,
                          class_name: str) -> np.ndarray:
  """One dominant object of `class_name` over clutter, uint8 [S, S, 3]."""
  scene = _Scene(_background(r, size, size), np.full((size, size), -1,
                                                     np.int32), [])
  _add_clutter(r, scene, int(r.integers(1, 5)), 0.45, with_shapes=False)
  design, variant = _class_design(class_name)
  object_height = size * r.uniform(0.45, 0.85)
  object_height *= min(1.0, 0.9 * size / (object_height * design.aspect))
  rgb, alpha = _draw_design(r, design, object_height, variant)
  jitter = 0.15 * size
  x0 = int(round((size - alpha.shape[1]) / 2 + r.uniform(-jitter, jitter)))
  y0 = int(round((size - alpha.shape[0]) / 2 + r.uniform(-jitter, jitter)))
  scene.in_image_area.append(int(scene.cover(alpha, x0, y0).sum()))
  scene.paste(rgb, alpha, x0, y0, owner=0)
  _add_clutter(r, scene, int(r.integers(0, 2)), 0.25, with_shapes=False)
  return _finish(r, scene.image)


# ----------------------------------------------------------------------------
# Datasets on disk.


def _build_atomically(final_dir: str, build: Callable[[str], None]) -> str:
  """Runs `build(tmp_dir)` and renames tmp_dir to `final_dir`.

  If another process finished the same folder first, its copy is kept (the
  content is identical: generation is deterministic).
  """
  if os.path.isdir(final_dir):
    return final_dir
  parent = os.path.dirname(final_dir)
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=os.path.basename(final_dir) + '.tmp',
                             dir=parent)
  try:
    build(tmp_dir)
    os.rename(tmp_dir, final_dir)
  except OSError:
    if not os.path.isdir(final_dir):
      raise
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return final_dir


def _voc_image(job: tuple) -> voc.VocImage:
  """Worker: generates, writes (JPEG + XML) and returns one demo VOC image."""
  seed, split_code, index, image_id, first_label, width, height, year_dir = job
  r = np.random.default_rng([seed, split_code, index])
  image, objects = _detection_scene(r, width, height, first_label)
  path = os.path.join(year_dir, 'JPEGImages', f'{image_id}.jpg')
  image_io.write_jpeg(path, image)
  voc.write_voc_annotation(
      os.path.join(year_dir, 'Annotations', f'{image_id}.xml'), image_id,
      width, height, objects.boxes, objects.labels, objects.difficult,
      objects.truncated)
  return voc.VocImage(image_id, path, width, height, objects.boxes,
                      objects.labels, objects.difficult, objects.truncated)


def _default_workers(num_workers: int | None) -> int:
  return min(8, os.cpu_count() or 1) if num_workers is None else num_workers


def demo_voc(data_dir: str | None = None, *, seed: int = 0,
             num_trainval: int = 300, num_test: int = 300,
             image_size: tuple[int, int] = DEMO_VOC_IMAGE_SIZE,
             num_workers: int | None = None) -> str:
  """The demo detection dataset in VOCdevkit layout (generated if absent).

  trainval is split into train and val halves (alternating ids); the first
  object of image i has class (a permutation of the classes)[i mod 20], so
  every class appears in trainval and in test once a split has >= 20 images.

  Args:
    data_dir: cache root (default `default_data_dir()`).
    seed: generation seed; same seed and sizes give identical files.
    num_trainval: trainval images.
    num_test: test images.
    image_size: (width, height) of every image.
    num_workers: generator processes (default: the cores, at most 8); the
      output does not depend on it.

  Returns:
    The VOCdevkit folder (read it with `voc.load_voc_split(path, '2007',
    split)`).
  """
  width, height = image_size
  name = (f'demo_voc_v{GENERATOR_VERSION}_seed{seed}_trainval{num_trainval}_'
          f'test{num_test}_{width}x{height}')
  root = os.path.join(data_dir or default_data_dir(), name)

  def build(tmp_root: str) -> None:
    year_dir = os.path.join(tmp_root, 'VOCdevkit', 'VOC2007')
    jobs, splits = [], {}
    for split_code, (split, count) in enumerate(
        (('trainval', num_trainval), ('test', num_test))):
      first_labels = np.concatenate([
          np.random.default_rng([seed, split_code, 2**31 - 1, block]
                                ).permutation(len(voc.VOC_CLASSES))
          for block in range(count // len(voc.VOC_CLASSES) + 1)])
      splits[split] = [f'{len(jobs) + i + 1:06d}' for i in range(count)]
      jobs += [(seed, split_code, i, image_id, int(first_labels[i]), width,
                height, year_dir) for i, image_id in enumerate(splits[split])]
    annotations = workers.map_in_processes(
        _voc_image, jobs, num_workers=_default_workers(num_workers),
        what=f'generating {name}')
    splits['train'] = splits['trainval'][0::2]
    splits['val'] = splits['trainval'][1::2]
    voc.write_image_sets(year_dir, splits, annotations)
    with open(os.path.join(tmp_root, 'demo.json'), 'w') as f:
      json.dump({'generator_version': GENERATOR_VERSION, 'seed': seed,
                 'num_trainval': num_trainval, 'num_test': num_test,
                 'image_size': [width, height]}, f, indent=2)

  _build_atomically(root, build)
  return os.path.join(root, 'VOCdevkit')


_CLASSIFICATION_CHUNK = 256  # Images per worker job.


def _classification_chunk(job: tuple) -> None:
  """Worker: draws images [start, stop) of a split into its .npy file."""
  images_path, labels, names, seed, split_code, start, size = job
  images = np.load(images_path, mmap_mode='r+')  # [N, S, S, 3]
  for offset, label in enumerate(labels):
    r = np.random.default_rng([seed, 1000 + split_code, start + offset])
    images[start + offset] = _classification_image(r, size, names[label])
  images.flush()


# Seeds of each split's images: a split's images never depend on the others.
_CLASSIFICATION_SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}


def demo_classification(data_dir: str | None = None, *, seed: int = 0,
                        num_classes: int = 48, per_class: int = 100,
                        image_size: int = 64, test: bool = False,
                        num_workers: int | None = None) -> str:
  """The demo classification dataset (generated if absent).

  Stored compactly: `<split>_images.npy` uint8 [N, S, S, 3] RGB and
  `<split>_labels.npy` int32 [N] for split 'train' (`per_class` images per
  class) and 'val' (`max(1, per_class // 5)` per class), plus `classes.json`;
  read it with `DemoClassificationSource`. With `test`, also 'test'
  (`max(1, per_class * 4 // 5)` per class: the study's SUN-397 split is
  50/10/40), added to the folder on the first call that asks for it, so
  the sets that never need one (the demo pretraining) are not made larger.

  Args:
    data_dir: cache root (default `default_data_dir()`).
    seed: generation seed; same arguments give identical arrays.
    num_classes: the first `num_classes` of `classification_classes()`.
    per_class: training images per class.
    image_size: side S of the square images.
    test: also generate the 'test' split.
    num_workers: generator processes (default: the cores, at most 8); the
      output does not depend on it.

  Returns:
    The dataset folder.

  Raises:
    ValueError: num_classes outside [2, 48].
  """
  names = classification_classes()
  if not 2 <= num_classes <= len(names):
    raise ValueError(f'num_classes must be in [2, {len(names)}], got '
                     f'{num_classes}')
  names = names[:num_classes]
  name = (f'demo_cls_v{GENERATOR_VERSION}_seed{seed}_classes{num_classes}_'
          f'per{per_class}_{image_size}px')
  root = os.path.join(data_dir or default_data_dir(), name)
  counts = {'train': per_class, 'val': max(1, per_class // 5),
            'test': max(1, per_class * 4 // 5)}

  def generate(folder: str, splits: Sequence[str]) -> None:
    jobs = []
    for split in splits:
      labels = np.tile(np.arange(num_classes, dtype=np.int32),
                       counts[split])                              # [N]
      np.save(os.path.join(folder, f'{split}_labels.npy'), labels)
      images_path = os.path.join(folder, f'{split}_images.npy')
      np.lib.format.open_memmap(
          images_path, mode='w+', dtype=np.uint8,
          shape=(len(labels), image_size, image_size, 3)).flush()
      jobs += [(images_path, labels[start:start + _CLASSIFICATION_CHUNK],
                names, seed, _CLASSIFICATION_SPLIT_CODES[split], start,
                image_size)
               for start in range(0, len(labels), _CLASSIFICATION_CHUNK)]
    workers.map_in_processes(
        _classification_chunk, jobs, num_workers=_default_workers(num_workers),
        what=f'generating {name} {"+".join(splits)}',
        sizes=[len(job[1]) for job in jobs])

  def build(tmp_root: str) -> None:
    generate(tmp_root, ('train', 'val'))
    with open(os.path.join(tmp_root, 'classes.json'), 'w') as f:
      json.dump({'class_names': list(names), 'image_size': image_size,
                 'seed': seed,
                 'per_class': {s: counts[s] for s in ('train', 'val')},
                 'generator_version': GENERATOR_VERSION}, f, indent=2)

  _build_atomically(root, build)
  if test and not os.path.isfile(os.path.join(root, 'test_images.npy')):
    tmp_dir = tempfile.mkdtemp(prefix='test.tmp', dir=root)
    try:
      generate(tmp_dir, ('test',))
      # The images last: their file is what marks the split present.
      for kind in ('labels', 'images'):
        os.replace(os.path.join(tmp_dir, f'test_{kind}.npy'),
                   os.path.join(root, f'test_{kind}.npy'))
    finally:
      shutil.rmtree(tmp_dir, ignore_errors=True)
  return root


class DemoClassificationSource:
  """Random access to a `demo_classification` split (memory mapped).

  `source[i] -> {'image': uint8 [S, S, 3] RGB, 'label': int}`, the record
  format of every classification source (`cnnjax.data.sources`). Safe to
  read from several threads.
  """

  def __init__(self, path: str, split: str):
    """Args:
      path: the folder `demo_classification` returned.
      split: 'train', 'val' or 'test' (if generated).

    Raises:
      FileNotFoundError: the folder or the split's files are missing.
    """
    images_path = os.path.join(path, f'{split}_images.npy')
    if not os.path.isfile(images_path):
      raise FileNotFoundError(
          f'demo classification split {split!r} not found: {images_path} '
          "(splits are 'train', 'val' and, generated with test=True, "
          "'test'; generate with demo_classification)")
    with open(os.path.join(path, 'classes.json')) as f:
      self.class_names = tuple(json.load(f)['class_names'])
    self.num_classes = len(self.class_names)
    self.images = np.load(images_path, mmap_mode='r')  # [N, S, S, 3]
    self.labels = np.load(os.path.join(path, f'{split}_labels.npy'))  # [N]

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {'image': np.array(self.images[index]),
            'label': int(self.labels[index])}


def gt_box_crops(devkit_dir: str, split: str, size: int = 32,
                 include_difficult: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Every ground-truth box of a VOC split, cropped and resized to size x size.

  Used for quick baselines on the demo data (e.g. a linear classifier on raw
  pixels against features of a pretrained net): no context, no warp padding,
  just the box contents resized (area interpolation).

  Args:
    devkit_dir: a VOCdevkit folder (demo or real).
    split: ImageSets/Main split name.
    size: output side.
    include_difficult: keep difficult boxes.

  Returns:
    crops uint8 [N, size, size, 3] RGB and labels int32 [N] (VOC class index).
  """
  crops, labels = [], []
  for image in voc.load_voc_split(devkit_dir, '2007', split):
    pixels = image.decode()
    for (x1, y1, x2, y2), label, difficult in zip(image.boxes, image.labels,
                                                  image.difficult):
      if difficult and not include_difficult:
        continue
      crops.append(cv2.resize(pixels[y1 - 1:y2, x1 - 1:x2], (size, size),
                              interpolation=cv2.INTER_AREA))
      labels.append(label)
  return (np.asarray(crops, np.uint8).reshape(-1, size, size, 3),
          np.asarray(labels, np.int32))
