"""R-CNN's per-class detector SVMs with hard-negative mining (SPEC 4).

One pass over the trainval images in order, all classes together (as
rcnn_train.m): the first image adds all its negatives and trains; later images
add the negatives scoring above `hard_threshold` that are not cached yet; a
class is retrained once more than `retrain_limit` new negatives have arrived
and after the last image; after every retrain its cached negatives scoring
below `evict_threshold` are evicted. Positives (the class's GT boxes) are
never evicted.

Rows are identified by their index in the trainval feature table, so "not
already cached" is a set-membership test on row ids.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Optional

import numpy as np

NEGATIVE_OVERLAP = 0.3


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


@dataclasses.dataclass
class NegativeCache:
  """Cached negatives of every class: a row pool plus per-class membership."""
  row_ids: np.ndarray        # [M] global row ids, unique
  features: np.ndarray       # [M, D]
  member: np.ndarray         # [M, K] bool

  @classmethod
  def empty(cls, dim: int, num_classes: int, dtype) -> 'NegativeCache':
    return cls(np.zeros((0,), np.int64), np.zeros((0, dim), dtype),
               np.zeros((0, num_classes), bool))

  def add(self, rows: ImageRows, add_mask: np.ndarray) -> np.ndarray:
    """Adds rows where add_mask [R, K] holds and the row is not cached for k.

    Returns:
      [K] number of negatives newly added per class.
    """
    position = {int(r): i for i, r in enumerate(self.row_ids)}
    new_rows = [i for i, r in enumerate(rows.row_ids)
                if int(r) not in position and add_mask[i].any()]
    if new_rows:
      self.row_ids = np.concatenate([self.row_ids, rows.row_ids[new_rows]])
      self.features = np.concatenate([self.features, rows.features[new_rows]])
      self.member = np.concatenate(
          [self.member, np.zeros((len(new_rows), self.member.shape[1]), bool)])
      position.update({int(rows.row_ids[i]): len(self.row_ids) - len(new_rows) + j
                       for j, i in enumerate(new_rows)})
    index = np.array([position.get(int(r), -1) for r in rows.row_ids])
    found = index >= 0
    before = self.member[index[found]]
    after = before | add_mask[found]
    self.member[index[found]] = after
    return (after & ~before).sum(axis=0)

  def evict(self, classes: np.ndarray, scores: np.ndarray, threshold: float):
    """Drops class k's negatives scoring below `threshold` for k in classes."""
    self.member[:, classes] &= ~(scores[:, classes] < threshold)
    keep = self.member.any(axis=1)
    self.row_ids = self.row_ids[keep]
    self.features = self.features[keep]
    self.member = self.member[keep]


def train_with_mining(
    positives: np.ndarray, positive_labels: np.ndarray,
    images: Iterable[ImageRows], num_classes: int, train_fn: TrainFn,
    config: MiningConfig = MiningConfig(),
    on_image: Optional[Callable[[int, NegativeCache, np.ndarray], None]] = None,
    num_images: Optional[int] = None, log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray]:
  """Trains K one-vs-rest detectors with one pass of hard-negative mining.

  Args:
    positives: [P, D] scaled features of every trainval GT box.
    positive_labels: [P] class index of each GT box (difficult included).
    images: ImageRows per trainval image, in trainval order (streamed).
    num_classes: K.
    train_fn: the SVM solver (SPEC 4 objective), see TrainFn.
    config: thresholds and the retrain limit.
    on_image: called after each image with (image index, cache, retrained
      classes [K] bool); for progress and for tests of the procedure.
    num_images: for the progress line's ETA.
    log: progress sink.

  Returns:
    W [D, K] and b [K].
  """
  dim = positives.shape[1]
  weights = np.zeros((dim, num_classes), np.float32)
  biases = np.zeros((num_classes,), np.float32)
  cache = NegativeCache.empty(dim, num_classes, positives.dtype)
  pos_targets = np.where(
      positive_labels[:, None] == np.arange(num_classes)[None], 1.0, -1.0)
  pos_mask = pos_targets > 0                              # [P, K]
  added_since_train = np.zeros(num_classes, np.int64)
  images = list(images) if num_images is None else images
  total = len(images) if num_images is None else num_images
  start = time.time()

  def retrain(classes: np.ndarray) -> None:
    nonlocal weights, biases
    pool = np.concatenate([positives, cache.features])   # [P+M, D]
    targets = np.concatenate(
        [pos_targets, -np.ones(cache.member.shape, np.float32)])
    mask = np.concatenate([pos_mask, cache.member]) & classes[None]
    new_w, new_b = train_fn(pool, targets.astype(np.float32), mask)
    weights[:, classes] = np.asarray(new_w)[:, classes]
    biases[classes] = np.asarray(new_b)[classes]
    scores = cache.features @ weights + biases            # [M, K]
    cache.evict(np.flatnonzero(classes), scores, config.evict_threshold)
    added_since_train[classes] = 0

  for index, rows in enumerate(images):
    first, last = index == 0, index == total - 1
    if first:
      add_mask = rows.negative
    else:
      scores = rows.features @ weights + biases           # [R, K]
      add_mask = rows.negative & (scores > config.hard_threshold)
    added_since_train += cache.add(rows, add_mask)
    has_negatives = cache.member.any(axis=0)
    retrain_classes = has_negatives & (
        first | last | (added_since_train > config.retrain_limit))
    if retrain_classes.any():
      retrain(retrain_classes)
    if on_image is not None:
      on_image(index, cache, retrain_classes)
    if (index + 1) % max(1, total // 20) == 0 or last:
      elapsed = time.time() - start
      eta = elapsed / (index + 1) * (total - index - 1)
      log(f'mining: image {index + 1}/{total}, cache {len(cache.row_ids)} '
          f'rows, {elapsed:.0f}s elapsed, ETA {eta:.0f}s')
  return weights, biases
