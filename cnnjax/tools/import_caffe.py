r"""Imports Caffe CaffeNet weights into a cnnjax params checkpoint.

  python -m cnnjax.tools.import_caffe \
      --caffemodel bvlc_reference_caffenet.caffemodel \
      --mean ilsvrc_2012_mean.npy --out workdirs/caffenet_imagenet

or `--npy caffenet.npy` for the per-layer dict. The result loads with
`cnnjax.checkpoints.load_params(OUT)`; the mean lands in `OUT/mean.npy`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from cnnjax.models import caffe_import


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m cnnjax.tools.import_caffe',
      description='Convert Caffe CaffeNet weights to a cnnjax checkpoint.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--caffemodel', help='binary NetParameter file')
  source.add_argument('--npy', help="per-layer dict {'conv1': [W, b], ...}")
  parser.add_argument('--mean', default=None,
                      help='ilsvrc_2012_mean.npy or mean .binaryproto')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--width', type=float, default=1.0,
                      help='channel multiplier of the target model (demo '
                      'nets); 1.0 for the released weights')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  fmt = 'caffemodel' if args.caffemodel else 'npy'
  written = caffe_import.import_weights(
      args.caffemodel or args.npy, args.out, fmt=fmt, mean_path=args.mean,
      width=args.width)
  json.dump(written, sys.stdout, indent=2)
  sys.stdout.write('\n')
  return written


if __name__ == '__main__':
  main()
