"""Greedy non-maximum suppression of R-CNN (`nms.m`, SPEC 4).

The highest-scoring remaining box is kept and every remaining box whose IoU
(+1 convention, overlap over the union with the kept box) exceeds the
threshold is dropped (IoU == threshold survives), until none remain.
Tied scores are taken in input order (a stable descending sort); R-CNN's
`nms.m` sorts ascending and takes from the end, which visits tied boxes in
reverse input order, a difference only for exactly tied scores.

`nms` is the reference for one box set (float64, numpy); `batched_nms` runs
many sets (classes x images) at once in one jitted call with fixed sizes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import regions


def nms(boxes: np.ndarray, scores: np.ndarray,
        iou_threshold: float = 0.3) -> np.ndarray:
  """Greedy NMS of one box set.

  Args:
    boxes: [N, 4] (x1, y1, x2, y2), 1-based inclusive.
    scores: [N].
    iou_threshold: boxes with IoU > this to a kept box are suppressed.

  Returns:
    int64 [M] indices of the kept boxes, highest score first.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  remaining = np.argsort(-np.asarray(scores, np.float64).reshape(-1),
                         kind='stable')
  keep = []
  while remaining.size:
    best, rest = remaining[0], remaining[1:]
    keep.append(best)
    overlaps = regions.iou(boxes[best:best + 1], boxes[rest])[0]     # [R]
    remaining = rest[overlaps <= iou_threshold]
  return np.asarray(keep, np.int64)


def _iou_one_to_many(box: jax.Array, boxes: jax.Array) -> jax.Array:
  """IoU of box [B, 4] with boxes [B, N, 4] (+1 convention): [B, N].

  The jnp twin of `regions.iou` for the jitted path (same formula and
  operation order: overlap / (area_box + area_other - overlap)).
  """
  inter_w = jnp.maximum(0.0, jnp.minimum(box[:, None, 2], boxes[..., 2]) -
                        jnp.maximum(box[:, None, 0], boxes[..., 0]) + 1)
  inter_h = jnp.maximum(0.0, jnp.minimum(box[:, None, 3], boxes[..., 3]) -
                        jnp.maximum(box[:, None, 1], boxes[..., 1]) + 1)
  inter = inter_w * inter_h                                         # [B, N]
  area = (box[:, 2] - box[:, 0] + 1) * (box[:, 3] - box[:, 1] + 1)  # [B]
  areas = ((boxes[..., 2] - boxes[..., 0] + 1) *
           (boxes[..., 3] - boxes[..., 1] + 1))                     # [B, N]
  return inter / (area[:, None] + areas - inter)


@functools.partial(jax.jit, static_argnames=('max_keep',))
def batched_nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array,
                iou_threshold: float = 0.3, max_keep: int = 100
                ) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of B box sets at once (e.g. every class of an image).

  Fixed sizes: pad each set to N boxes and mark the padding in `valid`.
  Keeps at most `max_keep` boxes per set (the first max_keep that `nms`
  keeps); the loop runs max_keep steps, each [B, N] wide.

  Args:
    boxes: [B, N, 4] (x1, y1, x2, y2), 1-based inclusive.
    scores: [B, N].
    valid: [B, N] bool, real boxes.
    iou_threshold: boxes with IoU > this to a kept box are suppressed.
    max_keep: the most boxes kept per set.

  Returns:
    indices int32 [B, max_keep] into N, highest score first (0 past the
    end), and kept bool [B, max_keep] marking the real entries.
  """
  boxes = boxes.astype(jnp.float32)
  num_sets, num_boxes = scores.shape
  # Stable descending order with invalid boxes last.
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), axis=1,
                      stable=True)                                   # [B, N]
  ranked_boxes = jnp.take_along_axis(boxes, order[..., None], axis=1)
  alive = jnp.take_along_axis(valid, order, axis=1)                  # [B, N]
  rows = jnp.arange(num_sets)

  def step(k, state):
    alive, indices, kept = state
    best = jnp.argmax(alive, axis=1)      # first alive = highest score, [B]
    found = alive[rows, best]                                        # [B]
    overlaps = _iou_one_to_many(ranked_boxes[rows, best], ranked_boxes)
    alive = alive & ~(overlaps > iou_threshold)
    alive = alive.at[rows, best].set(False)
    indices = indices.at[:, k].set(jnp.where(found, order[rows, best], 0))
    kept = kept.at[:, k].set(found)
    return alive, indices, kept

  init = (alive, jnp.zeros((num_sets, max_keep), jnp.int32),
          jnp.zeros((num_sets, max_keep), bool))
  _, indices, kept = jax.lax.fori_loop(0, max_keep, step, init)
  return indices, kept
