"""The feature store: per-layer, row-sharded feature arrays on disk.

Format (one directory per store):

  writer.json                 settings a resumed writer must match
  <layer>/<shard:05d>.npy     rows [start, stop) of one layer, encoded
  shards/<shard:05d>.npz      per-row metadata of a shard; its presence marks
                              the shard finished (written after the arrays)
  rows/<field>.npy            per-row metadata of the whole store (finalize)
  manifest.json               layers, shard list, row fields (written last)

Why `.npy` row shards with a JSON manifest: a shard is memory-mapped with
plain numpy (`np.load(mmap_mode='r')`), so analyses stream row chunks of a
layer that does not fit in memory (VOC07 test pool1: 15K boxes x 69,984
values) and any tool reads the files without this package; a shard is a
fixed row range, which makes it the unit of resumable extraction; and it
needs no dependency beyond numpy (zarr or tensorstore would add a format
only a library can read, array_record has no random row access as arrays).

Encodings: `float32`; `float16` (half the size, exact for float16 values);
`binary` (`x > 0` packed along the flattened feature axis with
`np.packbits`: 32x smaller than float32, round-trips to exactly `x > 0`;
the study's `bin` ablation needs nothing more).

Every file is written under a temporary name and renamed into place, so a
killed writer leaves either a complete file or a temporary one that the next
writer removes and every reader ignores. One writer per directory at a time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

from cnnjax import config_lib

ENCODINGS = ('float32', 'float16', 'binary')
FORMAT_NAME = 'cnnjax.feature_store'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
WRITER_SPEC = 'writer.json'
_SHARD_MARKERS = 'shards'
_ROW_FIELDS = 'rows'
_TMP_TAG = '.tmp'


@dataclasses.dataclass(frozen=True)
class LayerFormat:
  """How one layer's rows are stored.

  Attributes:
    shape: the per-row feature shape, e.g. (6, 6, 256) for pool5.
    encoding: one of ENCODINGS.
  """
  shape: tuple[int, ...]
  encoding: str

  def __post_init__(self):
    if self.encoding not in ENCODINGS:
      raise ValueError(f'unknown feature encoding {self.encoding!r}; valid: '
                       f'{", ".join(ENCODINGS)}')
    object.__setattr__(self, 'shape', tuple(int(d) for d in self.shape))

  @property
  def feature_size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def stored_shape(self) -> tuple[int, ...]:
    """Per-row shape on disk (binary: packed bytes of the flat feature)."""
    if self.encoding == 'binary':
      return (math.ceil(self.feature_size / 8),)
    return self.shape

  @property
  def stored_dtype(self) -> np.dtype:
    return np.dtype({'float32': np.float32, 'float16': np.float16,
                     'binary': np.uint8}[self.encoding])

  @property
  def natural_dtype(self) -> np.dtype:
    """The dtype `decode` returns when no dtype is asked for."""
    return np.dtype(bool) if self.encoding == 'binary' else self.stored_dtype

  def encode(self, features: np.ndarray) -> np.ndarray:
    """[n, *shape] features -> [n, *stored_shape] as stored."""
    features = np.asarray(features)
    if features.shape[1:] != self.shape:
      raise ValueError(f'features of shape {features.shape} do not match the '
                       f'layer shape [n, {", ".join(map(str, self.shape))}]')
    if self.encoding == 'binary':
      flat = features.reshape(features.shape[0], -1) > 0          # [n, D]
      return np.packbits(flat, axis=1)                            # [n, D/8]
    return features.astype(self.stored_dtype)

  def decode(self, stored: np.ndarray,
             dtype: Optional[np.dtype] = np.float32) -> np.ndarray:
    """[n, *stored_shape] -> [n, *shape] in `dtype` (None: natural dtype)."""
    dtype = self.natural_dtype if dtype is None else np.dtype(dtype)
    n = stored.shape[0]
    if self.encoding == 'binary':
      bits = np.unpackbits(np.asarray(stored), axis=1,
                           count=self.feature_size)               # [n, D]
      return bits.reshape((n,) + self.shape).astype(dtype)
    return np.asarray(stored, dtype=dtype)

  def to_json(self) -> dict:
    return {'shape': list(self.shape), 'encoding': self.encoding}


def _as_layer_format(value: Any) -> LayerFormat:
  if isinstance(value, LayerFormat):
    return value
  if isinstance(value, Mapping):
    return LayerFormat(tuple(value['shape']), value['encoding'])
  shape, encoding = value
  return LayerFormat(tuple(shape), encoding)


def _tmp_name(path: str) -> str:
  return f'{path}{_TMP_TAG}{os.getpid()}'


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
  tmp = _tmp_name(path)
  with open(tmp, 'wb') as f:
    np.save(f, array)
  os.replace(tmp, path)


def _save_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  tmp = _tmp_name(path)
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'corrupt feature store file {path}: {e}') from e


def _json_normalised(payload: Any) -> Any:
  """The value as it reads back from JSON (tuples -> lists, numpy -> str)."""
  return json.loads(json.dumps(payload, sort_keys=True, default=str))


def _shard_file(layer: str, index: int) -> str:
  return os.path.join(layer, f'{index:05d}.npy')


def _marker_file(index: int) -> str:
  return os.path.join(_SHARD_MARKERS, f'{index:05d}.npz')


def _row_array(name: str, values: Any) -> np.ndarray:
  array = np.asarray(values)
  if array.dtype == object:  # e.g. a list of python strings of mixed length
    array = array.astype(str)
  if array.dtype == object or array.ndim == 0:
    raise ValueError(f'row field {name!r} must be an array with one entry '
                     f'per row, got {array.dtype} of shape {array.shape}')
  return array


class FeatureStoreWriter:
  """Writes a store shard by shard; resumes where a killed writer stopped.

  Shard `k` holds rows [k * shard_rows, min((k + 1) * shard_rows, num_rows)).
  Reopening a directory with the same settings keeps its finished shards
  (`finished_shards()`); different settings raise instead of mixing two
  extractions in one store.
  """

  def __init__(self, directory: str,
               layers: Mapping[str, Any],
               metadata: Optional[Mapping[str, Any]] = None, *,
               num_rows: int, shard_rows: int):
    """Opens (or resumes) a store.

    Args:
      directory: the store directory (created if needed).
      layers: name -> LayerFormat or (per-row shape, encoding).
      metadata: JSON-able provenance (source checkpoint, config hash, ...);
        a resumed writer must be given the same.
      num_rows: total rows of the store.
      shard_rows: rows per shard (the last shard may be shorter).

    Raises:
      ValueError: an unknown encoding, a bad size, or a directory written
        with other settings (naming its writer.json).
    """
    if num_rows < 1 or shard_rows < 1:
      raise ValueError(f'num_rows ({num_rows}) and shard_rows ({shard_rows}) '
                       'must be positive')
    self.directory = os.path.abspath(directory)
    self.layers = {name: _as_layer_format(fmt) for name, fmt in layers.items()}
    if not self.layers:
      raise ValueError('a feature store needs at least one layer')
    self.metadata = dict(metadata or {})
    self.num_rows = int(num_rows)
    self.shard_rows = int(shard_rows)
    self.num_shards = math.ceil(self.num_rows / self.shard_rows)
    for sub in [_SHARD_MARKERS, *self.layers]:
      os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
    self._remove_temporaries()
    self._check_or_write_spec()

  def _spec(self) -> dict:
    return _json_normalised({
        'format': FORMAT_NAME, 'version': FORMAT_VERSION,
        'layers': {n: f.to_json() for n, f in self.layers.items()},
        'num_rows': self.num_rows, 'shard_rows': self.shard_rows,
        'metadata': self.metadata})

  def _check_or_write_spec(self) -> None:
    path = os.path.join(self.directory, WRITER_SPEC)
    spec = self._spec()
    if not os.path.exists(path):
      config_lib.write_json_atomic(path, spec)
      return
    existing = _read_json(path)
    if existing != spec:
      differing = sorted(k for k in set(spec) | set(existing)
                         if spec.get(k) != existing.get(k))
      if 'metadata' in differing:
        meta, old = spec['metadata'], existing.get('metadata', {})
        differing += [f'metadata.{k}' for k in sorted(set(meta) | set(old))
                      if meta.get(k) != old.get(k)]
      raise ValueError(
          f'{path} was written with other settings (differing: '
          f'{", ".join(differing)}); use a fresh directory or delete it')

  def _remove_temporaries(self) -> None:
    """Deletes the half-written files a killed writer left behind."""
    for root, _, files in os.walk(self.directory):
      for name in files:
        if _TMP_TAG in name:
          os.remove(os.path.join(root, name))

  def shard_range(self, index: int) -> tuple[int, int]:
    """The row range [start, stop) of shard `index`."""
    if not 0 <= index < self.num_shards:
      raise IndexError(f'shard {index} out of range [0, {self.num_shards})')
    start = index * self.shard_rows
    return start, min(start + self.shard_rows, self.num_rows)

  def finished_shards(self) -> list[int]:
    """Indices of the shards completely written (their marker exists)."""
    return [k for k in range(self.num_shards) if os.path.exists(
        os.path.join(self.directory, _marker_file(k)))]

  def write_shard(self, index: int, features: Mapping[str, np.ndarray],
                  rows: Mapping[str, Any]) -> None:
    """Writes one shard: every layer's array, then its row metadata.

    Args:
      index: the shard index.
      features: layer -> [n, *shape] decoded features of the shard's rows.
      rows: field -> per-row values (n entries each; e.g. image_id, label,
        box [n, 4]); every shard must carry the same fields.

    Raises:
      ValueError: missing/unknown layers or a wrong number of rows.
    """
    start, stop = self.shard_range(index)
    n = stop - start
    if set(features) != set(self.layers):
      raise ValueError(f'shard {index}: got layers {sorted(features)}, the '
                       f'store has {sorted(self.layers)}')
    rows = {name: _row_array(name, values) for name, values in rows.items()}
    for name, array in [*features.items(), *rows.items()]:
      if len(array) != n:
        raise ValueError(f'shard {index} holds rows [{start}, {stop}) but '
                         f'{name!r} has {len(array)} rows')
    for name, array in features.items():
      _save_npy_atomic(os.path.join(self.directory, _shard_file(name, index)),
                       self.layers[name].encode(array))
    _save_npz_atomic(os.path.join(self.directory, _marker_file(index)), rows)

  def finalize(self) -> 'FeatureStore':
    """Gathers the row metadata and writes the manifest (last).

    Raises:
      RuntimeError: some shard is not written yet (names them).
    """
    missing = sorted(set(range(self.num_shards)) - set(self.finished_shards()))
    if missing:
      raise RuntimeError(
          f'cannot finalize {self.directory}: {len(missing)} of '
          f'{self.num_shards} shards unwritten (first: {missing[:5]})')
    per_shard = []
    for k in range(self.num_shards):
      with np.load(os.path.join(self.directory, _marker_file(k))) as npz:
        per_shard.append({name: npz[name] for name in npz.files})
    fields = sorted(per_shard[0])
    for k, shard_rows in enumerate(per_shard):
      if sorted(shard_rows) != fields:
        raise ValueError(f'shard {k} of {self.directory} has row fields '
                         f'{sorted(shard_rows)}, shard 0 has {fields}')
    os.makedirs(os.path.join(self.directory, _ROW_FIELDS), exist_ok=True)
    for name in fields:
      _save_npy_atomic(
          os.path.join(self.directory, _ROW_FIELDS, f'{name}.npy'),
          np.concatenate([shard_rows[name] for shard_rows in per_shard]))
    manifest = dict(self._spec())
    manifest['shards'] = [
        {'index': k, 'rows': list(self.shard_range(k)),
         'files': {name: _shard_file(name, k) for name in self.layers}}
        for k in range(self.num_shards)]
    manifest['row_fields'] = {
        name: os.path.join(_ROW_FIELDS, f'{name}.npy') for name in fields}
    config_lib.write_json_atomic(os.path.join(self.directory, MANIFEST),
                                 manifest)
    return FeatureStore.open(self.directory)


def _normalise_rows(rows: Any, num_rows: int) -> Optional[np.ndarray]:
  """None -> None (all rows); a slice or indices -> int64 indices."""
  if rows is None:
    return None
  if isinstance(rows, slice):
    return np.arange(*rows.indices(num_rows), dtype=np.int64)
  indices = np.asarray(rows)
  if indices.dtype == bool:
    if indices.shape != (num_rows,):
      raise IndexError(f'boolean row mask of shape {indices.shape}, expected '
                       f'({num_rows},)')
    return np.flatnonzero(indices)
  indices = indices.astype(np.int64).reshape(-1)
  indices = np.where(indices < 0, indices + num_rows, indices)
  if indices.size and (indices.min() < 0 or indices.max() >= num_rows):
    raise IndexError(f'row index out of range for {num_rows} rows')
  return indices


class LayerView:
  """One layer of a store: memory-mapped shards, decoded on access.

  Indexing (`view[rows]`) and `read` decode only the rows asked for, so a
  view over a layer far larger than memory costs nothing until read.
  """

  def __init__(self, directory: str, name: str, layer_format: LayerFormat,
               shards: Sequence[tuple[int, int, str]], num_rows: int):
    self.name = name
    self.format = layer_format
    self.num_rows = num_rows
    self._directory = directory
    self._shards = list(shards)                  # (start, stop, relative path)
    self._starts = np.array([s[0] for s in self._shards], np.int64)
    self._memmaps: dict[int, np.ndarray] = {}

  @property
  def shape(self) -> tuple[int, ...]:
    """The full decoded shape [num_rows, *per-row shape]."""
    return (self.num_rows,) + self.format.shape

  @property
  def encoding(self) -> str:
    return self.format.encoding

  @property
  def num_shards(self) -> int:
    return len(self._shards)

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, rows) -> np.ndarray:
    if isinstance(rows, (int, np.integer)):
      return self.read([rows])[0]
    return self.read(rows)

  def shard(self, index: int) -> np.ndarray:
    """The raw encoded rows of shard `index`, memory-mapped read-only."""
    if index not in self._memmaps:
      path = os.path.join(self._directory, self._shards[index][2])
      array = np.load(path, mmap_mode='r')
      start, stop, _ = self._shards[index]
      expected = (stop - start,) + self.format.stored_shape
      if array.shape != expected or array.dtype != self.format.stored_dtype:
        raise ValueError(
            f'{path}: {array.dtype} {array.shape}, the manifest says '
            f'{self.format.stored_dtype} {expected}')
      self._memmaps[index] = array
    return self._memmaps[index]

  def _read_range(self, start: int, stop: int, dtype) -> np.ndarray:
    """Decoded rows [start, stop), crossing shard boundaries as needed."""
    first = int(np.searchsorted(self._starts, start, side='right')) - 1
    pieces = []
    k = max(first, 0)
    while start < stop:
      shard_start, shard_stop, _ = self._shards[k]
      hi = min(stop, shard_stop)
      pieces.append(self.format.decode(
          self.shard(k)[start - shard_start:hi - shard_start], dtype))
      start, k = hi, k + 1
    if not pieces:
      return np.zeros((0,) + self.format.shape,
                      self.format.natural_dtype if dtype is None else dtype)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

  def read(self, rows=None, dtype: Optional[Any] = np.float32) -> np.ndarray:
    """Decoded features of `rows`.

    Args:
      rows: None (all), a slice, a boolean mask [num_rows] or indices.
      dtype: output dtype; None gives the stored precision (float16 stays
        float16, binary gives bool).

    Returns:
      [len(rows), *shape] features in the order of `rows`.
    """
    indices = _normalise_rows(rows, self.num_rows)
    if indices is None:
      return self._read_range(0, self.num_rows, dtype)
    if indices.size and np.all(np.diff(indices) == 1):
      return self._read_range(int(indices[0]), int(indices[-1]) + 1, dtype)
    out_dtype = self.format.natural_dtype if dtype is None else np.dtype(dtype)
    out = np.empty((indices.size,) + self.format.shape, out_dtype)
    shard_of = np.searchsorted(self._starts, indices, side='right') - 1
    for k in np.unique(shard_of):
      positions = np.flatnonzero(shard_of == k)
      local = indices[positions] - self._shards[k][0]
      order = np.argsort(local, kind='stable')     # memmaps read fastest sorted
      out[positions[order]] = self.format.decode(
          self.shard(int(k))[local[order]], out_dtype)
    return out

  def iter_chunks(self, rows_per_chunk: int,
                  dtype: Optional[Any] = np.float32
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """Streams the layer in row order, `rows_per_chunk` rows at a time.

    Yields:
      (start row, [n, *shape] decoded chunk); only one chunk is in memory.
    """
    if rows_per_chunk < 1:
      raise ValueError(f'rows_per_chunk must be positive, got {rows_per_chunk}')
    for start in range(0, self.num_rows, rows_per_chunk):
      stop = min(start + rows_per_chunk, self.num_rows)
      yield start, self._read_range(start, stop, dtype)

  def to_sharded_jax(self, mesh: jax.sharding.Mesh, *, axis: str = 'data',
                     dtype: Any = np.float32) -> tuple[jax.Array, jax.Array]:
    """Loads the layer into a jax.Array sharded over `axis` on the row axis.

    Each device reads only its own row block straight from the shard files.
    Rows are padded with zeros to a multiple of the axis size (jax arrays
    shard evenly); `valid` marks the real rows, for masking in analyses.

    Returns:
      (features [N_pad, *shape], valid bool [N_pad]), both sharded.
    """
    num_blocks = mesh.shape[axis]
    padded = math.ceil(self.num_rows / num_blocks) * num_blocks
    sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(axis))
    dtype = np.dtype(dtype)

    def rows_block(index):
      start, stop, _ = index[0].indices(padded)
      block = np.zeros((stop - start,) + self.format.shape, dtype)
      real_stop = min(stop, self.num_rows)
      if real_stop > start:
        block[:real_stop - start] = self._read_range(start, real_stop, dtype)
      return block[(slice(None),) + tuple(index[1:])]

    def valid_block(index):
      return np.arange(padded)[index] < self.num_rows

    features = jax.make_array_from_callback(
        (padded,) + self.format.shape, sharding, rows_block, dtype=dtype)
    valid = jax.make_array_from_callback((padded,), sharding, valid_block,
                                         dtype=bool)
    return features, valid


class FeatureStore:
  """A finalized store, opened read-only: `FeatureStore.open(directory)`."""

  def __init__(self, directory: str, manifest: dict):
    self.directory = directory
    self.manifest = manifest
    self.num_rows = int(manifest['num_rows'])
    self.metadata = manifest['metadata']
    self._layers = {}
    for name, fmt in manifest['layers'].items():
      shards = [(s['rows'][0], s['rows'][1], s['files'][name])
                for s in manifest['shards']]
      self._layers[name] = LayerView(directory, name, _as_layer_format(fmt),
                                     shards, self.num_rows)
    self._rows: dict[str, np.ndarray] = {}

  @classmethod
  def open(cls, directory: str) -> 'FeatureStore':
    """Opens a finalized store.

    Raises:
      FileNotFoundError: no manifest (says how far an unfinished writer got).
      ValueError: not a feature store, or a newer format version.
    """
    directory = os.path.abspath(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      detail = ''
      if os.path.exists(os.path.join(directory, WRITER_SPEC)):
        markers = os.path.join(directory, _SHARD_MARKERS)
        done = len([f for f in os.listdir(markers) if f.endswith('.npz')]
                   ) if os.path.isdir(markers) else 0
        detail = (f' (unfinished store: {done} shards written; rerun the '
                  'extraction to resume it)')
      raise FileNotFoundError(f'no feature store manifest at {path}{detail}')
    manifest = _read_json(path)
    if manifest.get('format') != FORMAT_NAME:
      raise ValueError(f'{path} is not a {FORMAT_NAME} manifest')
    if manifest.get('version', 0) > FORMAT_VERSION:
      raise ValueError(f'{path} has format version {manifest["version"]}; '
                       f'this cnnjax reads up to {FORMAT_VERSION}')
    return cls(directory, manifest)

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(self._layers)

  def layer(self, name: str) -> LayerView:
    if name not in self._layers:
      raise KeyError(f'layer {name!r} not in the store at {self.directory}; '
                     f'it has {", ".join(self._layers)}')
    return self._layers[name]

  @property
  def row_fields(self) -> tuple[str, ...]:
    return tuple(self.manifest['row_fields'])

  def rows(self, field: str) -> np.ndarray:
    """Per-row metadata `field` (e.g. image_id, label, box), [num_rows, ...]."""
    if field not in self.manifest['row_fields']:
      raise KeyError(f'row field {field!r} not in the store at '
                     f'{self.directory}; it has {", ".join(self.row_fields)}')
    if field not in self._rows:
      self._rows[field] = np.load(os.path.join(
          self.directory, self.manifest['row_fields'][field]))
    return self._rows[field]

  def __len__(self) -> int:
    return self.num_rows
