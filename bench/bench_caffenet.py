r"""CaffeNet throughput on this machine, JAX against eager PyTorch, as JSON.

  python bench/bench_caffenet.py                             # batch 32, 128
  python bench/bench_caffenet.py --batch-sizes 32 --runs 5   # quicker

Modes, for the full-width CaffeNet at 227 px in float32:

- inference: logits, test mode;
- ft: one training step through every layer, the step `cnnjax.train` runs
  (`train.make_train_step`: Caffe's SGD from `optim.caffe_optimizer`, dropout
  on, params and optimiser state donated, jitted with
  `caffenet.compiler_options()`);
- fcft: the same with conv1..conv5 frozen (FC-FT): autodiff is cut at pool5,
  so no backward pass runs below it.

The PyTorch reference is the same network run eagerly, channels_last,
`torch.optim.SGD` with momentum, 2 threads, the conv layers under `no_grad`
for FC-FT; it is skipped with a message when torch is not installed.

For every batch size all steps (JAX and PyTorch, every mode) alternate
within each round (reversed every other round; median of `--runs` after
`--warmup`), so the ratios hold on a shared, noisy machine; the load average
is recorded before and after. JSON:
`results` (images/s per framework, mode, batch), `jax_over_torch` (speed
ratio, > 1 means JAX is faster; also the ratio of process CPU times, which
a busy machine distorts less) and `fcft_over_ft` (FC-FT step time / FT
step time; the study's cheaper finetuning, <= 0.6 expected).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top

from cnnjax import optim  # noqa: E402
from cnnjax import train  # noqa: E402
from cnnjax.models import caffenet  # noqa: E402

MODES = ('inference', 'ft', 'fcft')
CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
BASE_LR = 1e-3
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
IMAGE_SIZE = 227
TORCH_THREADS = 2

# A step closure factory: (images, labels) -> closure running one blocking step.
StepFactory = Callable[[np.ndarray, np.ndarray], Callable[[], Any]]


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch-sizes', default='32,128',
                      help='comma-separated batch sizes')
  parser.add_argument('--runs', type=int, default=5,
                      help='timed rounds per measurement (median reported)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed rounds first (compilation, allocation)')
  parser.add_argument('--modes', default=','.join(MODES),
                      help=f'subset of {",".join(MODES)}')
  parser.add_argument('--num-classes', type=int, default=1000,
                      help='fc8 outputs (1000: ImageNet; 21: VOC windows)')
  parser.add_argument('--no-torch', action='store_true',
                      help='skip the PyTorch reference')
  return parser.parse_args()


def jax_step_fns(params, num_classes: int,
                 options: Optional[dict[str, Any]] = None
                 ) -> dict[str, StepFactory]:
  """mode -> factory of a blocking closure running one JAX step.

  The factories compile before returning (so a caller can compile variants
  of the model side by side, e.g. bench_steps.py's ablations).

  Args:
    params: full-width CaffeNet params.
    num_classes: fc8 outputs of `params`.
    options: XLA compiler options; `caffenet.compiler_options()` if None.
  """
  options = caffenet.compiler_options() if options is None else options
  model = caffenet.CaffeNet(num_classes=num_classes)

  def make_infer(images, labels):
    del labels
    images = jnp.asarray(images)
    infer = jax.jit(lambda p, x: model.apply({'params': p}, x)[0],
                    compiler_options=options).lower(params, images).compile()
    return lambda: jax.block_until_ready(infer(params, images))

  def make_train(frozen_layers, images, labels):
    rules = (optim.freeze_rules(frozen_layers) + optim.new_head_rules('fc8') +
             optim.DEFAULT_RULES)
    boundary = optim.frozen_boundary(params, rules)
    net = caffenet.CaffeNet(num_classes=num_classes,
                            stop_gradient_after=boundary)
    tx = optim.caffe_optimizer(params, rules, base_lr=BASE_LR, gamma=0.1,
                               stepsize=20_000, momentum=MOMENTUM,
                               weight_decay=WEIGHT_DECAY)
    # A private copy: the step donates (overwrites) what it is given.
    state = {'params': jax.tree_util.tree_map(jnp.copy, params), 'step': 0}
    state['opt'] = tx.init(state['params'])
    batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
    step_fn = jax.jit(
        train.make_train_step(net, tx, optim.frozen_mask(params, rules),
                              seed=0),
        donate_argnums=(0, 1), compiler_options=options).lower(
            state['params'], state['opt'], batch, np.int32(0)).compile()

    def run():
      state['params'], state['opt'], metrics = step_fn(
          state['params'], state['opt'], batch, np.int32(state['step']))
      state['step'] += 1
      jax.block_until_ready((state['params'], metrics))
    return run

  return {'inference': make_infer,
          'ft': functools.partial(make_train, ()),
          'fcft': functools.partial(make_train, CONV_LAYERS)}


def torch_network(num_classes: int):
  """CaffeNet in PyTorch: (features, classifier), features channels_last.

  Raises:
    ImportError: torch is not installed.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(TORCH_THREADS)

  def pool():
    return nn.MaxPool2d(3, 2, ceil_mode=True)

  def lrn():
    return nn.LocalResponseNorm(caffenet.LRN_SIZE, caffenet.LRN_ALPHA,
                                caffenet.LRN_BETA, caffenet.LRN_K)

  features = nn.Sequential(
      nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), pool(), lrn(),
      nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True),
      pool(), lrn(),
      nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
      pool())
  classifier = nn.Sequential(
      nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
      nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
      nn.Dropout(0.5), nn.Linear(4096, num_classes))
  return features.to(memory_format=torch.channels_last), classifier


def torch_step_fns(num_classes: int) -> tuple[dict[str, Any],
                                              dict[str, StepFactory]]:
  """The same three measurements for an eager PyTorch CaffeNet.

  Raises:
    ImportError: torch is not installed.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  features, classifier = torch_network(num_classes)

  def to_torch(images, labels):
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return (x.contiguous(memory_format=torch.channels_last),
            torch.from_numpy(labels.astype(np.int64)))

  def make_infer(images, labels):
    x, _ = to_torch(images, labels)

    def run():
      features.eval()
      classifier.eval()
      with torch.inference_mode():
        classifier(features(x))
    return run

  def make_train(frozen_features, images, labels):
    x, y = to_torch(images, labels)
    trainable = list(classifier.parameters())
    if not frozen_features:
      trainable += list(features.parameters())
    optimizer = torch.optim.SGD(trainable, lr=BASE_LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)

    def run():
      # Modes alternate within a round: set this one's state every call.
      features.train()
      classifier.train()
      for p in features.parameters():
        p.requires_grad_(not frozen_features)
      optimizer.zero_grad(set_to_none=True)
      with torch.set_grad_enabled(not frozen_features):
        pooled = features(x)
      loss = nn.functional.cross_entropy(classifier(pooled), y)
      loss.backward()
      optimizer.step()
    return run

  info = {'version': torch.__version__, 'threads': torch.get_num_threads(),
          'memory_format': 'channels_last'}
  return info, {'inference': make_infer,
                'ft': functools.partial(make_train, False),
                'fcft': functools.partial(make_train, True)}


def measure(step_fns: dict[str, dict[str, StepFactory]], modes, batch_sizes,
            args, num_classes: int) -> list[dict[str, Any]]:
  """Rows of images/s; per batch size every (framework, mode) alternates.

  All contenders of a batch size share the rounds, so both the jax/torch
  ratios and the FC-FT/FT ratios compare times taken under the same load.
  """
  rows = []
  rng = np.random.default_rng(0)
  for batch in batch_sizes:
    images = rng.normal(0, 50, (batch, IMAGE_SIZE, IMAGE_SIZE, 3))
    images = images.astype(np.float32)  # [B, H, W, 3] BGR minus mean
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    runs = {}
    for mode in modes:
      for framework, fns in step_fns.items():
        _common.log(f'batch {batch}: building {framework} {mode}')
        runs[framework, mode] = fns[mode](images, labels)
    _common.log(f'batch {batch}: {args.warmup} warm-up + {args.runs} rounds '
                f'of {len(runs)} steps')
    load_before = _common.load_average()
    timings = _common.interleaved_runs(runs, runs=args.runs,
                                       warmup=args.warmup)
    load_after = _common.load_average()
    for (framework, mode), timing in timings.items():
      rows.append({'framework': framework, 'mode': mode, 'batch': batch,
                   'images_per_s': batch / timing['median_s'], **timing,
                   'load_average': {'before': load_before,
                                    'after': load_after}})
      _common.log(f'  {framework} {mode}: '
                  f'{rows[-1]["images_per_s"]:.2f} images/s')
  return rows


def main():
  args = parse_args()
  batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b]
  modes = [m for m in args.modes.split(',') if m]
  unknown = set(modes) - set(MODES)
  if unknown:
    raise SystemExit(f'unknown modes {sorted(unknown)}; valid: {MODES}')

  params = caffenet.init_params(caffenet.CaffeNet(num_classes=args.num_classes),
                                jax.random.key(0))
  report = {
      'benchmark': 'caffenet', 'image_size': IMAGE_SIZE, 'dtype': 'float32',
      'num_classes': args.num_classes, 'machine': _common.machine(),
      'load_average_start': _common.load_average(),
      'jax': {'version': jax.__version__,
              'device': str(jax.devices()[0].device_kind),
              'compiler_options': caffenet.compiler_options(),
              'params': caffenet.count_params(params)},
  }
  step_fns = {'jax': jax_step_fns(params, args.num_classes)}
  if args.no_torch:
    report['torch'] = 'skipped (--no-torch)'
  else:
    try:
      report['torch'], step_fns['torch'] = torch_step_fns(args.num_classes)
    except ImportError as e:
      report['torch'] = f'skipped: torch is not importable ({e})'
      _common.log(report['torch'])
  rows = measure(step_fns, modes, batch_sizes, args, args.num_classes)
  report['results'] = rows
  report['load_average_end'] = _common.load_average()

  seconds = {(r['framework'], r['mode'], r['batch']): r['median_s']
             for r in rows}
  cpu_seconds = {(r['framework'], r['mode'], r['batch']): r['cpu_median_s']
                 for r in rows}
  report['jax_over_torch'] = [
      {'mode': m, 'batch': b,
       'speed_ratio': seconds['torch', m, b] / seconds['jax', m, b],
       'cpu_time_ratio': cpu_seconds['torch', m, b] / cpu_seconds['jax', m, b]}
      for b in batch_sizes for m in modes if ('torch', m, b) in seconds]
  report['fcft_over_ft'] = [
      {'framework': f, 'batch': b,
       'step_time_ratio': seconds[f, 'fcft', b] / seconds[f, 'ft', b]}
      for f in step_fns for b in batch_sizes
      if (f, 'fcft', b) in seconds and (f, 'ft', b) in seconds]
  _common.print_json(report)


if __name__ == '__main__':
  main()
