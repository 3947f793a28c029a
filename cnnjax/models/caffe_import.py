"""Imports the released Caffe CaffeNet weights and the ImageNet mean.

The study's networks start from `bvlc_reference_caffenet.caffemodel`, a
protobuf `NetParameter`. It is read here with a small wire-format decoder
instead of Caffe or generated protobuf code, so importing needs neither. The
widely shared per-layer `.npy` dict (`{'conv1': [W, b], ...}`, Caffe layout)
is read too.

Caffe layouts are converted to the model's: conv (out, in/groups, kh, kw) ->
HWIO (kh, kw, in/groups, out), fc (out, in) -> (in, out). fc6's input rows
are in Caffe's C,H,W order, which is how `CaffeNet` flattens pool5, so they
are kept as they are. conv1 acts on BGR channels in Caffe and in `CaffeNet`
alike, so no channel is reordered either.

Field numbers (caffe.proto): NetParameter.layer = 100 (LayerParameter:
name = 1, blobs = 7), NetParameter.layers = 2 (V1LayerParameter: name = 4,
blobs = 6); BlobProto: num = 1, channels = 2, height = 3, width = 4,
data = 5 (packed float), shape = 7 (BlobShape: dim = 1, packed int64),
double_data = 8.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import checkpoints
from cnnjax.data import preprocess
from cnnjax.models.caffenet import PARAM_LAYERS, CaffeNet

MEAN_FILENAME = 'mean.npy'

# Protobuf wire types.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

# NetParameter field holding layers -> (its name field, its blobs field).
_LAYER_FIELDS = {
    100: (1, 7),  # NetParameter.layer: LayerParameter
    2: (4, 6),    # NetParameter.layers: V1LayerParameter (older files)
}
_BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_BLOB_SHAPE_DIM = 1


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
  """Decodes the base-128 varint at `pos`; returns (value, next position)."""
  value, shift = 0, 0
  while True:
    if pos >= len(buf):
      raise ValueError('truncated varint')
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7


def iter_fields(buf) -> Iterator[tuple[int, int, Any]]:
  """Yields (field number, wire type, value) for each field of a message.

  Values: an int for varints, a memoryview of the payload for
  length-delimited fields (sub-messages, strings, packed arrays; no copy, so
  the 150 MB fc6 blob is not duplicated), and the raw little-endian bytes
  for fixed32/fixed64.

  Raises:
    ValueError: malformed or truncated input, or a wire type Caffe never
      writes (groups).
  """
  buf = memoryview(buf)
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == _VARINT:
      value, pos = _read_varint(buf, pos)
    elif wire == _LENGTH_DELIMITED:
      size, pos = _read_varint(buf, pos)
      if pos + size > len(buf):
        raise ValueError(f'field {field}: truncated length-delimited payload')
      value, pos = buf[pos:pos + size], pos + size
    elif wire in (_FIXED32, _FIXED64):
      size = 4 if wire == _FIXED32 else 8
      if pos + size > len(buf):
        raise ValueError(f'field {field}: truncated fixed-size value')
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f'field {field}: unsupported wire type {wire}')
    yield field, wire, value


def _packed_varints(value, wire: int) -> list[int]:
  """A repeated integer field's values, packed (one payload) or not."""
  if wire == _VARINT:
    return [value]
  numbers, pos = [], 0
  while pos < len(value):
    number, pos = _read_varint(value, pos)
    numbers.append(number)
  return numbers


def parse_blob(buf, where: str) -> np.ndarray:
  """Decodes a BlobProto into a float32 array of its declared shape.

  Packed and unpacked repeated floats are both little-endian 4-byte values
  back to back, so either encoding is gathered as raw bytes. The shape is
  `shape.dim` when present, else the legacy (num, channels, height, width).

  Args:
    buf: the serialised BlobProto.
    where: names the blob in error messages.

  Raises:
    ValueError: no data, or a data count that does not match the shape.
  """
  dims, legacy = None, {}
  floats, doubles = [], []
  for field, wire, value in iter_fields(buf):
    if field == _BLOB_DATA:
      floats.append(value)
    elif field == _BLOB_DOUBLE_DATA:
      doubles.append(value)
    elif field == _BLOB_SHAPE and wire == _LENGTH_DELIMITED:
      dims = [d for f, w, v in iter_fields(value) if f == _BLOB_SHAPE_DIM
              for d in _packed_varints(v, w)]
    elif field in _BLOB_LEGACY_DIMS and wire == _VARINT:
      legacy[field] = value
  if floats:
    data = np.frombuffer(b''.join(floats) if len(floats) > 1 else floats[0],
                         dtype='<f4')
  elif doubles:
    data = np.frombuffer(b''.join(doubles), dtype='<f8')
  else:
    raise ValueError(f'{where}: blob holds no data')
  if dims is None:
    dims = [legacy.get(field, 0) for field in _BLOB_LEGACY_DIMS]
  if int(np.prod(dims)) != data.size:
    raise ValueError(f'{where}: blob shape {tuple(dims)} does not match its '
                     f'{data.size} values')
  return data.astype(np.float32).reshape(dims)


def read_caffemodel(path: str) -> dict[str, list[np.ndarray]]:
  """Reads a binary `.caffemodel` (new `layer` or old `layers` format).

  Returns:
    Layer name -> its parameter blobs in Caffe layout, for every layer that
    has blobs (for CaffeNet: conv1..conv5, fc6..fc8 with [weights, bias]).

  Raises:
    ValueError: malformed protobuf or blobs, or a layer name that occurs
      twice with weights; each message names `path`.
  """
  with open(path, 'rb') as f:
    buf = f.read()
  layers = {}
  try:
    for field, wire, layer in iter_fields(buf):
      if field not in _LAYER_FIELDS or wire != _LENGTH_DELIMITED:
        continue
      name_field, blobs_field = _LAYER_FIELDS[field]
      name, blobs = None, []
      for sub_field, sub_wire, value in iter_fields(layer):
        if sub_wire != _LENGTH_DELIMITED:
          continue
        if sub_field == name_field:
          name = bytes(value).decode('utf-8')
        elif sub_field == blobs_field:
          blobs.append(value)
      if not blobs:
        continue
      if name in layers:
        raise ValueError(f'layer {name!r} has weights twice')
      layers[name] = [parse_blob(blob, f'layer {name!r} blob {i}')
                      for i, blob in enumerate(blobs)]
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from e
  if not layers:
    raise ValueError(f'{path}: no layer with weights found (not a '
                     'NetParameter caffemodel?)')
  return layers


def read_npy_weights(path: str) -> dict[str, list[np.ndarray]]:
  """Reads the per-layer `.npy` dict in Caffe layout.

  Accepts `{'conv1': [W, b], ...}` and `{'conv1': {'weights': W,
  'biases': b}, ...}`.

  Raises:
    ValueError: the file holds no dict, or an entry of another form.
  """
  content = np.load(path, allow_pickle=True, encoding='latin1')
  if content.dtype != object or content.shape != ():
    raise ValueError(f'{path}: expected a pickled dict of layers, got an '
                     f'array of shape {content.shape}')
  layers = {}
  for name, entry in content.item().items():
    if isinstance(entry, Mapping):
      if set(entry) != {'weights', 'biases'}:
        raise ValueError(f'{path}: layer {name!r} has keys {sorted(entry)}; '
                         "expected 'weights' and 'biases'")
      entry = [entry['weights'], entry['biases']]
    layers[name] = [np.asarray(blob, np.float32) for blob in entry]
  return layers


def _drop_leading_ones(array: np.ndarray, ndim: int) -> np.ndarray:
  """Legacy 4-D blobs, e.g. fc weights (1, 1, out, in) -> (out, in)."""
  extra = array.ndim - ndim
  if extra > 0 and all(d == 1 for d in array.shape[:extra]):
    return array.reshape(array.shape[extra:])
  return array


def _caffe_layout(our_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The Caffe shape of a kernel: HWIO -> OIHW, (in, out) -> (out, in)."""
  if len(our_shape) == 4:
    kh, kw, cin, cout = our_shape
    return (cout, cin, kh, kw)
  return tuple(reversed(our_shape))


def caffe_to_params(layers: Mapping[str, Sequence[np.ndarray]],
                    width: float = 1.0, source: str = 'weights'
                    ) -> dict[str, dict[str, np.ndarray]]:
  """Converts Caffe-layout blobs to `CaffeNet` params (numpy float32).

  The class count comes from fc8, so any head (1000 ImageNet classes, 21 for
  VOC windows) imports. Every shape is checked against the params of
  `CaffeNet(num_classes, width)` at 227 px.

  Args:
    layers: layer name -> [weights, bias] in Caffe layout (extra layers
      without parameters in the model are ignored).
    width: channel multiplier of the target model (1.0 for the released net;
      smaller for demo nets).
    source: names the weights in error messages.

  Raises:
    KeyError: a parameterised layer is missing.
    ValueError: a layer without exactly two blobs, or a blob whose shape is
      not the model's; the message names the layer and both shapes.
  """
  for name in PARAM_LAYERS:
    if name not in layers:
      raise KeyError(f'{source}: no weights for layer {name!r}; layers with '
                     f'weights: {sorted(layers)}')
    if len(layers[name]) != 2:
      raise ValueError(f'{source}: layer {name!r} has {len(layers[name])} '
                       'blobs; expected 2 (weights, bias)')
  num_classes = int(_drop_leading_ones(np.asarray(layers['fc8'][1]), 1).size)
  model = CaffeNet(num_classes=num_classes, width=width)
  expected = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32))['params']
  params = {}
  for name in PARAM_LAYERS:
    kernel_shape = expected[name]['kernel'].shape
    bias_shape = expected[name]['bias'].shape
    caffe_shape = _caffe_layout(kernel_shape)
    weights, bias = (np.asarray(blob, np.float32) for blob in layers[name])
    weights = _drop_leading_ones(weights, len(caffe_shape))
    bias = _drop_leading_ones(bias, 1)
    if weights.shape != caffe_shape:
      raise ValueError(
          f'{source}: layer {name!r} weights have shape {weights.shape}; '
          f'CaffeNet(num_classes={num_classes}, width={width}) needs '
          f'{caffe_shape} (Caffe layout)')
    if bias.shape != bias_shape:
      raise ValueError(f'{source}: layer {name!r} bias has shape '
                       f'{bias.shape}; the model needs {bias_shape}')
    if weights.ndim == 4:
      kernel = weights.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    else:
      kernel = weights.T                      # (out, in) -> (in, out)
    params[name] = {'kernel': np.ascontiguousarray(kernel), 'bias': bias}
  return params


def load_mean(path: Optional[str] = None) -> np.ndarray:
  """The ImageNet mean image as [256, 256, 3] float32 BGR.

  Args:
    path: Caffe's `ilsvrc_2012_mean.npy` ((3, 256, 256) BGR, as
      `import_weights` writes `mean.npy` too) or its `.binaryproto` (a
      BlobProto); None gives the per-channel means broadcast, the fallback
      SPEC names.

  Raises:
    ValueError: a `.binaryproto` that is not a (3, 256, 256) image.
  """
  size = preprocess.MEAN_IMAGE_SIZE
  if path is None or not path.endswith('.binaryproto'):
    return preprocess.mean_image(path, size)
  with open(path, 'rb') as f:
    chw = _drop_leading_ones(parse_blob(f.read(), path), 3)
  if chw.shape != (3, size, size):
    raise ValueError(f'{path}: mean blob has shape {chw.shape}; expected '
                     f'(3, {size}, {size}) BGR')
  return np.ascontiguousarray(chw.transpose(1, 2, 0))  # CHW -> HWC, still BGR


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.save(f, array)
  os.replace(tmp, path)


READERS = {'caffemodel': read_caffemodel, 'npy': read_npy_weights}


def import_weights(weights_path: str, out_dir: str, fmt: str,
                   mean_path: Optional[str] = None,
                   width: float = 1.0) -> dict[str, Any]:
  """Converts Caffe weights into a params checkpoint (and the mean beside it).

  The checkpoint is `cnnjax.checkpoints.save_params(out_dir, ...)`, so
  `load_params(out_dir)` restores it; its metadata records the source file,
  its sha256, the class count and width. With `mean_path`, the mean image is
  written as `out_dir/mean.npy` in Caffe's (3, 256, 256) float32 BGR layout,
  the layout of `ilsvrc_2012_mean.npy`, so every reader of that file (and
  `load_mean`) reads it.

  Args:
    weights_path: the `.caffemodel` or `.npy` file.
    out_dir: the directory to write.
    fmt: 'caffemodel' or 'npy'.
    mean_path: optional mean file for `load_mean`.
    width: channel multiplier of the target model.

  Returns:
    The metadata written, plus `checkpoint_dir` and `mean` (path or None).
  """
  if fmt not in READERS:
    raise ValueError(f'unknown weights format {fmt!r}; valid: '
                     f'{", ".join(sorted(READERS))}')
  params = caffe_to_params(READERS[fmt](weights_path), width=width,
                           source=weights_path)
  metadata = {
      'source': os.path.abspath(weights_path),
      'format': fmt,
      'sha256': file_sha256(weights_path),
      'num_classes': int(params['fc8']['bias'].shape[0]),
      'width': width,
      'mean_source': os.path.abspath(mean_path) if mean_path else None,
  }
  os.makedirs(out_dir, exist_ok=True)
  mean_file = None
  if mean_path:
    mean_file = os.path.join(out_dir, MEAN_FILENAME)
    _save_npy_atomic(mean_file, load_mean(mean_path).transpose(2, 0, 1))
  manager_dir = checkpoints.save_params(out_dir, params, metadata=metadata)
  return dict(metadata, checkpoint_dir=manager_dir, mean=mean_file)
