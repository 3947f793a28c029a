r"""Proposal feature extraction speed: regions/s for warp + forward, as JSON.

Full-width CaffeNet at 227 with random weights on generated 500x375 JPEGs
(VOC's usual size) and random proposals. Reports the warp alone, the jitted
forward alone, and `extract_features` end to end (warp threads overlapped
with the forward, shards written to a temporary store), so the bottleneck is
visible. At R-CNN scale (~2,000 regions x ~10K images) divide 2e7 by the
end-to-end rate for the extraction time.

  python bench/bench_extract.py --num-images 2 --proposals 128 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top

from cnnjax import sharding  # noqa: E402
from cnnjax.data import images as images_lib  # noqa: E402
from cnnjax.data import regions  # noqa: E402
from cnnjax.data.voc import VocImage  # noqa: E402
from cnnjax.features import extract  # noqa: E402
from cnnjax.models import caffenet  # noqa: E402


def _images_and_proposals(directory, num_images, proposals, seed=0):
  """Smooth random 500x375 JPEGs (photo-like decode cost), boxes >= 20 px."""
  rng = np.random.default_rng(seed)
  images, boxes = [], []
  width, height = 500, 375
  for k in range(num_images):
    coarse = rng.integers(0, 256, (-(-height // 8), -(-width // 8), 3),
                          np.uint8)
    pixels = np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:height, :width]
    path = os.path.join(directory, f'{k:06d}.jpg')
    images_lib.write_jpeg(path, np.ascontiguousarray(pixels))
    images.append(VocImage(f'{k:06d}', path, width, height,
                           np.array([[10, 10, 200, 150]], np.int32),
                           np.zeros(1, np.int32), np.zeros(1, bool)))
    x1 = rng.integers(1, width - 20, proposals)
    y1 = rng.integers(1, height - 20, proposals)
    x2 = np.minimum(width, x1 + 19 + rng.integers(0, 300, proposals))
    y2 = np.minimum(height, y1 + 19 + rng.integers(0, 250, proposals))
    boxes.append(np.stack([x1, y1, x2, y2], 1).astype(np.int32))
  return images, boxes


def _random_params(model, size):
  """Caffe-scale Gaussian weights drawn in numpy (no init compile needed)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, size, size, 3), np.float32))['params']
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda s: (np.ones(s.shape, np.float32) * 0.1 if len(s.shape) == 1
                 else rng.normal(0, 0.01, s.shape).astype(np.float32)), shapes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num-images', type=int, default=2)
  parser.add_argument('--proposals', type=int, default=128,
                      help='proposals per image')
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--layers', default='pool5,fc6,fc7')
  parser.add_argument('--encoding', default='float32')
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--size', type=int, default=227)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--runs', type=int, default=3)
  args = parser.parse_args()
  layers = tuple(args.layers.split(','))
  model_kwargs = {'num_classes': 21, 'width': args.width}
  model = caffenet.CaffeNet(**model_kwargs)
  params = _random_params(model, args.size)
  context = round(16 * args.size / 227)

  with tempfile.TemporaryDirectory() as tmp:
    images, proposals = _images_and_proposals(tmp, args.num_images,
                                              args.proposals)
    source = extract.proposal_boxes(images, proposals)
    decoded = images[0].decode()
    chunk = source.boxes[0][:args.batch_size]
    _common.log(f'timing the warp of {len(chunk)} regions')
    warp = _common.time_runs(lambda: np.asarray(regions.warp_regions(
        decoded, chunk, size=args.size, context=context)), runs=args.runs)

    mesh = sharding.data_mesh()   # extract_features' mesh: one compile
    forward = extract.forward_fn(
        tuple(sorted(model_kwargs.items())), layers, mesh)
    device_params = jax.device_put(params, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    batch = np.zeros((args.batch_size, args.size, args.size, 3), np.float32)
    _common.log(f'timing the forward of {args.batch_size} regions')
    fwd = _common.time_runs(lambda: jax.block_until_ready(
        forward(device_params, batch)), runs=args.runs)

    _common.log(f'extracting {source.num_rows} regions end to end')
    kwargs = dict(batch_size=args.batch_size, warp_size=args.size,
                  context=context, encoding=args.encoding,
                  num_workers=args.workers)
    start = time.perf_counter()
    extract.extract_features(params, model_kwargs, source, layers,
                             os.path.join(tmp, 'store'), **kwargs)
    total_s = time.perf_counter() - start

  _common.print_json({
      'benchmark': 'proposal feature extraction (warp + forward)',
      'machine': _common.machine(),
      'devices': [str(d) for d in jax.devices()],
      'config': {**vars(args), 'context': context, 'layers': list(layers)},
      'warp_regions_per_s': len(chunk) / warp['median_s'],
      'forward_regions_per_s': args.batch_size / fwd['median_s'],
      'end_to_end': {'regions': source.num_rows, 'seconds': total_s,
                     'regions_per_s': source.num_rows / total_s,
                     'note': 'includes shard writes; compiled beforehand'},
      'warp_timing': warp, 'forward_timing': fwd,
  })


if __name__ == '__main__':
  main()
