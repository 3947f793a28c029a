r"""Where CaffeNet's forward pass spends its time, JAX vs PyTorch, as JSON.

  python bench/bench_layers.py                      # batch 128
  python bench/bench_layers.py --batch 32 --runs 5

The inference forward pass (full width, 227 px, float32) cut into stages,
each jitted on its own (with `caffenet.compiler_options()`) and fed the
previous stage's output, against the same stage of the eager PyTorch
network of bench_caffenet.py (channels_last, 2 threads, inference mode).
Each framework's stage holds what that framework computes there: a JAX
convolution whose output is pooled leaves its bias to the pooling stage
(added after the maximum, as `caffenet.CaffeConv` does), PyTorch's adds it
in the convolution. The whole forward pass runs too: its time minus the
sum of the stages is what fusing across stages saves (JAX) or costs.

All stages of both frameworks alternate within each round (median of
`--runs` after a warm-up). JSON: per stage the median seconds of each,
`jax_over_torch` (speed ratio, > 1: JAX is faster) and each stage's share
of the JAX and PyTorch totals.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import bench_caffenet  # noqa: E402  pylint: disable=g-import-not-at-top

from cnnjax.models import caffenet  # noqa: E402

STAGES = ('conv1', 'pool1_norm1', 'conv2', 'pool2_norm2', 'conv3', 'conv4',
          'conv5', 'pool5', 'fc6_fc8')
# Convolution -> (stride, pad, groups), in forward order.
_CONVS = {'conv1': (4, 0, 1), 'conv2': (1, 2, 2), 'conv3': (1, 1, 1),
          'conv4': (1, 1, 2), 'conv5': (1, 1, 2)}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=1)
  return parser.parse_args()


def jax_stages(params) -> dict[str, Callable[..., Any]]:
  """stage -> function of (params, input) computing that stage in JAX."""

  def conv(name, relu):
    stride, pad, groups = _CONVS[name]

    def run(p, x):
      y = caffenet.grouped_conv2d(x, p[name]['kernel'], stride, pad, groups)
      return jax.nn.relu(y + p[name]['bias']) if relu else y
    return run

  def pool(name, norm):
    def run(p, z):
      y = jax.nn.relu(caffenet.max_pool_ceil(z) + p[name]['bias'])
      return caffenet.local_response_norm(y) if norm else y
    return run

  def classifier(p, x):
    x = caffenet.caffe_flatten(x)
    for name in ('fc6', 'fc7'):
      x = jax.nn.relu(x @ p[name]['kernel'] + p[name]['bias'])
    return x @ p['fc8']['kernel'] + p['fc8']['bias']

  return {'conv1': conv('conv1', False), 'pool1_norm1': pool('conv1', True),
          'conv2': conv('conv2', False), 'pool2_norm2': pool('conv2', True),
          'conv3': conv('conv3', True), 'conv4': conv('conv4', True),
          'conv5': conv('conv5', False), 'pool5': pool('conv5', False),
          'fc6_fc8': classifier}


def torch_stages(net) -> dict[str, Any]:
  """stage -> the modules of bench_caffenet's PyTorch network it runs."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  features, classifier = net
  layers = list(features)
  # features: conv relu pool lrn | conv relu pool lrn | conv relu | conv relu
  # | conv relu pool
  return {'conv1': layers[0], 'pool1_norm1': nn.Sequential(*layers[1:4]),
          'conv2': layers[4], 'pool2_norm2': nn.Sequential(*layers[5:8]),
          'conv3': nn.Sequential(*layers[8:10]),
          'conv4': nn.Sequential(*layers[10:12]),
          'conv5': layers[12], 'pool5': nn.Sequential(*layers[13:15]),
          'fc6_fc8': classifier}


def to_nchw(images):
  """[B, H, W, C] numpy -> channels_last torch tensor (logically NCHW)."""
  import torch  # pylint: disable=g-import-not-at-top
  tensor = torch.from_numpy(np.ascontiguousarray(
      np.asarray(images).transpose(0, 3, 1, 2)))
  return tensor.contiguous(memory_format=torch.channels_last)


def load_torch_weights(net, params) -> None:
  """Copies CaffeNet params (HWIO, (in, out)) into the PyTorch network."""
  import torch  # pylint: disable=g-import-not-at-top
  features, classifier = net
  convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
  denses = [m for m in classifier if isinstance(m, torch.nn.Linear)]
  layers = [(m, n, (3, 2, 0, 1)) for m, n in zip(convs, _CONVS)] + [
      (m, n, (1, 0)) for m, n in zip(denses, ('fc6', 'fc7', 'fc8'))]
  with torch.no_grad():
    for module, name, order in layers:
      kernel = np.asarray(params[name]['kernel']).transpose(order)
      module.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
      module.bias.copy_(torch.from_numpy(np.asarray(params[name]['bias'])))


def torch_runs(params, images) -> tuple[dict[Any, Callable[[], Any]],
                                        np.ndarray]:
  """('torch', stage) -> closure, and the logits, with the JAX weights.

  Raises:
    ImportError: torch is not installed.
  """
  import torch  # pylint: disable=g-import-not-at-top
  net = bench_caffenet.torch_network(1000)
  load_torch_weights(net, params)
  for module in net:
    module.eval()
  runs = {}

  def timed(module, value):
    def run():
      with torch.inference_mode():
        module(value)
    return run

  with torch.inference_mode():
    x = to_nchw(images)
    for stage, module in torch_stages(net).items():
      runs['torch', stage] = timed(module, x)
      x = module(x)
    runs['torch', 'forward'] = timed(torch.nn.Sequential(*net),
                                     to_nchw(images))
  return runs, x.numpy()


def main() -> None:
  args = parse_args()
  params = caffenet.init_params(caffenet.CaffeNet(), jax.random.key(0))
  rng = np.random.default_rng(0)
  images = rng.normal(0, 50, (args.batch, 227, 227, 3)).astype(np.float32)
  options = caffenet.compiler_options()
  runs = {}
  x = jnp.asarray(images)
  for stage, fn in jax_stages(params).items():
    compiled = jax.jit(fn, compiler_options=options).lower(params, x).compile()
    runs['jax', stage] = lambda c=compiled, v=x: jax.block_until_ready(
        c(params, v))
    x = compiled(params, x)
  model = caffenet.CaffeNet()
  forward = jax.jit(lambda p, v: model.apply({'params': p}, v)[0],
                    compiler_options=options).lower(params, images).compile()
  runs['jax', 'forward'] = lambda: jax.block_until_ready(
      forward(params, images))
  logits = np.asarray(forward(params, images))
  # The stages compute the model's function: a check of the cut.
  stage_error = float(np.max(np.abs(np.asarray(x) - logits)))

  report = {'benchmark': 'caffenet_layers', 'batch': args.batch,
            'machine': _common.machine(),
            'load_average_start': _common.load_average(),
            'jax_stages_vs_model_max_abs_diff': stage_error,
            'max_abs_logit': float(np.max(np.abs(logits)))}
  try:
    more, torch_logits = torch_runs(params, images)
  except ImportError as e:
    report['torch'] = f'skipped: torch is not importable ({e})'
    _common.log(report['torch'])
  else:
    runs.update(more)
    report['torch_vs_jax_logits_max_abs_diff'] = float(
        np.max(np.abs(torch_logits - logits)))
  _common.log(f'{args.warmup} warm-up + {args.runs} rounds of {len(runs)} '
              'stages')
  timings = _common.interleaved_runs(runs, runs=args.runs, warmup=args.warmup)
  report['load_average_end'] = _common.load_average()
  seconds = {key: t['median_s'] for key, t in timings.items()}
  totals = {f: sum(seconds[f, s] for s in STAGES if (f, s) in seconds)
            for f in ('jax', 'torch')}
  rows = []
  for stage in STAGES + ('forward',):
    row = {'stage': stage}
    for framework in ('jax', 'torch'):
      if (framework, stage) in seconds:
        row[f'{framework}_s'] = seconds[framework, stage]
        if stage != 'forward':
          row[f'{framework}_share'] = seconds[framework, stage] / totals[
              framework]
    if 'torch_s' in row:
      row['jax_over_torch'] = row['torch_s'] / row['jax_s']
    rows.append(row)
    _common.log(f'  {stage}: ' + ', '.join(
        f'{k} {v:.3f}' for k, v in row.items() if k != 'stage'))
  report['stages'] = rows
  report['sum_of_stages_s'] = totals
  _common.print_json(report)


if __name__ == '__main__':
  main()
