"""Caffe weight import: caffemodels written here in protobuf wire format."""

import hashlib
import struct

import caffe_numpy_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

from cnnjax import checkpoints
from cnnjax.data import preprocess
from cnnjax.models import caffe_import
from cnnjax.models import caffenet
from cnnjax.tools import import_caffe

TINY_WIDTH = 0.0625
NUM_CLASSES = 7  # any head size imports; fc8's shape decides it


# A minimal protobuf encoder (wire format), independent of the decoder.
def varint(n):
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def tag(field, wire):
  return varint(field << 3 | wire)


def length_delimited(field, payload):
  if isinstance(payload, str):
    payload = payload.encode()
  return tag(field, 2) + varint(len(payload)) + payload


def varint_field(field, n):
  return tag(field, 0) + varint(n)


def encode_blob(array, legacy=False, packed=True, double=False):
  """BlobProto with `shape` (or legacy num/channels/height/width) + data."""
  array = np.asarray(array)
  if legacy:  # old files: always 4-D, leading ones, e.g. fc (1, 1, out, in)
    dims = (1,) * (4 - array.ndim) + array.shape
    header = b''.join(varint_field(f, d) for f, d in zip((1, 2, 3, 4), dims))
  else:
    header = length_delimited(
        7, length_delimited(1, b''.join(varint(d) for d in array.shape)))
  flat = array.ravel()
  if double:
    data = length_delimited(8, flat.astype('<f8').tobytes())
  elif packed:
    data = length_delimited(5, flat.astype('<f4').tobytes())
  else:
    data = b''.join(tag(5, 5) + struct.pack('<f', v) for v in flat)
  return header + data


def encode_layer(name, blobs, style):
  """A LayerParameter (`layer`) or V1LayerParameter (`layers`) message."""
  if style == 'layer':
    body = (length_delimited(1, name) + length_delimited(2, 'Convolution') +
            length_delimited(3, 'bottom') + length_delimited(4, name) +
            # ParamSpec {lr_mult: 1 (fixed32)} and a phase varint: skipped.
            length_delimited(6, tag(3, 5) + struct.pack('<f', 1.0)) +
            varint_field(10, 1))
    body += b''.join(length_delimited(7, blob) for blob in blobs)
    return length_delimited(100, body)
  body = (length_delimited(2, 'bottom') + length_delimited(3, name) +
          length_delimited(4, name) + varint_field(5, 4) +
          # blobs_lr, unpacked repeated float: skipped.
          tag(7, 5) + struct.pack('<f', 1.0) + tag(7, 5) +
          struct.pack('<f', 2.0))
  body += b''.join(length_delimited(6, blob) for blob in blobs)
  return length_delimited(2, body)


def encode_caffemodel(caffe_params, style):
  """CaffeNet as Caffe writes it: layers without blobs among them."""
  legacy = style == 'layers'
  net = length_delimited(1, 'CaffeNet')
  net += encode_layer('data', [], style)
  for name, (weights, bias) in caffe_params.items():
    bias_blob = (encode_blob(bias, legacy, packed=False) if name == 'conv1'
                 else encode_blob(bias, legacy, double=name == 'conv3'))
    net += encode_layer(name, [encode_blob(weights, legacy), bias_blob], style)
    net += encode_layer('relu_' + name, [], style)
  return net


def tiny_model():
  return caffenet.CaffeNet(num_classes=NUM_CLASSES, width=TINY_WIDTH)


def tiny_caffe_params(seed):
  shapes = jax.eval_shape(
      tiny_model().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32))['params']
  return ref.random_caffe_params(np.random.default_rng(seed), shapes)


def test_decoder_reads_documented_encodings():
  # The protobuf encoding guide's examples: 150 as field 1, and packed
  # field 4 = [3, 270, 86942].
  assert list(caffe_import.iter_fields(b'\x08\x96\x01')) == [(1, 0, 150)]
  ((field, wire, payload),) = caffe_import.iter_fields(
      b'\x22\x06\x03\x8e\x02\x9e\xa7\x05')
  assert (field, wire) == (4, 2)
  assert caffe_import._packed_varints(payload, wire) == [3, 270, 86942]
  with pytest.raises(ValueError, match='truncated'):
    list(caffe_import.iter_fields(b'\x22\x06\x03'))


def _real_protobuf_classes():
  """BlobShape/BlobProto/LayerParameter/NetParameter built by the protobuf
  library itself from caffe.proto's field numbers."""
  fdp = descriptor_pb2.FileDescriptorProto(
      name='caffe_subset.proto', package='caffe', syntax='proto2')
  f = descriptor_pb2.FieldDescriptorProto
  repeated, optional = f.LABEL_REPEATED, f.LABEL_OPTIONAL

  def message(name, *fields):
    proto = fdp.message_type.add(name=name)
    for field_name, number, label, kind, type_name, packed in fields:
      field = proto.field.add(name=field_name, number=number, label=label,
                              type=kind)
      if type_name:
        field.type_name = type_name
      if packed:
        field.options.packed = True

  message('BlobShape', ('dim', 1, repeated, f.TYPE_INT64, None, True))
  message('BlobProto',
          ('shape', 7, optional, f.TYPE_MESSAGE, '.caffe.BlobShape', False),
          ('data', 5, repeated, f.TYPE_FLOAT, None, True))
  message('LayerParameter',
          ('name', 1, optional, f.TYPE_STRING, None, False),
          ('type', 2, optional, f.TYPE_STRING, None, False),
          ('blobs', 7, repeated, f.TYPE_MESSAGE, '.caffe.BlobProto', False))
  message('NetParameter',
          ('name', 1, optional, f.TYPE_STRING, None, False),
          ('layer', 100, repeated, f.TYPE_MESSAGE, '.caffe.LayerParameter',
           False))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f'caffe.{name}'))
          for name in ('NetParameter', 'BlobProto')}


def test_file_serialised_by_protobuf_library_decodes(tmp_path):
  classes = _real_protobuf_classes()
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  net = classes['NetParameter'](name='net')
  net.layer.add(name='data', type='Input')
  layer = net.layer.add(name='conv1', type='Convolution')
  for array in (weights, bias):
    blob = layer.blobs.add()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
  path = tmp_path / 'net.caffemodel'
  path.write_bytes(net.SerializeToString())

  layers = caffe_import.read_caffemodel(str(path))
  assert list(layers) == ['conv1']
  np.testing.assert_array_equal(layers['conv1'][0], weights)
  np.testing.assert_array_equal(layers['conv1'][1], bias)


@pytest.mark.parametrize('style', ['layer', 'layers'])
def test_caffemodel_import_reproduces_reference(tmp_path, style):
  caffe_params = tiny_caffe_params(seed=1 if style == 'layer' else 2)
  path = tmp_path / 'tiny.caffemodel'
  path.write_bytes(encode_caffemodel(caffe_params, style))

  layers = caffe_import.read_caffemodel(str(path))
  assert sorted(layers) == sorted(caffenet.PARAM_LAYERS)
  for name, (weights, bias) in caffe_params.items():
    np.testing.assert_array_equal(layers[name][0].reshape(weights.shape),
                                  weights)
    np.testing.assert_array_equal(layers[name][1].ravel(), bias)
  if style == 'layers':
    assert layers['fc6'][0].shape == (1, 1) + caffe_params['fc6'][0].shape

  params = caffe_import.caffe_to_params(layers, width=TINY_WIDTH,
                                        source=str(path))
  images = np.random.default_rng(3).uniform(-128, 128, (1, 227, 227, 3))
  images = images.astype(np.float32)
  logits, out = jax.jit(tiny_model().apply)({'params': params}, images)
  expected = ref.forward(images.transpose(0, 3, 1, 2), caffe_params)
  for name in caffenet.BLOBS:
    ref.assert_close(ref.to_nchw(out[name]), expected[name], name=name)
  assert logits.shape == (1, NUM_CLASSES)


@pytest.mark.parametrize('variant', ['list', 'dict'])
def test_npy_dict_import_transposes_to_model_layout(tmp_path, variant):
  caffe_params = tiny_caffe_params(seed=4)
  if variant == 'list':
    content = {k: [w, b] for k, (w, b) in caffe_params.items()}
  else:
    content = {k: {'weights': w, 'biases': b}
               for k, (w, b) in caffe_params.items()}
  path = tmp_path / 'tiny.npy'
  np.save(path, content, allow_pickle=True)

  params = caffe_import.caffe_to_params(
      caffe_import.read_npy_weights(str(path)), width=TINY_WIDTH)
  for name, (weights, bias) in caffe_params.items():
    kernel = params[name]['kernel']
    if weights.ndim == 4:  # kernel[i, j, c, o] == weights[o, c, i, j]
      o, c, i, j = 1, 0, 2, 1
      assert kernel[i, j, c, o] == weights[o, c, i, j]
      np.testing.assert_array_equal(kernel, weights.transpose(2, 3, 1, 0))
    else:
      np.testing.assert_array_equal(kernel, weights.T)
    np.testing.assert_array_equal(params[name]['bias'], bias)


def test_wrong_shapes_and_missing_layers_name_the_layer():
  caffe_params = tiny_caffe_params(seed=5)
  layers = {k: list(v) for k, v in caffe_params.items()}
  layers['conv4'][0] = layers['conv4'][0][:, :-1]  # in/groups off by one
  with pytest.raises(ValueError, match=r"tiny.caffemodel: layer 'conv4' "
                     r'weights have shape \(24, 11, 3, 3\)'):
    caffe_import.caffe_to_params(layers, width=TINY_WIDTH,
                                 source='tiny.caffemodel')
  layers = {k: list(v) for k, v in caffe_params.items()}
  layers['fc7'][1] = layers['fc7'][1][:-1]
  with pytest.raises(ValueError, match="layer 'fc7' bias"):
    caffe_import.caffe_to_params(layers, width=TINY_WIDTH)
  # The released full-width net does not fit a tiny model.
  with pytest.raises(ValueError, match="layer 'conv1'"):
    caffe_import.caffe_to_params(caffe_params, width=1.0)
  del layers['fc7']
  with pytest.raises(KeyError, match="'fc7'"):
    caffe_import.caffe_to_params(layers, width=TINY_WIDTH)


def test_mismatched_blob_size_names_file_and_layer(tmp_path):
  blob = (length_delimited(7, length_delimited(1, varint(3) + varint(2))) +
          length_delimited(5, np.zeros(5, '<f4').tobytes()))
  path = tmp_path / 'bad.caffemodel'
  path.write_bytes(encode_layer('conv1', [blob], 'layer'))
  with pytest.raises(ValueError, match=r"bad.caffemodel: layer 'conv1' blob "
                     r'0: blob shape \(3, 2\) does not match its 5 values'):
    caffe_import.read_caffemodel(str(path))


def test_load_mean_formats(tmp_path):
  rng = np.random.default_rng(6)
  chw = rng.uniform(90, 130, (3, 256, 256)).astype(np.float32)  # BGR planes
  npy_path = tmp_path / 'ilsvrc_2012_mean.npy'
  np.save(npy_path, chw)
  proto_path = tmp_path / 'mean.binaryproto'
  proto_path.write_bytes(encode_blob(chw, legacy=True))

  for path in (npy_path, proto_path):
    mean = caffe_import.load_mean(str(path))
    assert mean.shape == (256, 256, 3) and mean.dtype == np.float32
    assert mean[10, 20, 0] == chw[0, 10, 20]  # channel 0 stays blue
    np.testing.assert_array_equal(mean, chw.transpose(1, 2, 0))
  fallback = caffe_import.load_mean(None)
  assert fallback.shape == (256, 256, 3)
  np.testing.assert_allclose(fallback[100, 7], [104.00698793, 116.66876762,
                                                122.67891434], rtol=1e-7)


def test_cli_writes_loadable_checkpoint_and_mean(tmp_path, capsys):
  caffe_params = tiny_caffe_params(seed=7)
  weights_path = tmp_path / 'tiny.npy'
  np.save(weights_path, {k: [w, b] for k, (w, b) in caffe_params.items()},
          allow_pickle=True)
  mean_path = tmp_path / 'ilsvrc_2012_mean.npy'
  chw = np.random.default_rng(8).uniform(90, 130, (3, 256, 256))
  np.save(mean_path, chw.astype(np.float32))
  out_dir = tmp_path / 'imported'

  written = import_caffe.main(['--npy', str(weights_path), '--mean',
                               str(mean_path), '--out', str(out_dir),
                               '--width', str(TINY_WIDTH)])

  assert str(out_dir / 'checkpoints') in capsys.readouterr().out
  restored = checkpoints.load_params(str(out_dir))
  np.testing.assert_array_equal(restored['conv2']['kernel'],
                                caffe_params['conv2'][0].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(restored['fc8']['kernel'],
                                caffe_params['fc8'][0].T)
  meta = checkpoints.load_metadata(str(out_dir))
  assert meta['num_classes'] == NUM_CLASSES
  assert meta['width'] == TINY_WIDTH
  assert meta['sha256'] == hashlib.sha256(weights_path.read_bytes()).hexdigest()
  # The mean beside it reads like Caffe's own file, with either reader.
  np.testing.assert_allclose(
      preprocess.mean_image(written['mean']), chw.transpose(1, 2, 0),
      rtol=1e-6)
  np.testing.assert_array_equal(caffe_import.load_mean(written['mean']),
                                preprocess.mean_image(str(mean_path)))
