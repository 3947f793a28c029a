"""Feature extraction: any CaffeNet blobs in one jitted, data-parallel pass.

An example source lists the rows to extract, grouped by image (SPEC 3, 5):
`whole_images` (each image warped as the box (1, 1, W, H)), `gt_boxes`
(every ground-truth box) and `proposal_boxes` (GT boxes then proposals,
R-CNN style). `extract_features` warps them in a background thread pool
(each image decoded once, its boxes of a batch warped in one call) while the
devices run the forward pass: `jax.jit` over a ('data',) mesh, params
replicated, the batch sharded, returning only the requested blobs so XLA
prunes the rest of the network. The last batch is padded and its padding
never written. Rows go to a `FeatureStore` in fixed row-range shards; a
rerun after a kill skips the finished shards.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from absl import logging

from cnnjax import checkpoints
from cnnjax import progress
from cnnjax import sharding
from cnnjax.data import preprocess
from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.features import store as store_lib
from cnnjax.models import caffenet

# Default shard size: rows whose largest layer takes about this many float32
# bytes (pool1 at 227: ~900 rows), so a shard buffer stays small in memory.
_SHARD_TARGET_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class ExampleSource:
  """Rows to extract, grouped by image in image order.

  Attributes:
    kind: 'whole_images', 'gt_boxes' or 'proposal_boxes' (provenance).
    images: the images, in order.
    boxes: per image, int32 [n_i, 4] boxes (x1, y1, x2, y2), 1-based; the
      rows of image i are the next n_i rows.
    rows: per-row metadata written to the store (image_index, image_id, box,
      and per kind label, difficult, is_gt), each [num_rows, ...].
  """
  kind: str
  images: tuple[VocImage, ...]
  boxes: tuple[np.ndarray, ...]
  rows: Mapping[str, np.ndarray]

  @functools.cached_property
  def image_offsets(self) -> np.ndarray:
    """int64 [num_images + 1]: rows of image i are offsets[i]:offsets[i+1]."""
    return np.concatenate([[0], np.cumsum([len(b) for b in self.boxes])])

  @property
  def num_rows(self) -> int:
    return int(self.image_offsets[-1])

  def segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
    """(image index, row start, row stop) pieces covering rows [start, stop)."""
    offsets = self.image_offsets
    first = int(np.searchsorted(offsets, start, side='right')) - 1
    pieces = []
    image_index = first
    while start < stop:
      hi = min(stop, int(offsets[image_index + 1]))
      if hi > start:
        pieces.append((image_index, start, hi))
      start, image_index = max(start, hi), image_index + 1
    return pieces

  def fingerprint(self) -> str:
    """sha256 over the kind, image ids and every box: the rows' identity."""
    digest = hashlib.sha256(self.kind.encode())
    for image, boxes in zip(self.images, self.boxes):
      digest.update(image.image_id.encode())
      digest.update(np.ascontiguousarray(boxes, np.int32).tobytes())
    return digest.hexdigest()


def _source(kind: str, images: Sequence[VocImage],
            boxes: Sequence[np.ndarray],
            extra_rows: Mapping[str, Sequence[np.ndarray]]) -> ExampleSource:
  """Assembles a source; `extra_rows` holds per-image arrays per field."""
  images = tuple(images)
  boxes = tuple(np.asarray(b, np.int32).reshape(-1, 4) for b in boxes)
  counts = [len(b) for b in boxes]
  rows = {
      'image_index': np.repeat(np.arange(len(images), dtype=np.int32), counts),
      'image_id': np.repeat(np.array([im.image_id for im in images], str),
                            counts),
      'box': (np.concatenate(boxes) if boxes
              else np.zeros((0, 4), np.int32)),
  }
  for name, per_image in extra_rows.items():
    rows[name] = np.concatenate(per_image)
  return ExampleSource(kind, images, boxes, rows)


def whole_images(images: Sequence[VocImage]) -> ExampleSource:
  """Each whole image as one row: the box (1, 1, W, H), warped (SPEC 5)."""
  boxes = [np.array([[1, 1, im.width, im.height]], np.int32) for im in images]
  return _source('whole_images', images, boxes, {})


def gt_boxes(images: Sequence[VocImage],
             include_difficult: bool = True) -> ExampleSource:
  """Every ground-truth box as one row, labelled by its class (SPEC 5, 6).

  Args:
    images: annotated images.
    include_difficult: keep boxes flagged difficult (the study does).

  Returns:
    A source with row fields image_index, image_id, box, label (index into
    VOC_CLASSES) and difficult.
  """
  keep = [np.ones(len(im.boxes), bool) if include_difficult
          else ~np.asarray(im.difficult, bool) for im in images]
  return _source(
      'gt_boxes', images, [im.boxes[k] for im, k in zip(images, keep)],
      {'label': [np.asarray(im.labels, np.int32)[k]
                 for im, k in zip(images, keep)],
       'difficult': [np.asarray(im.difficult, bool)[k]
                     for im, k in zip(images, keep)]})


def proposal_boxes(images: Sequence[VocImage],
                   proposals: Sequence[np.ndarray]) -> ExampleSource:
  """Per image its GT boxes, then its proposals (R-CNN's feature cache).

  Args:
    images: annotated images.
    proposals: per image, int32 [P_i, 4] boxes (x1, y1, x2, y2), 1-based.

  Returns:
    A source with row fields image_index, image_id, box, label (the GT
    class; -1 on proposal rows), difficult (False on proposal rows) and
    is_gt.

  Raises:
    ValueError: `proposals` does not have one entry per image.
  """
  if len(proposals) != len(images):
    raise ValueError(f'{len(proposals)} proposal arrays for {len(images)} '
                     'images')
  proposals = [np.asarray(p, np.int32).reshape(-1, 4) for p in proposals]
  num_gt = [len(im.boxes) for im in images]
  return _source(
      'proposal_boxes', images,
      [np.concatenate([im.boxes, p]) for im, p in zip(images, proposals)],
      {'label': [np.concatenate([im.labels, np.full(len(p), -1)]).astype(
          np.int32) for im, p in zip(images, proposals)],
       'difficult': [np.concatenate([im.difficult, np.zeros(len(p), bool)])
                     for im, p in zip(images, proposals)],
       'is_gt': [np.arange(n + len(p)) < n
                 for n, p in zip(num_gt, proposals)]})


@functools.lru_cache(maxsize=None)
def forward_fn(model_items: tuple, layers: tuple[str, ...],
               mesh: jax.sharding.Mesh) -> Callable:
  """The jitted data-parallel forward for one (model, layers, mesh), cached.

  Returning only `layers` lets XLA drop everything above the highest one.
  """
  model = caffenet.CaffeNet(**dict(model_items))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def forward(params, images):                       # images [B, S, S, 3]
    _, out = model.apply({'params': params}, images, train=False)
    return {name: out[name] for name in layers}

  return jax.jit(forward, in_shardings=(replicated, batch),
                 out_shardings=batch,
                 compiler_options=caffenet.compiler_options())


def _layer_shapes(model_kwargs: Mapping[str, Any], params: Any,
                  layers: Sequence[str], warp_size: int) -> dict:
  """Per-row shape of each layer at this input size (no computation)."""
  model = caffenet.CaffeNet(**model_kwargs)
  images = jax.ShapeDtypeStruct((1, warp_size, warp_size, 3), np.float32)
  _, out = jax.eval_shape(functools.partial(model.apply, train=False),
                          {'params': params}, images)
  return {name: tuple(out[name].shape[1:]) for name in layers}


def sha256_of_arrays(tree: Any) -> str:
  """A digest of a tree of arrays (names, dtypes, shapes and bytes)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f'{leaf.dtype}{leaf.shape}'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _default_shard_rows(shapes: Mapping[str, tuple], batch_size: int) -> int:
  largest = max(int(np.prod(s)) for s in shapes.values()) * 4     # bytes/row
  return max(1, _SHARD_TARGET_BYTES // (largest * batch_size)) * batch_size


def extract_features(params: Union[Any, str],
                     model_kwargs: Mapping[str, Any],
                     source: ExampleSource,
                     layers: Sequence[str],
                     out_dir: str, *,
                     batch_size: int = 256,
                     warp_size: int = 227,
                     context: int = 16,
                     mean: Optional[np.ndarray] = None,
                     encoding: Union[str, Mapping[str, str]] = 'float32',
                     shard_rows: Optional[int] = None,
                     mesh: Optional[jax.sharding.Mesh] = None,
                     num_workers: int = 4,
                     metadata: Optional[Mapping[str, Any]] = None
                     ) -> store_lib.FeatureStore:
  """Extracts `layers` for every row of `source` into a feature store.

  Resumable: rerun with the same arguments after a kill and only the
  unfinished shards are computed; other arguments in the same `out_dir`
  raise rather than mix two extractions.

  Args:
    params: CaffeNet params, or a checkpoint (workdir or manager directory)
      restored with `checkpoints.load_params` (latest step).
    model_kwargs: CaffeNet constructor arguments (num_classes, width).
    source: rows to extract (`whole_images`, `gt_boxes`, `proposal_boxes`).
    layers: blob names (caffenet.BLOBS), e.g. caffenet.STUDY_LAYERS.
    out_dir: the store directory.
    batch_size: global batch, a multiple of the mesh size.
    warp_size: square network input size (227 for the real net).
    context: context padding of the warp, in warped pixels (SPEC 3).
    mean: the mean to subtract as `regions.warp_regions` takes it: a BGR
      mean image [256, 256, 3] (its centre crop is used), per-channel [3],
      or None for the per-channel ImageNet means.
    encoding: one of store.ENCODINGS for all layers, or layer -> encoding.
    shard_rows: rows per shard, a multiple of batch_size; None picks about
      256 MB of float32 per shard for the largest layer.
    mesh: a ('data',) mesh; None uses every device.
    num_workers: warp threads.
    metadata: extra JSON-able provenance for the manifest (e.g. the config).

  Returns:
    The finalized FeatureStore.

  Raises:
    ValueError: unknown layers, encodings, or sizes that do not divide.
  """
  if jax.process_count() > 1:
    raise ValueError('extract_features runs in one process (it writes the '
                     'store itself); use one process with all local devices')
  layers = tuple(layers)
  unknown = [name for name in layers if name not in caffenet.BLOBS]
  if unknown or not layers:
    raise ValueError(f'unknown layers {unknown or "(none)"}; valid: '
                     f'{", ".join(caffenet.BLOBS)}')
  encodings = ({name: encoding for name in layers}
               if isinstance(encoding, str) else dict(encoding))
  if set(encodings) != set(layers):
    raise ValueError(f'encoding given for {sorted(encodings)}, layers are '
                     f'{sorted(layers)}')
  if source.num_rows == 0:
    raise ValueError(f'source {source.kind!r} has no rows to extract')
  mesh = mesh or sharding.data_mesh()
  num_devices = mesh.shape['data']
  if batch_size % num_devices:
    raise ValueError(f'batch_size {batch_size} is not a multiple of the '
                     f'{num_devices} devices of the mesh')

  checkpoint = params if isinstance(params, str) else None
  if checkpoint is not None:
    params = checkpoints.load_params(checkpoint)
  params = jax.tree_util.tree_map(np.asarray, params)
  model_kwargs = dict(model_kwargs)
  shapes = _layer_shapes(model_kwargs, params, layers, warp_size)
  shard_rows = shard_rows or _default_shard_rows(shapes, batch_size)
  if shard_rows % batch_size:
    raise ValueError(f'shard_rows {shard_rows} is not a multiple of '
                     f'batch_size {batch_size}')

  provenance = {
      'model': model_kwargs, 'checkpoint': checkpoint,
      'params_sha256': sha256_of_arrays(params),
      'source': {'kind': source.kind, 'num_images': len(source.images),
                 'sha256': source.fingerprint()},
      'warp_size': warp_size, 'context': context,
      'mean_sha256': sha256_of_arrays(preprocess.crop_mean(mean, warp_size)),
      'layers': {name: encodings[name] for name in layers},
      'extra': dict(metadata or {}),
  }
  provenance['config_hash'] = hashlib.sha256(
      json.dumps(provenance, sort_keys=True, default=str).encode()).hexdigest()
  writer = store_lib.FeatureStoreWriter(
      out_dir, {name: (shapes[name], encodings[name]) for name in layers},
      provenance, num_rows=source.num_rows, shard_rows=shard_rows)
  todo = sorted(set(range(writer.num_shards)) - set(writer.finished_shards()))
  logging.info('extracting %s for %d %s rows into %s: %d of %d shards to do',
               ', '.join(layers), source.num_rows, source.kind, out_dir,
               len(todo), writer.num_shards)

  # Batches never straddle shards (shard_rows % batch_size == 0).
  batches = [(k, row, min(row + batch_size, stop))
             for k in todo for start, stop in [writer.shard_range(k)]
             for row in range(start, stop, batch_size)]
  forward = forward_fn(tuple(sorted(model_kwargs.items())), layers, mesh)
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data'))
  device_params = jax.device_put(params, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  line = progress.Progress(f'extract {source.kind}',
                           sum(stop - row for _, row, stop in batches), 'rows',
                           every_s=30.0)
  shard_buffers: dict[int, dict[str, np.ndarray]] = {}
  write_pool = concurrent.futures.ThreadPoolExecutor(1)
  writes: list[concurrent.futures.Future] = []

  def collect(k: int, row: int, row_stop: int, out: Mapping) -> None:
    """Keeps a finished batch's real rows; hands full shards to the writer."""
    start, stop = writer.shard_range(k)
    buffers = shard_buffers.setdefault(k, {
        name: np.empty((stop - start,) + shapes[name], np.float32)
        for name in layers})
    for name in layers:               # padded rows [row_stop - row:] dropped
      buffers[name][row - start:row_stop - start] = np.asarray(
          out[name])[:row_stop - row]
    line.update(row_stop - row)
    if row_stop == stop:
      if writes:
        writes[-1].result()           # one shard in flight bounds memory
      writes.append(write_pool.submit(
          writer.write_shard, k, shard_buffers.pop(k),
          {name: values[start:stop] for name, values in source.rows.items()}))

  warped = _warped_batches(source, [b[1:] for b in batches], batch_size,
                           warp_size, context, mean, num_workers)
  try:
    in_flight = None
    for batch, images in zip(batches, warped):
      out = forward(device_params, jax.make_array_from_process_local_data(
          batch_sharding, images))     # dispatched: runs while we collect
      if in_flight is not None:
        collect(*in_flight)
      in_flight = (*batch, out)
    if in_flight is not None:
      collect(*in_flight)
    for write in writes:
      write.result()
  finally:
    warped.close()                    # stops the warp threads on errors too
    write_pool.shutdown()
  return writer.finalize()


def _warped_batches(source: ExampleSource, batches: Sequence[tuple[int, int]],
                    batch_size: int, warp_size: int, context: int,
                    mean: Optional[np.ndarray],
                    num_workers: int) -> Iterator[np.ndarray]:
  """Warped row batches in order, prepared ahead by a thread pool.

  Each batch is zero-padded to `batch_size`; every image of a batch is
  decoded once (shared with neighbouring batches through a small cache) and
  its boxes warped in one `warp_regions` call.

  Yields:
    float32 [batch_size, warp_size, warp_size, 3] per (start, stop) batch.
  """
  decoded = regions.DecodedImageCache(
      source.images, capacity=2 * num_workers + 2)

  def warp_batch(start: int, stop: int) -> np.ndarray:
    batch = np.zeros((batch_size, warp_size, warp_size, 3), np.float32)
    for image_index, lo, hi in source.segments(start, stop):
      first = int(source.image_offsets[image_index])
      batch[lo - start:hi - start] = regions.warp_regions(
          decoded.get(image_index),
          source.boxes[image_index][lo - first:hi - first],
          size=warp_size, context=context, mean=mean)
    return batch                                        # [B, S, S, 3]

  pool = concurrent.futures.ThreadPoolExecutor(num_workers)
  pending: collections.deque = collections.deque()
  todo = iter(batches)
  try:
    while True:
      while len(pending) < num_workers + 2:   # bounded lookahead
        rows = next(todo, None)
        if rows is None:
          break
        pending.append(pool.submit(warp_batch, *rows))
      if not pending:
        return
      yield pending.popleft().result()
  finally:
    pool.shutdown(cancel_futures=True)
