"""Hard-negative mining follows SPEC 4 / rcnn_train.m step by step."""

import numpy as np

from cnnjax.detection import mining


def _ridge_train_fn(features, targets, mask):
  """A deterministic stand-in solver: per-class ridge on the masked rows."""
  dim, k = features.shape[1], targets.shape[1]
  w = np.zeros((dim, k), np.float32)
  b = np.zeros((k,), np.float32)
  for c in range(k):
    x = features[mask[:, c]]
    y = targets[mask[:, c], c]
    if len(x) == 0:
      continue
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    sol = np.linalg.solve(xb.T @ xb + 0.1 * np.eye(dim + 1), xb.T @ y)
    w[:, c], b[c] = sol[:-1], sol[-1]
  return w, b


def _reference(positives, pos_labels, images, k, config):
  """Per-class loop transcription of rcnn_train.m (one hard epoch)."""
  w = np.zeros((positives.shape[1], k), np.float32)
  b = np.zeros((k,), np.float32)
  caches = [dict() for _ in range(k)]      # row id -> feature
  added = [0] * k
  history = []
  for i, rows in enumerate(images):
    first, last = i == 0, i == len(images) - 1
    for c in range(k):
      for r, (rid, feat) in enumerate(zip(rows.row_ids, rows.features)):
        if not rows.negative[r, c]:
          continue
        if not first and feat @ w[:, c] + b[c] <= config.hard_threshold:
          continue
        if int(rid) not in caches[c]:
          caches[c][int(rid)] = feat
          added[c] += 1
      if (first or last or added[c] > config.retrain_limit) and caches[c]:
        xpos = positives[pos_labels == c]
        xneg = np.stack(list(caches[c].values()))
        x = np.concatenate([xpos, xneg])
        y = np.concatenate([np.ones(len(xpos)), -np.ones(len(xneg))])
        wc, bc = _ridge_train_fn(x, y[:, None], np.ones((len(x), 1), bool))
        w[:, c], b[c] = wc[:, 0], bc[0]
        added[c] = 0
        caches[c] = {rid: f for rid, f in caches[c].items()
                     if f @ w[:, c] + b[c] >= config.evict_threshold}
    history.append([sorted(cache) for cache in caches])
  return w, b, history


def _problem(seed=0, num_images=6, rows_per_image=12, dim=5, k=3):
  rng = np.random.default_rng(seed)
  positives = rng.normal(1.0, 1.0, (9, dim)).astype(np.float32)
  pos_labels = np.arange(9) % k
  images, next_id = [], 0
  for _ in range(num_images):
    ids = np.arange(next_id, next_id + rows_per_image)
    next_id += rows_per_image
    images.append(mining.ImageRows(
        row_ids=ids,
        features=rng.normal(0.0, 1.0, (rows_per_image, dim)).astype(np.float32),
        negative=rng.random((rows_per_image, k)) < 0.7))
  return positives, pos_labels, images


def test_cache_after_each_image_matches_rcnn_transcription():
  config = mining.MiningConfig(hard_threshold=-1.0001, evict_threshold=-1.2,
                               retrain_limit=4)
  positives, pos_labels, images = _problem()
  ref_w, ref_b, ref_history = _reference(positives, pos_labels, images, 3,
                                         config)
  history = []

  def record(index, cache, retrained):
    history.append([sorted(int(r) for r in cache.row_ids[cache.member[:, c]])
                    for c in range(3)])

  w, b = mining.train_with_mining(positives, pos_labels, images, 3,
                                  _ridge_train_fn, config, on_image=record)
  assert history == ref_history
  np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(b, ref_b, rtol=1e-4, atol=1e-5)


def test_first_image_adds_all_negatives_and_trains():
  positives, pos_labels, images = _problem(seed=1)
  seen = {}

  def record(index, cache, retrained):
    if index == 0:
      seen['retrained'] = retrained.copy()
      seen['rows'] = [set(cache.row_ids[cache.member[:, c]].tolist())
                      for c in range(3)]

  mining.train_with_mining(positives, pos_labels, images, 3, _ridge_train_fn,
                           mining.MiningConfig(evict_threshold=-1e9),
                           on_image=record)
  first = images[0]
  for c in range(3):
    assert seen['rows'][c] == set(first.row_ids[first.negative[:, c]].tolist())
  assert seen['retrained'].all()


def test_retrain_only_after_limit_and_last_image():
  positives, pos_labels, images = _problem(seed=2, num_images=5)
  retrain_log = []
  mining.train_with_mining(
      positives, pos_labels, images, 3, _ridge_train_fn,
      mining.MiningConfig(hard_threshold=-1e9, evict_threshold=-1e9,
                          retrain_limit=10 ** 6),
      on_image=lambda i, cache, r: retrain_log.append(r.copy()))
  # Never over the limit: train on the first image and after the last only.
  assert [bool(r.any()) for r in retrain_log] == [True, False, False, False,
                                                  True]


def test_cache_rows_stay_aligned_through_adds_repeats_and_evictions():
  rng = np.random.default_rng(4)
  cache = mining.NegativeCache(dim=3, num_classes=2, dtype=np.float32)
  features = {}                                    # row id -> feature row
  members = set()                                  # (row id, class)

  def image(ids):
    rows = mining.ImageRows(
        row_ids=np.array(ids), features=rng.normal(size=(len(ids), 3)).astype(
            np.float32), negative=rng.random((len(ids), 2)) < 0.6)
    for r, f in zip(ids, rows.features):
      features.setdefault(r, f)
    return rows

  def add(rows):
    mask = rows.negative
    added = cache.add(rows, mask)
    new = {(int(r), c) for i, r in enumerate(rows.row_ids) for c in range(2)
           if mask[i, c]} - members
    members.update(new)
    np.testing.assert_array_equal(added, [sum(1 for _, c in new if c == k)
                                          for k in range(2)])

  for ids in ([5, 6, 7, 9], [12, 13], [6, 9, 30], [1, 2, 40, 41, 42, 43]):
    add(image(ids))                  # [6, 9]: seen again; [1, 2]: earlier ids
  scores = rng.normal(size=(cache.size, 1))       # class 1's scores
  position = {int(r): i for i, r in enumerate(cache.row_ids)}
  cache.evict(np.array([1]), scores, 0.0)
  members = {(r, c) for r, c in members
             if c != 1 or scores[position[r], 0] >= 0.0}
  # The cache as a set of (row, class) pairs, its rows sorted and unique,
  # every row's feature the one it was added with.
  assert {(int(r), c) for r, m in zip(cache.row_ids, cache.member)
          for c in range(2) if m[c]} == members
  assert list(cache.row_ids) == sorted(set(cache.row_ids.tolist()))
  assert cache.member.any(axis=1).all()
  for r, f in zip(cache.row_ids, cache.features):
    np.testing.assert_array_equal(f, features[int(r)])
