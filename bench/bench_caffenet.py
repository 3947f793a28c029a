r"""CaffeNet throughput: inference, FT and FC-FT train steps, JAX vs PyTorch.

  python bench/bench_caffenet.py                      # batch 32 and 128
  python bench/bench_caffenet.py --batch-sizes 32 --runs 3  # quick

Prints JSON: images/s (median of `--runs` timed runs after one warm-up) for
the full-width CaffeNet at 227 px in float32 on the default JAX device, for

- inference: logits, test mode;
- ft: a train step through every layer (SGD with momentum, dropout on);
- fcft: conv1..conv5 frozen: `stop_gradient_after='pool5'` and gradients
  for the fc params only, so no backward pass runs below pool5 (the study's
  ~2x cheaper finetuning);

and, when torch is importable, the same for an eager PyTorch CaffeNet
(channels_last), with jax/torch ratios. The plain momentum SGD here stands in
for the Caffe solver: its cost is negligible next to the network.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.models import caffenet

MODES = ('inference', 'ft', 'fcft')
FC_LAYERS = ('fc6', 'fc7', 'fc8')
LEARNING_RATE = 1e-3
MOMENTUM = 0.9
IMAGE_SIZE = 227


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch-sizes', default='32,128',
                      help='comma-separated batch sizes')
  parser.add_argument('--runs', type=int, default=5,
                      help='timed runs per measurement (median reported)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed runs first (compilation, allocation)')
  parser.add_argument('--modes', default=','.join(MODES),
                      help=f'subset of {",".join(MODES)}')
  parser.add_argument('--no-torch', action='store_true',
                      help='skip the PyTorch comparison')
  return parser.parse_args()


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def jax_step_fns(params) -> dict[str, Callable[..., Callable[[], Any]]]:
  """mode -> (images, labels) -> a blocking closure running one step."""
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  model = caffenet.CaffeNet()
  model_fcft = caffenet.CaffeNet(stop_gradient_after='pool5')

  @jax.jit
  def infer(params, images):
    return model.apply({'params': params}, images)[0]

  @functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
  def train_step(net, trainable, opt_state, frozen, images, labels, rng):
    def loss_fn(trainable):
      logits, _ = net.apply({'params': {**frozen, **trainable}}, images,
                            train=True, rngs={'dropout': rng})
      return _cross_entropy(logits, labels)

    loss, grads = jax.value_and_grad(loss_fn)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss

  def make_infer(images, labels):
    del labels
    return lambda: jax.block_until_ready(infer(params, images))

  def make_train(net, trainable_names, images, labels):
    # A private copy: the step donates (overwrites) the buffers it trains.
    trainable = {k: jax.tree_util.tree_map(jnp.copy, params[k])
                 for k in trainable_names}
    state = {'trainable': trainable, 'rng': jax.random.key(0)}
    state['opt'] = tx.init(state['trainable'])
    frozen = {k: v for k, v in params.items() if k not in trainable_names}

    def run():
      state['rng'], rng = jax.random.split(state['rng'])
      state['trainable'], state['opt'], loss = train_step(
          net, state['trainable'], state['opt'], frozen, images, labels, rng)
      jax.block_until_ready((state['trainable'], loss))
    return run

  return {
      'inference': make_infer,
      'ft': functools.partial(make_train, model, tuple(params)),
      'fcft': functools.partial(make_train, model_fcft, FC_LAYERS),
  }


def torch_step_fns():
  """The same three measurements for an eager PyTorch CaffeNet."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

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
      nn.Dropout(0.5), nn.Linear(4096, 1000))
  features = features.to(memory_format=torch.channels_last)

  def to_torch(images, labels):
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return (x.contiguous(memory_format=torch.channels_last),
            torch.from_numpy(labels.astype(np.int64)))

  def make_infer(images, labels):
    x, _ = to_torch(images, labels)
    features.eval()
    classifier.eval()

    def run():
      with torch.inference_mode():
        classifier(features(x))
    return run

  def make_train(frozen_features, images, labels):
    x, y = to_torch(images, labels)
    features.train()
    classifier.train()
    for p in features.parameters():
      p.requires_grad_(not frozen_features)
    trainable = list(classifier.parameters())
    if not frozen_features:
      trainable += list(features.parameters())
    optimizer = torch.optim.SGD(trainable, lr=LEARNING_RATE,
                                momentum=MOMENTUM)

    def run():
      optimizer.zero_grad(set_to_none=True)
      if frozen_features:
        with torch.no_grad():
          pooled = features(x)
      else:
        pooled = features(x)
      loss = nn.functional.cross_entropy(classifier(pooled), y)
      loss.backward()
      optimizer.step()
    return run

  info = {'version': torch.__version__, 'threads': torch.get_num_threads()}
  return info, {
      'inference': make_infer,
      'ft': functools.partial(make_train, False),
      'fcft': functools.partial(make_train, True),
  }


def measure(framework, step_fns, modes, batch_sizes, args):
  rows = []
  rng = np.random.default_rng(0)
  for batch in batch_sizes:
    images = rng.normal(0, 50, (batch, IMAGE_SIZE, IMAGE_SIZE, 3))
    images = images.astype(np.float32)  # [B, H, W, 3] BGR minus mean
    labels = rng.integers(0, 1000, batch).astype(np.int32)
    for mode in modes:
      _common.log(f'{framework} {mode} batch {batch}: '
                  f'{args.warmup} warm-up + {args.runs} runs')
      if framework == 'jax':
        run = step_fns[mode](jnp.asarray(images), jnp.asarray(labels))
      else:
        run = step_fns[mode](images, labels)
      timing = _common.time_runs(run, runs=args.runs, warmup=args.warmup)
      rows.append({'framework': framework, 'mode': mode, 'batch': batch,
                   'images_per_s': batch / timing['median_s'], **timing})
      _common.log(f'  {rows[-1]["images_per_s"]:.1f} images/s')
  return rows


def main():
  args = parse_args()
  batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b]
  modes = [m for m in args.modes.split(',') if m]
  unknown = set(modes) - set(MODES)
  if unknown:
    raise SystemExit(f'unknown modes {sorted(unknown)}; valid: {MODES}')

  params = caffenet.init_params(caffenet.CaffeNet(), jax.random.key(0))
  report = {
      'benchmark': 'caffenet', 'image_size': IMAGE_SIZE,
      'dtype': 'float32', 'machine': _common.machine(),
      'jax': {'version': jax.__version__,
              'device': str(jax.devices()[0].device_kind),
              'params': caffenet.count_params(params)},
  }
  rows = measure('jax', jax_step_fns(params), modes, batch_sizes, args)
  if not args.no_torch:
    try:
      torch_info, torch_fns = torch_step_fns()
    except ImportError:
      report['torch'] = None
    else:
      report['torch'] = torch_info
      rows += measure('torch', torch_fns, modes, batch_sizes, args)
  report['results'] = rows

  speed = {(r['framework'], r['mode'], r['batch']): r['images_per_s']
           for r in rows}
  report['jax_over_torch'] = [
      {'mode': m, 'batch': b,
       'ratio': speed['jax', m, b] / speed['torch', m, b]}
      for m in modes for b in batch_sizes if ('torch', m, b) in speed]
  report['fcft_over_ft'] = [
      {'framework': f, 'batch': b,
       'ratio': speed[f, 'fcft', b] / speed[f, 'ft', b]}
      for f in ('jax', 'torch') for b in batch_sizes
      if (f, 'fcft', b) in speed and (f, 'ft', b) in speed]
  _common.print_json(report)


if __name__ == '__main__':
  main()
