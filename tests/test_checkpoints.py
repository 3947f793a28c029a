"""TrainCheckpointer retention/restore and load_params across device counts."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from cnnjax import checkpoints


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {'conv1': {'kernel': rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
                    'bias': rng.normal(size=(4,)).astype(np.float32)},
          'fc8': {'kernel': rng.normal(size=(4, 2)).astype(np.float32)}}


def _replicated(tree, devices):
  mesh = jax.make_mesh((len(devices),), ('data',), devices=devices)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.device_put(tree, sharding), sharding


def test_retention_keeps_snapshots_and_the_latest(tmp_path):
  params = _tree(0)
  opt_state = optax.sgd(0.1, 0.9).init(params)
  saved = []
  with checkpoints.TrainCheckpointer(tmp_path, every_steps=3,
                                     keep_steps=(2, 5)) as ckpt:
    for step in range(1, 11):
      if ckpt.should_save(step, total_steps=10):
        ckpt.save(step, params, opt_state, {'step': step})
        ckpt.wait_until_finished()
        saved.append(step)
    assert saved == [2, 3, 5, 6, 9, 10]
    # Rolling 3, 6, 9 deleted once newer ones exist; snapshots kept.
    assert ckpt.all_steps() == [2, 5, 10]
  assert checkpoints.latest_step(tmp_path) == 10
  assert checkpoints.load_metadata(tmp_path, step=5) == {'step': 5}


def test_restore_onto_sharded_targets_is_exact(tmp_path):
  devices = jax.devices()
  params, sharding = _replicated(_tree(1), devices)
  tx = optax.sgd(0.1, 0.9)
  opt_state = jax.jit(tx.init, out_shardings=sharding)(params)
  opt_state = tx.update(params, opt_state, params)[1]  # non-zero momentum
  with checkpoints.TrainCheckpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(7, params, opt_state, {'step': 7, 'note': 'x'})
    ckpt.wait_until_finished()

  def target(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        tree)

  with checkpoints.TrainCheckpointer(tmp_path, every_steps=1) as ckpt:
    assert ckpt.latest_step() == 7
    got_params, got_state, meta = ckpt.restore(7, target(params),
                                               target(opt_state))
  assert meta == {'step': 7, 'note': 'x'}
  assert (jax.tree_util.tree_structure(got_state) ==
          jax.tree_util.tree_structure(opt_state))
  for got, want in zip(jax.tree_util.tree_leaves((got_params, got_state)),
                       jax.tree_util.tree_leaves((params, opt_state))):
    assert got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_restore_with_a_changed_model_names_the_checkpoint(tmp_path):
  params = _tree(2)
  opt_state = optax.sgd(0.1).init(params)
  with checkpoints.TrainCheckpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(1, params, opt_state, {})
    ckpt.wait_until_finished()
    wrong = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((x.shape[0] + 1,) + x.shape[1:],
                                       x.dtype), params)
    with pytest.raises(ValueError,
                       match=r'checkpoints/1/params .*conv1/bias: stored '
                       r'\(\(4,\).*expected \(\(5,\)'):
      ckpt.restore(1, wrong, jax.eval_shape(lambda: opt_state))


_FRESH_PROCESS_LOAD = """
import sys
import jax
import numpy as np
from cnnjax import checkpoints
assert jax.device_count() == 1, jax.devices()
params = checkpoints.load_params(sys.argv[1])
flat = {'/'.join(k): np.asarray(v) for k, v in
        __import__('flax').traverse_util.flatten_dict(params).items()}
np.savez(sys.argv[2], **flat)
"""


def test_eight_device_checkpoint_loads_in_a_fresh_single_device_process(
    tmp_path):
  assert jax.device_count() == 8, 'conftest should give 8 fake devices'
  params, _ = _replicated(_tree(3), jax.devices())
  opt_state = optax.sgd(0.1, 0.9).init(params)
  with checkpoints.TrainCheckpointer(tmp_path / 'run', every_steps=1) as ckpt:
    ckpt.save(4, params, opt_state, {'step': 4})
    ckpt.wait_until_finished()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  out = tmp_path / 'loaded.npz'
  result = subprocess.run(
      [sys.executable, '-c', _FRESH_PROCESS_LOAD, str(tmp_path / 'run'),
       str(out)], env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  # No orbax warnings about unrestorable items or read-only directories.
  assert 'WARNING' not in result.stderr, result.stderr
  loaded = np.load(out)
  expected = _tree(3)
  assert sorted(loaded.files) == ['conv1/bias', 'conv1/kernel', 'fc8/kernel']
  for name in loaded.files:
    layer, leaf = name.split('/')
    np.testing.assert_array_equal(loaded[name], expected[layer][leaf])


def test_load_params_of_a_missing_step_lists_the_available_ones(tmp_path):
  checkpoints.save_params(tmp_path, _tree(4), step=3)
  np.testing.assert_array_equal(
      np.asarray(checkpoints.load_params(tmp_path)['fc8']['kernel']),
      _tree(4)['fc8']['kernel'])
  with pytest.raises(FileNotFoundError, match=r'step 9 .*\[3\]'):
    checkpoints.load_params(tmp_path, step=9)
