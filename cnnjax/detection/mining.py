"""R-CNN's per-class detector SVMs with hard-negative mining (SPEC 4).

One pass over the trainval images in order, all classes together (as
rcnn_train.m): the first image adds all its negatives and trains; later images
add the negatives scoring above `hard_threshold` that are not cached yet; a
class is retrained once more than `retrain_limit` new negatives have arrived
and after the last image; after every retrain its cached negatives scoring
below `evict_threshold` are evicted. Positives (the class's GT boxes) are
never evicted.

Rows are identified by their index in the trainval feature table, so "not
already cached" is a membership test on row ids. The classes share one cache
buffer: a row is stored once, with a flag per class whose cache holds it, and
every class of an image is scored by one matmul.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Optional

from absl import logging
import numpy as np

from cnnjax import progress as progress_lib

NEGATIVE_OVERLAP = 0.3
_MIN_PADDED_ROWS = 256
# Training pools start larger: a solver compile costs seconds, an epoch over
# a few thousand padding rows microseconds (they are never visited).
_MIN_POOL_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class MiningConfig:
  hard_threshold: float = -1.0001
  evict_threshold: float = -1.2
  retrain_limit: int = 2000


@dataclasses.dataclass
class ImageRows:
  """The trainval rows of one image, as the miner needs them.

  Attributes:
    row_ids: [R] global row ids (cache keys).
    features: [R, D] scaled features.
    negative: [R, K] bool, row is a negative for class k (IoU < 0.3 to every
      GT box of class k in its image; other-class GT rows included).
  """
  row_ids: np.ndarray
  features: np.ndarray
  negative: np.ndarray


# train_fn(features [M, D], targets [M, K] in {-1,+1}, sample_mask [M, K]
#          bool) -> (W [D, K], b [K]); masked-out samples do not count.
TrainFn = Callable[[np.ndarray, np.ndarray, np.ndarray],
                   tuple[np.ndarray, np.ndarray]]


def padded_rows(num: int, minimum: int = _MIN_PADDED_ROWS) -> int:
  """`num` rounded up to a power of two (at least `minimum`).

  Arrays of a varying number of rows (a training pool, an image's
  proposals) are padded to this size before jitted code sees them, so it
  compiles once per doubling rather than once per size. Training pools are
  padded with rows that belong to no problem.
  """
  return max(minimum, 1 << (max(num, 1) - 1).bit_length())


class NegativeCache:
  """Cached negatives of every class: one row buffer, a member flag per class.

  Rows are kept sorted by row id (lookups are binary searches) in a buffer
  that doubles when full, so adding an image costs its own rows, not a copy
  of the cache.
  """

  def __init__(self, dim: int, num_classes: int, dtype):
    self._row_ids = np.zeros((0,), np.int64)            # [capacity]
    self._features = np.zeros((0, dim), dtype)          # [capacity, D]
    self._member = np.zeros((0, num_classes), bool)     # [capacity, K]
    self.size = 0

  @property
  def row_ids(self) -> np.ndarray:
    """[M] global row ids of the cached rows, ascending."""
    return self._row_ids[:self.size]

  @property
  def features(self) -> np.ndarray:
    """[M, D] features of the cached rows."""
    return self._features[:self.size]

  @property
  def member(self) -> np.ndarray:
    """[M, K] bool, row m is in class k's cache."""
    return self._member[:self.size]

  def _append(self, row_ids: np.ndarray, features: np.ndarray) -> None:
    """Appends rows not cached yet (no member flags), keeping ids sorted."""
    needed = self.size + len(row_ids)
    if needed > len(self._row_ids):
      capacity = max(needed, 2 * len(self._row_ids))
      grow = capacity - len(self._row_ids)
      self._row_ids = np.concatenate([self._row_ids,
                                      np.zeros(grow, np.int64)])
      self._features = np.concatenate(
          [self._features, np.zeros((grow,) + self._features.shape[1:],
                                    self._features.dtype)])
      self._member = np.concatenate(
          [self._member, np.zeros((grow, self._member.shape[1]), bool)])
    stop = self.size + len(row_ids)
    self._row_ids[self.size:stop] = row_ids
    self._features[self.size:stop] = features
    self._member[self.size:stop] = False
    if self.size and row_ids[0] < self._row_ids[self.size - 1]:
      # Rows of an earlier id (an image seen again): restore the order.
      order = np.argsort(self._row_ids[:stop], kind='stable')
      self._row_ids[:stop] = self._row_ids[order]
      self._features[:stop] = self._features[order]
      self._member[:stop] = self._member[order]
    self.size = stop

  def _positions(self, row_ids: np.ndarray) -> np.ndarray:
    """[R] buffer position of each row id, -1 where not cached."""
    if not self.size:
      return np.full(len(row_ids), -1)
    where = np.minimum(np.searchsorted(self.row_ids, row_ids), self.size - 1)
    return np.where(self.row_ids[where] == row_ids, where, -1)

  def add(self, rows: ImageRows, add_mask: np.ndarray) -> np.ndarray:
    """Adds rows where add_mask [R, K] holds and the row is not cached for k.

    Returns:
      [K] number of negatives newly added per class.
    """
    row_ids = np.asarray(rows.row_ids, np.int64)
    wanted = add_mask.any(axis=1)                                   # [R]
    new = wanted & (self._positions(row_ids) < 0)
    if new.any():
      order = np.argsort(row_ids[new], kind='stable')
      self._append(row_ids[new][order], rows.features[new][order])
    index = self._positions(row_ids)                                # [R]
    found = index >= 0
    before = self._member[index[found]]                             # [F, K]
    after = before | add_mask[found]
    self._member[index[found]] = after
    return (after & ~before).sum(axis=0)

  def evict(self, classes: np.ndarray, scores: np.ndarray, threshold: float):
    """Drops class k's negatives scoring below `threshold` for k in classes.

    Args:
      classes: [C] class indices just retrained.
      scores: [M, C] scores of the cached rows by those classes.
      threshold: the eviction threshold.
    """
    member = self.member
    member[:, classes] &= ~(scores < threshold)
    keep = np.flatnonzero(member.any(axis=1))
    if len(keep) == self.size:
      return
    num = len(keep)
    self._row_ids[:num] = self._row_ids[keep]
    self._features[:num] = self._features[keep]
    self._member[:num] = self._member[keep]
    self.size = num


def train_with_mining(
    positives: np.ndarray, positive_labels: np.ndarray,
    images: Iterable[ImageRows], num_classes: int, train_fn: TrainFn,
    config: MiningConfig = MiningConfig(),
    on_image: Optional[Callable[[int, NegativeCache, np.ndarray], None]] = None,
    num_images: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Trains K one-vs-rest detectors with one pass of hard-negative mining.

  Args:
    positives: [P, D] scaled features of every trainval GT box.
    positive_labels: [P] class index of each GT box (difficult included).
    images: ImageRows per trainval image, in trainval order (streamed).
    num_classes: K.
    train_fn: the SVM solver (SPEC 4 objective), see TrainFn. It solves one
      class at a time (one problem over the class's positives and cached
      negatives, plus padding rows that are masked out): the classes'
      caches barely overlap, so a joint solve would mostly step through
      examples outside each problem.
    config: thresholds and the retrain limit.
    on_image: called after each image with (image index, cache, retrained
      classes [K] bool); for progress and for tests of the procedure.
    num_images: for the progress line's ETA.

  Returns:
    W [D, K] and b [K].
  """
  dim = positives.shape[1]
  weights = np.zeros((dim, num_classes), np.float32)
  biases = np.zeros((num_classes,), np.float32)
  cache = NegativeCache(dim, num_classes, positives.dtype)
  added_since_train = np.zeros(num_classes, np.int64)
  images = list(images) if num_images is None else images
  total = len(images) if num_images is None else num_images
  progress = progress_lib.Progress('hard-negative mining', total, 'images')
  solve_seconds, num_retrains = 0.0, 0

  def retrain(classes: np.ndarray) -> None:
    nonlocal solve_seconds, num_retrains
    num_retrains += int(classes.sum())
    for k in np.flatnonzero(classes):
      # Class k alone: its positives and its cached negatives (padded).
      class_positives = positives[positive_labels == k]
      negatives = cache.features[cache.member[:, k]]
      num_k = len(class_positives)
      num = num_k + len(negatives)
      rows = padded_rows(num, _MIN_POOL_ROWS)
      pool = np.zeros((rows, dim), positives.dtype)                # [N, D]
      pool[:num_k] = class_positives
      pool[num_k:num] = negatives
      targets = np.where(np.arange(rows) < num_k, 1.0, -1.0).astype(
          np.float32)[:, None]                                     # [N, 1]
      mask = (np.arange(rows) < num)[:, None]                      # [N, 1]
      solve_start = time.time()
      new_w, new_b = train_fn(pool, targets, mask)
      weights[:, k] = np.asarray(new_w)[:, 0]
      biases[k] = np.asarray(new_b)[0]
      solve_seconds += time.time() - solve_start
    retrained = np.flatnonzero(classes)
    scores = cache.features @ weights[:, retrained] + biases[retrained]
    cache.evict(retrained, scores, config.evict_threshold)       # [M, C]
    added_since_train[classes] = 0

  for index, rows in enumerate(images):
    first, last = index == 0, index == total - 1
    if first:
      add_mask = rows.negative
    else:
      scores = rows.features @ weights + biases                    # [R, K]
      add_mask = rows.negative & (scores > config.hard_threshold)
    added_since_train += cache.add(rows, add_mask)
    has_negatives = cache.member.any(axis=0)
    retrain_classes = has_negatives & (
        first | last | (added_since_train > config.retrain_limit))
    if retrain_classes.any():
      retrain(retrain_classes)
    if on_image is not None:
      on_image(index, cache, retrain_classes)
    progress.update()
  logging.info('mining: %d retrains of a class, %.0fs in the solver; %d '
               'cached negatives at the end', num_retrains, solve_seconds,
               cache.size)
  return weights, biases
