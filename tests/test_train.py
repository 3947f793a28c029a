"""The training loop: freezing, resume, devices, errors, configs, demo run."""

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import pytest

from cnnjax import checkpoints
from cnnjax import config_lib
from cnnjax import optim
from cnnjax import sharding
from cnnjax import train
from cnnjax.models import caffenet

# Every train() call compiles the same tiny programs (and the resume test's
# subprocess compiles them again); XLA's persistent cache makes the repeats
# cheap. Results do not depend on it.
if not jax.config.jax_compilation_cache_dir:
  jax.config.update('jax_compilation_cache_dir', os.path.join(
      tempfile.gettempdir(), 'cnnjax_test_jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

SIZE, BATCH, CLASSES = 67, 8, 5
FC_FT_RULES = optim.freeze_rules(
    ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')) + optim.DEFAULT_RULES


def tiny_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      task='train', seed=0, total_steps=4,
      model=dict(num_classes=CLASSES, width=0.0625, dropout_rate=0.5),
      input=dict(batch_size=BATCH, image_size=SIZE),
      optim=dict(base_lr=0.01, gamma=0.1, stepsize=3, momentum=0.9,
                 weight_decay=5e-4, rules=optim.DEFAULT_RULES),
      init_from='', init_step=ml_collections.config_dict.placeholder(int),
      init_drop='', checkpoint_every=2, keep_steps=(), log_every=2,
      eval_every=0, eval=dict(batch_size=BATCH)))
  config.update(overrides)
  return config


def random_batches(start_step, nan_at=None, hang_at=None):
  """Batch s depends only on s (like the real batchers); optional faults."""
  for step in itertools.count(start_step):
    if step == hang_at:
      time.sleep(3600)  # killed here by the test
    rng = np.random.default_rng([7, step])
    image = (rng.normal(size=(BATCH, SIZE, SIZE, 3)) * 60).astype(np.float32)
    if step == nan_at:
      image[0, 0, 0, 0] = np.nan
    yield {'image': image,
           'label': rng.integers(0, CLASSES, BATCH).astype(np.int32)}


def flat(params):
  return {k: np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(params, sep='/').items()}


def initial(config):
  model = train.build_model(config)
  return flat(caffenet.init_params(model, jax.random.key(config.seed), SIZE))


def eval_data():
  """One padded evaluation batch: its last 3 rows are padding."""
  batch = next(random_batches(100))
  return [dict(batch, mask=np.arange(BATCH) < 5)]


REFERENCE = dict(total_steps=4, checkpoint_every=2, log_every=2, eval_every=2)


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  """An uninterrupted 8-device run that several tests compare against."""
  workdir = tmp_path_factory.mktemp('reference')
  params = train.train(tiny_config(**REFERENCE), str(workdir), random_batches,
                       eval_data=eval_data)
  return workdir, params


def subprocess_main(workdir, hang_at):
  """Entry of the training subprocess of the resume test."""
  train.train(tiny_config(**REFERENCE), workdir,
              lambda start: random_batches(start, hang_at=hang_at),
              eval_data=eval_data)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path,
                                                          reference_run):
  n = REFERENCE['total_steps'] // 2
  workdir = tmp_path / 'killed'
  code = ('import sys; sys.path.insert(0, sys.argv[1]); import test_train; '
          'test_train.subprocess_main(sys.argv[2], int(sys.argv[3]))')
  env = dict(os.environ,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  process = subprocess.Popen(
      [sys.executable, '-c', code, os.path.dirname(__file__), str(workdir),
       str(n)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 240
    done = workdir / 'checkpoints' / str(n) / 'commit_success.txt'
    while not done.exists():
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      assert time.time() < deadline, 'no step-N checkpoint after 240 s'
      time.sleep(0.2)
    time.sleep(0.5)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert checkpoints.latest_step(workdir) == n
  resumed = flat(train.train(tiny_config(**REFERENCE), str(workdir),
                             random_batches, eval_data=eval_data))
  for name, value in flat(reference_run[1]).items():
    np.testing.assert_array_equal(resumed[name], value, err_msg=name)
  # metrics.jsonl reads as one run: each logged step once, in order.
  with open(workdir / train.METRICS_FILE) as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps == [2, 2, 4, 4]  # train and eval records
  # Rerunning the finished run with a larger total continues it.
  train.train(tiny_config(**dict(REFERENCE, total_steps=2 * n + 1)),
              str(workdir), random_batches)
  assert checkpoints.latest_step(workdir) == 2 * n + 1
  assert checkpoints.load_metadata(workdir)['data']['next_batch'] == 2 * n + 1


def test_fc_ft_freezes_conv_layers_bit_identically(tmp_path):
  config = tiny_config(**REFERENCE)
  config.optim.rules = FC_FT_RULES
  params = flat(train.train(config, str(tmp_path), random_batches))
  start = initial(config)
  for name, value in start.items():
    if name.startswith('conv'):
      np.testing.assert_array_equal(params[name], value, err_msg=name)
  for name in ('fc6/kernel', 'fc7/kernel', 'fc8/kernel', 'fc8/bias'):
    assert not np.array_equal(params[name], start[name]), f'{name} frozen'
  assert checkpoints.load_metadata(tmp_path)['stop_gradient_after'] == 'pool5'


def _convolutions_in_step(rules):
  config = tiny_config(optim=dict(base_lr=0.01, gamma=0.1, stepsize=3,
                                  momentum=0.9, weight_decay=5e-4,
                                  rules=rules))
  shapes = jax.eval_shape(lambda: caffenet.init_params(
      train.build_model(config), jax.random.key(0), SIZE))
  model = train.build_model(config, optim.frozen_boundary(shapes, rules))
  tx = optim.caffe_optimizer(shapes, rules, base_lr=0.01, gamma=0.1,
                             stepsize=3)
  step = train.make_train_step(model, tx, optim.frozen_mask(shapes, rules), 0)
  batch = {'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), np.float32),
           'label': jax.ShapeDtypeStruct((BATCH,), np.int32)}
  text = jax.jit(step).lower(shapes, jax.eval_shape(tx.init, shapes), batch,
                             jax.ShapeDtypeStruct((), np.int32)).as_text()
  return text.count('stablehlo.convolution')


def test_fc_ft_step_has_no_backward_convolutions():
  # 8 forward convolutions (conv2, conv4, conv5 are 2 groups each). FT adds
  # 8 weight gradients and 7 input gradients (none for the image).
  assert _convolutions_in_step(optim.DEFAULT_RULES) == 8 + 8 + 7
  assert _convolutions_in_step(FC_FT_RULES) == 8


def test_one_device_and_eight_devices_train_the_same(tmp_path,
                                                    reference_run):
  assert jax.device_count() == 8
  config = tiny_config(**REFERENCE)
  one = flat(train.train(config, str(tmp_path), random_batches,
                         eval_data=eval_data,
                         mesh=sharding.data_mesh(jax.devices()[:1])))
  eight = flat(reference_run[1])
  assert not np.array_equal(one['fc8/kernel'], initial(config)['fc8/kernel'])
  for name, value in one.items():
    np.testing.assert_allclose(eight[name], value, rtol=2e-5, atol=1e-7,
                               err_msg=name)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**dict(REFERENCE, total_steps=6, log_every=100))
  with pytest.raises(train.NonFiniteLossError,
                     match=r'at step 3; last good checkpoint: 2'):
    train.train(config, str(tmp_path),
                lambda start: random_batches(start, nan_at=3))
  assert checkpoints.latest_step(tmp_path) == 2
  for name, value in flat(checkpoints.load_params(tmp_path)).items():
    assert np.all(np.isfinite(value)), name


def test_metrics_and_evaluation_records(reference_run):
  workdir, params = reference_run
  with open(workdir / train.METRICS_FILE) as f:
    records = [json.loads(line) for line in f]
  train_records = [r for r in records if 'loss' in r]
  eval_records = [r for r in records if 'val_top1' in r]
  assert [r['step'] for r in train_records] == [2, 4]
  # lr of the last update of each interval: steps 1 and 3 (drop at 3).
  assert [r['lr'] for r in train_records] == pytest.approx([0.01, 0.001])
  assert all(r['images_per_sec'] > 0 for r in train_records)
  assert [r['step'] for r in eval_records] == [2, 4]
  # The final evaluation equals a direct forward pass over the 5 real rows.
  batch = eval_data()[0]
  logits, _ = train.build_model(tiny_config()).apply(
      {'params': params}, batch['image'][:5], train=False)
  logits = np.asarray(logits, np.float64)
  labels = batch['label'][:5]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  top5 = np.argsort(-logits, -1)[:, :5]
  assert eval_records[-1]['val_examples'] == 5
  assert eval_records[-1]['val_top1'] == pytest.approx(
      np.mean(np.argmax(logits, -1) == labels))
  assert eval_records[-1]['val_top5'] == pytest.approx(
      np.mean([labels[i] in top5[i] for i in range(5)]))
  assert eval_records[-1]['val_loss'] == pytest.approx(
      -np.mean(log_probs[np.arange(5), labels]), rel=1e-4)
  correct = np.argmax(logits, -1) == labels
  assert eval_records[-1]['val_mean_class_top1'] == pytest.approx(np.mean(
      [correct[labels == c].mean() for c in np.unique(labels)]))


def final_data():
  """The final split: one batch, its last 2 rows padding."""
  batch = next(random_batches(200))
  return [dict(batch, mask=np.arange(BATCH) < 6)]


def _records(workdir):
  with open(os.path.join(workdir, train.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_final_split_is_evaluated_once_at_the_end(tmp_path):
  config = tiny_config(**REFERENCE)
  config.eval.final_split = 'test'
  workdir = str(tmp_path)
  params = train.train(config, workdir, random_batches, eval_data=eval_data,
                       final_data=final_data)
  finals = [r for r in _records(workdir) if 'test_top1' in r]
  assert [(r['step'], r['test_examples']) for r in finals] == [(4, 6)]
  batch = final_data()[0]
  logits, _ = train.build_model(config).apply(
      {'params': params}, batch['image'][:6], train=False)
  assert finals[0]['test_top1'] == pytest.approx(
      np.mean(np.argmax(logits, -1) == batch['label'][:6]))
  assert not train.final_eval_pending(config, workdir, 4)

  # A run that finished without its final record (trained before the
  # config asked for it) gets it when run again, once.
  kept = [r for r in _records(workdir) if 'test_top1' not in r]
  with open(os.path.join(workdir, train.METRICS_FILE), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  assert train.final_eval_pending(config, workdir, 4)
  for _ in range(2):
    train.train(config, workdir, random_batches, eval_data=eval_data,
                final_data=final_data)
  assert _records(workdir) == kept + finals


def test_merge_pretrained_drops_checks_and_names_parameters():
  fresh = {'conv1': {'kernel': np.zeros((2, 3), np.float32),
                     'bias': np.zeros(3, np.float32)},
           'fc8': {'kernel': np.zeros((3, 21), np.float32)}}
  loaded = {'conv1': {'kernel': np.ones((2, 3)), 'bias': np.ones(3)},
            'fc8': {'kernel': np.ones((3, 1000))}}
  merged = flat(train.merge_pretrained(fresh, loaded, drop='^fc8/'))
  np.testing.assert_array_equal(merged['conv1/kernel'], np.ones((2, 3)))
  np.testing.assert_array_equal(merged['fc8/kernel'], np.zeros((3, 21)))
  with pytest.raises(ValueError, match=r"'fc8/kernel' has shape \(3, 1000\)"):
    train.merge_pretrained(fresh, loaded, drop='', source='ckpt')
  with pytest.raises(ValueError, match="no parameter 'conv1/bias'"):
    train.merge_pretrained(fresh, {'conv1': {'kernel': np.ones((2, 3))},
                                   'fc8': loaded['fc8']}, drop='^fc8/')
  with pytest.raises(ValueError, match=r"\['fc9/kernel'\] do not exist"):
    train.merge_pretrained(fresh, dict(loaded, fc9={'kernel': np.ones(2)}),
                           drop='^fc8/')


def test_uncovered_rule_error_names_the_parameter(tmp_path):
  config = tiny_config(optim=dict(base_lr=0.01, gamma=0.1, stepsize=3,
                                  momentum=0.9, weight_decay=5e-4,
                                  rules=(('/kernel$', (1.0, 1.0)),)))
  with pytest.raises(ValueError, match="'conv1/bias' matches no optimiser"):
    train.train(config, str(tmp_path), random_batches)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'configs')


def _config_file(name):
  return config_lib.sibling_config_module(os.path.join(CONFIGS, name), name)


def test_finetune_configs_follow_spec_2():
  pascal = _config_file('pascal_finetune.py')
  for mode, steps, init_step in (('ft', 70_000, None), ('fcft', 70_000, None),
                                 ('fiftyfifty', 50_000, 50_000)):
    config = pascal.get_config(f'mode={mode},init_from=/pretrained')
    assert (config.total_steps, config.init_step) == (steps, init_step)
    assert (config.optim.base_lr, config.optim.stepsize,
            config.input.batch_size) == (0.001, 20_000, 128)
    assert config.model.num_classes == 21 and config.init_drop == '^fc8/'
    shapes = jax.eval_shape(lambda c=config: caffenet.init_params(
        train.build_model(c), jax.random.key(0), 227))
    mults = optim.match_rules(shapes, train.rules_from_config(config.optim))
    assert mults['fc8/kernel'] == (10.0, 1.0)
    assert mults['fc8/bias'] == (20.0, 0.0)
    assert mults['fc7/bias'] == (2.0, 0.0)
    assert mults['conv3/kernel'] == (None if mode == 'fcft' else (1.0, 1.0))
  sun = _config_file('sun397_finetune.py').get_config('mode=fcft,init_from=/p')
  assert (sun.total_steps, sun.model.num_classes) == (40_000, 397)
  pretrain = _config_file('imagenet_caffenet.py').get_config()
  assert (pretrain.total_steps, pretrain.optim.base_lr, pretrain.optim.stepsize,
          pretrain.input.batch_size) == (310_000, 0.01, 100_000, 256)
  assert 50_000 in pretrain.keep_steps and 310_000 in pretrain.keep_steps
  with pytest.raises(ValueError, match="mode='nope'"):
    pascal.get_config('mode=nope')


def _tiny_demo(config, data_dir):
  """Shrinks a runlocal config to seconds: tiny net, data and step count."""
  config.total_steps = 2
  config.model.width = 0.0625
  config.input.update(batch_size=BATCH, image_size=SIZE, data_dir=data_dir)
  config.eval.batch_size = BATCH
  config.update(checkpoint_every=0, keep_steps=(), log_every=1, eval_every=0)


def test_runlocal_fcft_trains_demo_pretraining_then_windows(tmp_path):
  data_dir = str(tmp_path / 'data')
  config = _config_file('pascal_finetune.py').get_config(
      f'runlocal,mode=fcft,data_dir={data_dir}')
  config.init_from = str(tmp_path / 'pretrain')
  _tiny_demo(config.init_pretrain, data_dir)
  config.init_pretrain.input.update(resize=72)
  config.init_pretrain.input.demo.update(num_classes=4, per_class=8,
                                         image_size=32)
  config.init_pretrain.model.num_classes = 4
  _tiny_demo(config, data_dir)
  config.input.update(context=2, proposals_workers=0)
  config.data.update(demo_trainval=4, demo_test=4)
  config.eval.num_batches = 1
  workdir = tmp_path / 'finetune'
  params = flat(train.run(config, str(workdir)))

  pretrained = flat(checkpoints.load_params(config.init_from))
  assert checkpoints.latest_step(config.init_from) == 2
  for name, value in pretrained.items():
    if name.startswith('conv'):  # copied, then frozen
      np.testing.assert_array_equal(params[name], value, err_msg=name)
  assert params['fc8/kernel'].shape == (pretrained['fc8/kernel'].shape[0], 21)
  with open(workdir / train.METRICS_FILE) as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if 'loss' in r] == [1, 2]
  assert records[-1]['val_examples'] == BATCH  # one batch of test windows
  # A second run finds both runs finished and trains nothing.
  again = flat(train.run(config, str(workdir)))
  np.testing.assert_array_equal(again['fc8/kernel'], params['fc8/kernel'])
  # The same workdir under another recipe refuses instead of reusing it.
  config.optim.base_lr *= 2
  with pytest.raises(ValueError, match=r'differing keys: optim\.base_lr'):
    train.run(config, str(workdir))


def test_recipe_ignores_run_length_logging_and_locations():
  config = tiny_config(eval_every=5, checkpoint_every=3)
  config.input.data_dir = '/one/place'
  other = tiny_config(total_steps=40, log_every=7)
  other.input.data_dir = '/another/place'
  assert train.recipe_fingerprint(config) == train.recipe_fingerprint(other)
  other.optim.momentum = 0.5
  assert train.recipe_fingerprint(config) != train.recipe_fingerprint(other)


def test_xavier_filler_redraws_hidden_kernels_and_keeps_fc8():
  model = train.build_model(tiny_config())
  params = caffenet.init_params(model, jax.random.key(0), SIZE)
  redrawn = flat(train.xavier_kernels(params, seed=3))
  before = flat(params)
  for name, value in redrawn.items():
    if name.endswith('kernel') and not name.startswith('fc8'):
      limit = np.sqrt(3.0 / np.prod(value.shape[:-1]))
      assert np.abs(value).max() <= limit, name
      assert np.abs(value).max() > 0.9 * limit, name  # U(-a, a), not Gaussian
      np.testing.assert_allclose(value.std(), limit / np.sqrt(3), rtol=0.1,
                                 err_msg=name)
    else:  # biases and the classifier keep Caffe's init
      np.testing.assert_array_equal(value, before[name], err_msg=name)


def _tensorboard_scalars(logdir):
  """(tag, step) -> value over every event file: TFRecord framing read by
  hand, Event protos parsed with tensorboardX's compiled schema."""
  event_pb2 = pytest.importorskip('tensorboardX.proto.event_pb2')
  scalars = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      length = int.from_bytes(data[offset:offset + 8], 'little')
      event = event_pb2.Event.FromString(
          data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4          # length, its crc, data, data crc
      for value in event.summary.value:
        scalars[value.tag, event.step] = value.simple_value
  return scalars


def test_tensorboard_events_mirror_the_metrics_records(tmp_path):
  pytest.importorskip('tensorboardX')
  config = tiny_config(**REFERENCE, tensorboard=True)
  workdir = str(tmp_path)
  train.train(config, workdir, random_batches, eval_data=eval_data)
  scalars = _tensorboard_scalars(os.path.join(workdir, train.TENSORBOARD_DIR))
  want = {(key, r['step']): value for r in _records(workdir)
          for key, value in r.items() if key != 'step'}
  assert set(scalars) == set(want)
  for key, value in want.items():
    assert scalars[key] == pytest.approx(value, rel=1e-6)
  # The flag is not part of the recipe: an existing run may turn it on.
  assert train.recipe_fingerprint(config) == train.recipe_fingerprint(
      tiny_config(**REFERENCE))
