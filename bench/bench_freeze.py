r"""FC-FT vs FT: what freezing conv1..conv5 saves in the real training step.

  python bench/bench_freeze.py                       # full width, 227 px
  python bench/bench_freeze.py --batch-size 8 --runs 3 --width 0.25  # quick

The step is `cnnjax.train.make_train_step` with the Caffe optimiser and the
rules of configs/pascal_finetune.py (FT: every layer trains, new fc8 at
10/20; FC-FT: conv1..conv5 frozen, so `optim.frozen_boundary` puts
`stop_gradient_after='pool5'`). Prints JSON with, for both:

- convolutions in the lowered (StableHLO) and in the compiled (XLA HLO)
  step: FC-FT keeps the 8 forward convolutions and drops the 15 backward
  ones (8 weight and 7 input gradients; conv2, conv4, conv5 have 2 groups);
- step time (median of `--runs` after a warm-up, FT and FC-FT steps in
  alternation so that both see the same load) and images/s;

and `fcft_over_ft_time`, the study's "2x faster finetuning" (target <= 0.6).
"""

from __future__ import annotations

import argparse
import re

import _common
import jax
import numpy as np

from cnnjax import optim
from cnnjax import train
from cnnjax.models import caffenet

CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
RULES = {
    'ft': optim.new_head_rules('fc8') + optim.DEFAULT_RULES,
    'fcft': (optim.freeze_rules(CONV_LAYERS) + optim.new_head_rules('fc8') +
             optim.DEFAULT_RULES),
}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--size', type=int, default=227, help='input side')
  parser.add_argument('--width', type=float, default=1.0,
                      help='CaffeNet channel multiplier')
  parser.add_argument('--num-classes', type=int, default=21)
  parser.add_argument('--runs', type=int, default=5,
                      help='timed steps per mode (median reported)')
  return parser.parse_args()


def build(mode: str, args: argparse.Namespace):
  """Convolution counts of one mode's step, and a closure running it."""
  rules = RULES[mode]
  shapes = jax.eval_shape(lambda: caffenet.init_params(
      caffenet.CaffeNet(args.num_classes, args.width), jax.random.key(0),
      args.size))
  boundary = optim.frozen_boundary(shapes, rules)
  model = caffenet.CaffeNet(args.num_classes, args.width,
                            stop_gradient_after=boundary)
  tx = optim.caffe_optimizer(shapes, rules, base_lr=0.001, gamma=0.1,
                             stepsize=20_000)
  step = jax.jit(train.make_train_step(
      model, tx, optim.frozen_mask(shapes, rules), seed=0),
                 donate_argnums=(0, 1),
                 compiler_options=caffenet.compiler_options())
  params = caffenet.init_params(model, jax.random.key(0), args.size)
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  batch = {
      'image': jax.numpy.asarray(rng.normal(
          0, 60, (args.batch_size, args.size, args.size, 3)), np.float32),
      'label': jax.numpy.asarray(rng.integers(
          0, args.num_classes, args.batch_size), np.int32)}
  lowered = step.lower(params, opt_state, batch, np.int32(0))
  compiled = lowered.compile()
  compiled_text = compiled.as_text()
  state = {'params': params, 'opt_state': opt_state, 'step': 0}

  def one_step():
    state['params'], state['opt_state'], metrics = compiled(
        state['params'], state['opt_state'], batch, np.int32(state['step']))
    state['step'] += 1
    jax.block_until_ready(metrics)

  _common.log(f'{mode}: stop_gradient_after={boundary}')
  return {
      'stop_gradient_after': boundary,
      'convolutions_stablehlo': lowered.as_text().count(
          'stablehlo.convolution'),
      'convolutions_compiled_hlo': len(re.findall(
          r'= \S+ convolution\(', compiled_text)),
  }, one_step


def main() -> None:
  args = parse_args()
  results, steps = {}, {}
  for mode in RULES:
    results[mode], steps[mode] = build(mode, args)
  _common.log(f'timing {args.runs} rounds of {", ".join(steps)}')
  for mode, timing in _common.interleaved_runs(steps, runs=args.runs).items():
    results[mode].update(step_s=timing,
                         images_per_s=args.batch_size / timing['median_s'])
  _common.print_json({
      'bench': 'freeze',
      'machine': _common.machine(),
      'device': str(jax.devices()[0]),
      'batch_size': args.batch_size, 'size': args.size, 'width': args.width,
      **results,
      'fcft_over_ft_time': (results['fcft']['step_s']['median_s'] /
                            results['ft']['step_s']['median_s']),
  })


if __name__ == '__main__':
  main()
