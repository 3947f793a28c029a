"""The one training loop: ImageNet pretraining and every finetuning variant.

A variant is configuration only (configs/imagenet_caffenet.py,
configs/sun397_finetune.py, configs/pascal_finetune.py): the data kind
('classification' or R-CNN 'voc_windows'), the optimiser rules (which layers
train, at which lr/decay multipliers, which are frozen) and the
initialisation (Caffe's Gaussian init, or a checkpoint with some layers
dropped and re-initialised).

Data parallel: `jax.jit` over a ('data',) mesh, params and optimiser state
replicated, every batch sharded along 'data'; the same code runs on CPU with
fake devices, one GPU, or many hosts (`--distributed` in cnnjax.main).

Deterministic and resumable: batch `s` is a pure function of (seed, s) and
dropout uses `fold_in(seed, s)`, so a run killed after its step-N checkpoint
and restarted in the same workdir ends with the same params, bit for bit, as
an uninterrupted run. Rerunning a finished run with a larger `total_steps`
continues it (Caffe's step schedule does not depend on the total).

Outputs in the workdir: `checkpoints/` (see cnnjax.checkpoints) and
`metrics.jsonl`, one JSON object per logged step: train records carry
`step, loss, top1, grad_norm, lr, images_per_sec`; evaluation records carry
`step, val_loss, val_top1, val_top5, val_mean_class_top1, val_examples`. With
`config.eval.final_split` set (SUN-397's test split), the last step also
gets one record of that split, the same keys under its name (`test_top1`,
...); a run found finished without it (trained before, or killed between
its last checkpoint and that record) is evaluated when run again. With
`config.tensorboard=True` (needs the `tensorboard` extra, tensorboardX) the
same scalars also go to TensorBoard event files in `<workdir>/tensorboard`
(`tensorboard --logdir <workdir>`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

from absl import logging
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnnjax import checkpoints
from cnnjax import optim
from cnnjax import progress as progress_lib
from cnnjax import sharding as sharding_lib
from cnnjax.data import datasets
from cnnjax.data import preprocess
from cnnjax.data import proposals as proposals_lib
from cnnjax.data import regions
from cnnjax.data import sources
from cnnjax.models import caffenet

Batch = dict[str, np.ndarray]
# train_data(start_step) -> this process's batches start_step, start_step+1, ...
TrainData = Callable[[int], Iterator[Batch]]
# eval_data() -> padded batches with 'image', 'label' and optionally 'mask'.
EvalData = Callable[[], Iterable[Batch]]

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm stopped being finite."""


def lr_at(optim_config: ml_collections.ConfigDict, step: int) -> float:
  """Caffe's step-policy learning rate of update `step` (host-side, logging)."""
  return optim_config.base_lr * optim_config.gamma ** (
      step // optim_config.stepsize)


def rules_from_config(optim_config: ml_collections.ConfigDict) -> optim.Rules:
  """Config rules (lists once serialised) as `(regex, (lr, decay) | None)`."""
  return tuple((pattern, None if mults is None else tuple(mults))
               for pattern, mults in optim_config.rules)


def build_model(config: ml_collections.ConfigDict,
                stop_gradient_after: Optional[str] = None) -> caffenet.CaffeNet:
  return caffenet.CaffeNet(num_classes=config.model.num_classes,
                           width=config.model.width,
                           dropout_rate=config.model.dropout_rate,
                           stop_gradient_after=stop_gradient_after)


def merge_pretrained(fresh: Any, loaded: Any, drop: str = '',
                     source: str = 'checkpoint') -> Any:
  """`fresh` params with every leaf not matching `drop` taken from `loaded`.

  Finetuning keeps the pretrained layers and replaces the head: `drop` is a
  regex over '/'-joined names (e.g. '^fc8/'), and the dropped leaves keep
  their fresh Caffe initialisation.

  Args:
    fresh: freshly initialised params of the model being trained.
    loaded: params restored from `source`.
    drop: regex of the names to re-initialise; '' drops nothing.
    source: where `loaded` came from, for error messages.

  Raises:
    ValueError: a kept leaf missing from `loaded`, of another shape, or a
      leaf of `loaded` the model does not have; each names the parameter.
  """
  dropped = re.compile(drop) if drop else None
  fresh_flat = flax.traverse_util.flatten_dict(fresh, sep='/')
  loaded_flat = flax.traverse_util.flatten_dict(loaded, sep='/')
  merged = {}
  for name, value in fresh_flat.items():
    if dropped is not None and dropped.search(name):
      logging.info('init: %s freshly initialised (init_drop %r)', name, drop)
      merged[name] = value
      continue
    if name not in loaded_flat:
      raise ValueError(f'{source}: has no parameter {name!r} (add it to '
                       f'init_drop to initialise it afresh)')
    if tuple(loaded_flat[name].shape) != tuple(value.shape):
      raise ValueError(
          f'{source}: parameter {name!r} has shape '
          f'{tuple(loaded_flat[name].shape)} but the model needs '
          f'{tuple(value.shape)} (different width/num_classes? add it to '
          f'init_drop to initialise it afresh)')
    merged[name] = jnp.asarray(loaded_flat[name], value.dtype)
  unused = sorted(name for name in loaded_flat if name not in fresh_flat and
                  not (dropped is not None and dropped.search(name)))
  if unused:
    raise ValueError(f'{source}: parameters {unused} do not exist in the '
                     f'model (wrong architecture?)')
  return flax.traverse_util.unflatten_dict(merged, sep='/')


def xavier_kernels(params: Any, seed: int) -> Any:
  """Hidden-layer kernels redrawn with Caffe's XavierFiller; the rest kept.

  XavierFiller draws U(-a, a), a = sqrt(3 / fan_in), fan_in = count / num
  (for HWIO and (in, out) kernels: the product of all but the last axis).
  The demo configs use it: at demo widths Caffe's fixed Gaussian stds
  (SPEC 1) shrink the input-dependent part of fc7 to ~1e-5 of its mean
  (5e-3 at full width), and SGD does not leave the chance plateau within a
  demo's few hundred steps (measured on the demo set, widths 0.125 and 0.25:
  chance accuracy after 300-400 steps at lr 0.01, 0.02 and 0.05). The
  classifier (fc8) and the biases keep Caffe's init: a Xavier fc8 starts
  the demo net with logits of std ~8, saturated, and learns slower
  (measured at lr 0.001, 400 steps, 64 px: val top-1 14% with a Xavier fc8,
  22-24% with fc8 scaled to 1/10 or 1/100 of it).

  Args:
    params: a parameter tree.
    seed: draws are a pure function of (seed, leaf position).
  """
  flat = flax.traverse_util.flatten_dict(params)
  for index, (path, value) in enumerate(sorted(flat.items())):
    if path[-1] != 'kernel' or path[0] == 'fc8':
      continue
    limit = math.sqrt(3.0 / math.prod(value.shape[:-1]))
    rng = np.random.default_rng([seed, index])
    flat[path] = jnp.asarray(rng.uniform(-limit, limit, value.shape),
                             value.dtype)
  return flax.traverse_util.unflatten_dict(flat)


INIT_FILLERS = ('gaussian', 'xavier')


def initial_params(config: ml_collections.ConfigDict, model: caffenet.CaffeNet,
                   image_size: int) -> Any:
  """Fresh params, or `config.init_from` with `config.init_drop` fresh.

  Fresh means Caffe's per-layer Gaussian init (SPEC 1), or with
  `config.init_filler='xavier'` Caffe's XavierFiller kernels (demo configs).

  Raises:
    ValueError: an unknown init_filler.
  """
  filler = config.get('init_filler', 'gaussian')
  if filler not in INIT_FILLERS:
    raise ValueError(f'init_filler={filler!r}; valid: '
                     f'{", ".join(INIT_FILLERS)}')
  fresh = caffenet.init_params(model, jax.random.key(config.seed), image_size)
  if filler == 'xavier':
    fresh = xavier_kernels(fresh, config.seed)
  if not config.get('init_from'):
    return fresh
  step = config.get('init_step')
  loaded = checkpoints.load_params(config.init_from, step)
  source = f'{config.init_from} (step {"latest" if step is None else step})'
  logging.info('init: params from %s', source)
  return merge_pretrained(fresh, loaded, config.get('init_drop', ''), source)


def _xent(logits, labels):
  # Caffe's SoftmaxWithLoss in float32, whatever the logits' dtype.
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def make_train_step(model: caffenet.CaffeNet, tx: optax.GradientTransformation,
                    frozen: Any, seed: int) -> Callable:
  """The un-jitted step (params, opt_state, batch, step) -> (..., metrics)."""
  base_key = jax.random.key(seed)

  def train_step(params, opt_state, batch, step):
    dropout_key = jax.random.fold_in(base_key, step)

    def loss_fn(p):
      logits, _ = model.apply({'params': p}, batch['image'], train=True,
                              rngs={'dropout': dropout_key})  # [B, K]
      return _xent(logits, batch['label']).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optim.keep_frozen(optax.apply_updates(params, updates),
                                   params, frozen)
    metrics = {
        'loss': loss,
        'top1': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'grad_norm': optax.tree.norm(grads),
    }
    return new_params, opt_state, metrics

  return train_step


def make_eval_step(model: caffenet.CaffeNet) -> Callable:
  """(params, batch) -> masked sums of loss, top-1 and top-5 hits, count,
  and top-1 hits and counts per class (for the mean per-class accuracy)."""

  def eval_step(params, batch):
    logits, _ = model.apply({'params': params}, batch['image'], train=False)
    labels = batch['label']                                   # [B]
    mask = batch.get('mask', jnp.ones(labels.shape, bool)).astype(jnp.float32)
    top_k = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # [B, 5]
    hits = mask * (top_k[:, 0] == labels)                     # [B]
    num_classes = logits.shape[-1]
    return {
        'loss': jnp.sum(mask * _xent(logits, labels)),
        'top1': jnp.sum(hits),
        'top5': jnp.sum(mask * jnp.any(top_k == labels[:, None], axis=-1)),
        'count': jnp.sum(mask),
        'class_top1': jax.ops.segment_sum(hits, labels, num_classes),
        'class_count': jax.ops.segment_sum(mask, labels, num_classes),
    }

  return eval_step


def _put_batch(batch: Batch, sharding: jax.sharding.NamedSharding) -> dict:
  """This process's rows of the global batch -> global arrays on the mesh."""
  return {key: jax.make_array_from_process_local_data(sharding,
                                                      np.asarray(value))
          for key, value in batch.items()}


def _check_divisible(batch_size: int, mesh: jax.sharding.Mesh, key: str):
  if batch_size % mesh.size:
    raise ValueError(f'config {key}={batch_size} is not divisible by the '
                     f'{mesh.size} devices of the data mesh')


class _MetricsLog:
  """metrics.jsonl in the workdir, trimmed to `start_step` on (re)start;
  optionally the same scalars as TensorBoard events in `<workdir>/tensorboard`.

  A run killed after its last checkpoint logged steps it will redo; they are
  dropped so the file reads as one run (and purged from TensorBoard's view).
  """

  def __init__(self, workdir: str, start_step: int, enabled: bool,
               tensorboard: bool = False):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled
    self.writer = None
    if not enabled:
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= start_step]
    tmp = f'{self.path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, self.path)
    if tensorboard:
      self.writer = tensorboard_writer(os.path.join(workdir, TENSORBOARD_DIR),
                                       purge_step=start_step + 1)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')
    if self.writer is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)):
          self.writer.add_scalar(key, value, record['step'])
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def tensorboard_writer(logdir: str, purge_step: Optional[int] = None):
  """A TensorBoard event writer (tensorboardX: no TensorFlow needed).

  Raises:
    ImportError: tensorboardX is absent, with how to install it.
  """
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("config.tensorboard=True needs tensorboardX: pip "
                      "install 'cnnjax[tensorboard]'") from e
  return tensorboardX.SummaryWriter(logdir, purge_step=purge_step)


class _Progress:
  """Train metrics since the last log line, throughput and ETA."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.history = []  # host metrics of the steps since the last record
    self.tick, self.tick_step = time.time(), start_step
    self.seconds_per_step = None

  def add(self, values: dict[str, float]) -> None:
    self.history.append(values)

  def exclude(self, seconds: float) -> None:
    """Keeps evaluation time out of images/s and the ETA."""
    self.tick += seconds

  def record(self, step: int, lr: float) -> dict:
    """Mean metrics since the last record, lr and images/s; then resets."""
    elapsed = max(time.time() - self.tick, 1e-9)
    steps = max(step - self.tick_step, 1)
    self.seconds_per_step = elapsed / steps
    record = {k: float(np.mean([h[k] for h in self.history]))
              for k in self.history[0]}
    record.update(step=step, lr=lr,
                  images_per_sec=steps * self.batch_size / elapsed)
    self.history.clear()
    self.tick, self.tick_step = time.time(), step
    return record

  def eta(self, step: int) -> str:
    return progress_lib.format_seconds(
        (self.total_steps - step) * (self.seconds_per_step or 0))


def _json_safe(config: ml_collections.ConfigDict) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=str))


def evaluate(eval_step: Callable, params: Any, eval_data: EvalData,
             sharding: jax.sharding.NamedSharding,
             split: str = 'val') -> dict[str, float]:
  """Top-1/top-5, loss and mean per-class top-1 over every (padded, masked)
  evaluation batch, keyed `<split>_top1` etc.; the last is what shows
  learning on R-CNN windows, where answering background everywhere scores
  75% top-1 (and 1/21 per class)."""
  totals = None
  for batch in eval_data():
    sums = jax.device_get(eval_step(params, _put_batch(batch, sharding)))
    totals = sums if totals is None else jax.tree_util.tree_map(
        np.add, totals, sums)
  if totals is None or totals['count'] == 0:
    raise ValueError('evaluation data yielded no examples')
  count = float(totals['count'])
  present = totals['class_count'] > 0
  return {f'{split}_loss': float(totals['loss']) / count,
          f'{split}_top1': float(totals['top1']) / count,
          f'{split}_top5': float(totals['top5']) / count,
          f'{split}_mean_class_top1': float(np.mean(
              totals['class_top1'][present] / totals['class_count'][present])),
          f'{split}_examples': int(count)}


def has_record(workdir: str, step: int, key: str) -> bool:
  """Whether the run's metrics.jsonl holds `key` in a record of `step`."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return any(r['step'] == step and key in r for r in records)


def final_eval_pending(config: ml_collections.ConfigDict, workdir: str,
                       step: int) -> bool:
  """Whether the run asks for a final-split evaluation that `step` lacks."""
  split = config.eval.get('final_split', '')
  return bool(split) and not has_record(workdir, step, f'{split}_top1')


def train(config: ml_collections.ConfigDict, workdir: str,
          train_data: TrainData, *, eval_data: Optional[EvalData] = None,
          final_data: Optional[EvalData] = None,
          mesh: Optional[jax.sharding.Mesh] = None) -> Any:
  """Trains (or resumes) `config` in `workdir`; returns the final params.

  Args:
    config: see the configs/ files: seed, total_steps, model, input
      (batch_size, image size), optim (Caffe solver values and rules), init_*,
      checkpoint_every, keep_steps, log_every, eval_every.
    workdir: checkpoints and metrics go here; an existing checkpoint resumes.
    train_data: `train_data(start_step)` iterates this process's part of the
      global batches start_step, start_step + 1, ... (dicts of 'image' float32
      [b, S, S, 3] BGR mean-subtracted and 'label' int32 [b]).
    eval_data: optional; `eval_data()` iterates padded evaluation batches.
    final_data: optional; batches of `config.eval.final_split`, evaluated
      once the last step is done (also when a finished run lacks it).
    mesh: the ('data',) mesh; all devices by default.

  Returns:
    The params after `config.total_steps` steps (replicated on the mesh).

  Raises:
    NonFiniteLossError: the loss or gradient norm became NaN/inf; the last
      checkpoint (written before that step) is kept.
  """
  mesh = sharding_lib.data_mesh() if mesh is None else mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data'))
  _check_divisible(config.input.batch_size, mesh, 'input.batch_size')
  total_steps = config.total_steps
  image_size = config.input.image_size
  rules = rules_from_config(config.optim)
  is_main = jax.process_index() == 0

  # Structure, rules and boundary from shapes only (no init when resuming).
  param_shapes = jax.eval_shape(lambda: caffenet.init_params(
      build_model(config), jax.random.key(0), image_size))
  boundary = optim.frozen_boundary(param_shapes, rules)
  frozen = optim.frozen_mask(param_shapes, rules)
  model = build_model(config, stop_gradient_after=boundary)
  logging.info('stop_gradient_after: %s', boundary)
  tx = optim.caffe_optimizer(
      param_shapes, rules, base_lr=config.optim.base_lr,
      gamma=config.optim.gamma, stepsize=config.optim.stepsize,
      momentum=config.optim.momentum, weight_decay=config.optim.weight_decay)

  def on_mesh(shapes):
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        shapes)

  checkpointer = checkpoints.TrainCheckpointer(
      workdir, every_steps=config.checkpoint_every,
      keep_steps=config.get('keep_steps', ()))
  with checkpointer:
    start_step = checkpointer.latest_step()
    if start_step is not None:
      params, opt_state, meta = checkpointer.restore(
          start_step, on_mesh(param_shapes),
          on_mesh(jax.eval_shape(tx.init, param_shapes)))
      logging.info('resumed from step %d (%s)', start_step,
                   checkpointer.directory)
      if meta.get('seed') != config.seed:
        logging.warning('checkpoint seed %s != config seed %s',
                        meta.get('seed'), config.seed)
    else:
      start_step = 0
      params = jax.device_put(initial_params(config, build_model(config),
                                             image_size), replicated)
      opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
    eval_step = None
    if eval_data is not None or final_data is not None:
      _check_divisible(config.eval.batch_size, mesh, 'eval.batch_size')
      eval_step = jax.jit(make_eval_step(build_model(config)),
                          in_shardings=(replicated, data_sharding),
                          out_shardings=replicated,
                          compiler_options=caffenet.compiler_options())
    metrics_log = _MetricsLog(workdir, start_step, enabled=is_main,
                              tensorboard=config.get('tensorboard', False))

    def final_eval(step):
      split = config.eval.final_split
      results = evaluate(eval_step, params, final_data, data_sharding, split)
      metrics_log.write({'step': step, **results})
      logging.info('step %d final %s eval: %s', step, split, ', '.join(
          f'{k} {v:.4g}' for k, v in results.items()))

    if start_step >= total_steps:
      logging.info('already trained to step %d >= total_steps %d', start_step,
                   total_steps)
      if final_data is not None and final_eval_pending(config, workdir,
                                                       start_step):
        final_eval(start_step)
      metrics_log.close()
      return params

    train_step = jax.jit(
        make_train_step(model, tx, frozen, config.seed),
        in_shardings=(replicated, replicated, data_sharding, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1), compiler_options=caffenet.compiler_options())

    def save(step):
      checkpointer.save(step, params, opt_state, {
          'step': step, 'total_steps': total_steps, 'seed': config.seed,
          # Batches are pure functions of (seed, step): this is the position.
          'data': {'seed': config.seed, 'next_batch': step},
          'stop_gradient_after': boundary, 'config': _json_safe(config)})

    progress = _Progress(start_step, total_steps, config.input.batch_size)
    pending = None  # (step, device metrics) not yet checked

    def check(entry):
      step, device_metrics = entry
      values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      if not (math.isfinite(values['loss']) and
              math.isfinite(values['grad_norm'])):
        checkpointer.wait_until_finished()
        raise NonFiniteLossError(
            f'non-finite loss {values["loss"]} / grad norm '
            f'{values["grad_norm"]} at step {step}; last good checkpoint: '
            f'{checkpointer.latest_step()} in {checkpointer.directory}')
      progress.add(values)

    batches = train_data(start_step)
    try:
      for step in range(start_step, total_steps):
        batch = _put_batch(next(batches), data_sharding)
        params, opt_state, metrics = train_step(params, opt_state, batch,
                                                np.int32(step))
        if pending is not None:
          check(pending)  # the previous step, while this one runs
        pending = (step, metrics)
        done = step + 1
        log_now = done % config.log_every == 0 or done == total_steps
        save_now = checkpointer.should_save(done, total_steps)
        eval_now = eval_data is not None and (
            done == total_steps or
            (config.eval_every > 0 and done % config.eval_every == 0))
        final_now = final_data is not None and done == total_steps
        if not (log_now or save_now or eval_now or final_now):
          continue
        check(pending)  # nothing non-finite is ever saved or logged
        pending = None
        if log_now:
          record = progress.record(done, lr_at(config.optim, step))
          metrics_log.write(record)
          logging.info(
              'step %d/%d loss %.4f top1 %.3f lr %.2g %.1f img/s ETA %s',
              done, total_steps, record['loss'], record['top1'], record['lr'],
              record['images_per_sec'], progress.eta(done))
        if eval_now:
          started = time.time()
          results = evaluate(eval_step, params, eval_data, data_sharding)
          progress.exclude(time.time() - started)
          metrics_log.write({'step': done, **results})
          logging.info('step %d eval: %s', done, ', '.join(
              f'{k} {v:.4g}' for k, v in results.items()))
        if final_now:
          final_eval(done)
        if save_now:  # last: a checkpoint implies its step's records exist
          save(done)
    finally:
      close = getattr(batches, 'close', None)
      if close is not None:
        close()
      metrics_log.close()
      checkpointer.wait_until_finished()
  return params


class Data(NamedTuple):
  """What `run` feeds `train`: batch factories and their cleanup."""
  train: TrainData
  eval: Optional[EvalData]
  close: Callable[[], None]
  final: Optional[EvalData] = None   # config.eval.final_split's batches


def classification_data(config: ml_collections.ConfigDict,
                        workdir: str) -> Data:
  """Augmented training batches and centre-crop evaluation batches.

  `config.input`: dataset ('demo' | 'imagenet2012' | 'sun397'), data_dir,
  split, resize, image_size (the crop), mean_path, demo (options of the
  generated set); `config.eval.split` ('' for no evaluation) and
  `config.eval.final_split` (optional: evaluated once, at the end).

  Raises:
    ValueError: the dataset's class count differs from model.num_classes.
  """
  inp = config.input
  mean = preprocess.mean_image(inp.mean_path or None, inp.resize)
  shards = dict(process_index=jax.process_index(),
                process_count=jax.process_count())

  def source(split):
    found = sources.classification_source(
        inp.dataset, split, inp.data_dir or None, workdir=workdir,
        demo_options=inp.demo.to_dict())
    if found.num_classes != config.model.num_classes:
      raise ValueError(
          f'input.dataset={inp.dataset!r} has {found.num_classes} classes but '
          f'model.num_classes={config.model.num_classes}')
    return found

  batcher = preprocess.ClassificationBatcher(
      source(inp.split), inp.batch_size, seed=config.seed, train=True,
      resize=inp.resize, crop=inp.image_size, mean=mean, **shards)

  def eval_data_of(split):
    if not split:
      return None
    eval_source = source(split)
    return lambda: preprocess.eval_batches(
        eval_source, config.eval.batch_size, resize=inp.resize,
        crop=inp.image_size, mean=mean, **shards)

  return Data(batcher.iterate, eval_data_of(config.eval.split), batcher.close,
              eval_data_of(config.eval.get('final_split', '')))


def voc_windows(config: ml_collections.ConfigDict, split: str,
                workdir: str, batch_size: int) -> regions.WindowSampler:
  """R-CNN finetuning windows (GT + proposals) of a VOC2007 split (SPEC 3).

  Proposals come from R-CNN's `.mat` file when `input.proposals_mat` names
  one, else selective search cached per image in `input.proposals_dir`
  (default `<workdir>/proposals/<split>`).
  """
  inp = config.input
  images = datasets.voc_split(config.data, split)
  mat = inp.proposals_mat.format(split=split) if inp.proposals_mat else ''
  if mat:
    boxes = proposals_lib.load_rcnn_mat(mat, [im.image_id for im in images])
  else:
    cache = os.path.join(inp.proposals_dir or os.path.join(workdir,
                                                           'proposals'), split)
    boxes = proposals_lib.compute_proposals(images, cache,
                                            num_workers=inp.proposals_workers)
  windows = regions.build_windows(images, boxes)
  logging.info('%s windows: %d images, %d foreground, %d background', split,
               len(images), int((windows.labels > 0).sum()),
               int((windows.labels == 0).sum()))
  return regions.WindowSampler(
      windows, images, batch_size, inp.fg_fraction, seed=config.seed,
      size=inp.image_size, context=inp.context,
      mean=preprocess.mean_image(inp.mean_path) if inp.mean_path else None,
      process_index=jax.process_index(), process_count=jax.process_count())


def window_data(config: ml_collections.ConfigDict, workdir: str) -> Data:
  """Window batches of `input.split`; evaluation: window accuracy on
  `config.eval.num_batches` fixed batches of `eval.split` (same fg share)."""
  if config.model.num_classes != 21:
    raise ValueError('voc_windows needs model.num_classes=21 (20 classes + '
                     f'background), got {config.model.num_classes}')
  sampler = voc_windows(config, config.input.split, workdir,
                        config.input.batch_size)
  samplers = [sampler]
  eval_data = None
  if config.eval.split:
    eval_sampler = voc_windows(config, config.eval.split, workdir,
                               config.eval.batch_size)
    samplers.append(eval_sampler)

    def eval_data():
      return (eval_sampler.batch_at(step)
              for step in range(config.eval.num_batches))

  def close():
    for each in samplers:
      each.close()

  return Data(sampler.iterate, eval_data, close)


DATA_KINDS = {'classification': classification_data, 'voc_windows': window_data}


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
  """An exclusive lock file: concurrent runs wait instead of both training."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    yield


def _check_init(config: ml_collections.ConfigDict) -> None:
  """Fails before any data is prepared when the init checkpoint is missing."""
  if config.init_drop and not config.init_from:
    raise ValueError(f'init_drop={config.init_drop!r} but no init_from: '
                     'finetuning needs init_from=<pretraining workdir or '
                     'imported checkpoint>')
  if config.init_from:
    available = checkpoints.latest_step(config.init_from)
    if available is None:
      raise FileNotFoundError(f'init_from={config.init_from!r} holds no '
                              'checkpoint')


# Config keys that do not change what a run computes: resuming (or
# reusing a finished run) under other values of these is fine.
_NON_RECIPE_KEYS = ('total_steps', 'log_every', 'eval_every', 'eval',
                    'checkpoint_every', 'keep_steps', 'init_pretrain',
                    'tensorboard')


def recipe(config: Any) -> Any:
  """`config` (as JSON) without run lengths, logging cadence and locations:
  what decides the params a run produces."""
  if not isinstance(config, dict):
    return config
  return {key: recipe(value) for key, value in config.items()
          if key not in _NON_RECIPE_KEYS and not key.endswith(
              ('_dir', 'workers'))}


def recipe_fingerprint(config: ml_collections.ConfigDict) -> str:
  """8 hex digits naming a recipe, for cache directories of trained nets."""
  text = json.dumps(recipe(_json_safe(config)), sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:8]


def check_same_recipe(config: ml_collections.ConfigDict, workdir: str,
                      step: int) -> None:
  """Refuses to resume or reuse a run trained under another recipe.

  Caches of trained nets (the demo pretraining, `<workdir>/nets/<name>`)
  would otherwise hand out params of an older config without a word.

  Raises:
    ValueError: naming the workdir and the differing keys.
  """
  stored = checkpoints.load_metadata(workdir, step).get('config')
  if stored is None:
    return
  want, have = recipe(_json_safe(config)), recipe(stored)
  if want == have:
    return
  flat_want = flax.traverse_util.flatten_dict(want, sep='.')
  flat_have = flax.traverse_util.flatten_dict(have, sep='.')
  differing = sorted(key for key in set(flat_want) | set(flat_have)
                     if flat_want.get(key) != flat_have.get(key))
  raise ValueError(
      f'{workdir} holds a run of another config (step {step}); differing '
      f'keys: {", ".join(differing[:8])}. Use a new workdir, or delete this '
      'one to retrain.')


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """The `train` task: pretraining or finetuning, as `config` says.

  When `config.init_pretrain` holds a pretraining config (the `runlocal`
  finetuning configs do), that run is trained (or resumed, or found finished)
  in `config.init_from` first, so a demo finetuning works from nothing.
  Concurrent runs in one workdir wait for each other (a lock file), so two
  experiments asking for the same net train it once.

  Returns:
    The final params.

  Raises:
    ValueError: an unknown `input.kind` (listing the valid ones), or a
      workdir trained under another config.
  """
  if config.get('init_pretrain'):
    logging.info('pretraining first: %s', config.init_from)
    run(config.init_pretrain, config.init_from)
  with _exclusive(os.path.join(workdir, '.lock')):
    done = checkpoints.latest_step(workdir)
    if done is not None:
      check_same_recipe(config, workdir, done)
      if done >= config.total_steps and not final_eval_pending(
          config, workdir, done):
        logging.info('%s: already trained to step %d', workdir, done)
        return checkpoints.load_params(workdir, done)
    else:
      _check_init(config)
    kind = config.input.kind
    if kind not in DATA_KINDS:
      raise ValueError(f'input.kind={kind!r}; valid: {", ".join(DATA_KINDS)}')
    data = DATA_KINDS[kind](config, workdir)
    try:
      return train(config, workdir, data.train, eval_data=data.eval,
                   final_data=data.final)
    finally:
      data.close()
