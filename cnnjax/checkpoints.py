"""Orbax checkpoints: params, optimiser state and metadata as separate items.

Layout: `<workdir>/checkpoints/<step>/{params,opt_state,meta}` (a
CheckpointManager directory). A params-only checkpoint (e.g. imported Caffe
weights) is the same layout without `opt_state`, so every consumer restores
through `load_params`, which needs neither the optimiser nor the sharding
that wrote the checkpoint. Training goes through `TrainCheckpointer`: a
rolling latest checkpoint for resuming plus snapshot steps kept forever.
"""

from __future__ import annotations

import logging as logging_lib
import os
from typing import Any, Iterable, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = 'checkpoints'
ITEMS = ('params', 'opt_state', 'meta')


def _item_handlers() -> dict:
  """Explicit handlers: without them orbax warns about every unknown item."""
  return {'params': ocp.StandardCheckpointHandler(),
          'opt_state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler()}


class _OrbaxInfoFilter(logging_lib.Filter):
  """Drops orbax's INFO records (dozens per save); warnings pass."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return (record.levelno >= logging_lib.WARNING or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def quiet_orbax_info() -> None:
  """Keeps a training log readable: orbax logs every save step at INFO."""
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxInfoFilter())


def _reading_manager(manager_dir: str) -> ocp.CheckpointManager:
  # Not `read_only=True`: that option only adds warnings; nothing is saved.
  if not os.path.isdir(manager_dir):
    raise FileNotFoundError(f'no checkpoint directory at {manager_dir}')
  return ocp.CheckpointManager(
      manager_dir, item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(create=False))


def checkpoint_dir(workdir_or_path: str) -> str:
  """The manager directory for a workdir or a direct checkpoint directory."""
  path = os.path.abspath(workdir_or_path)
  nested = os.path.join(path, CHECKPOINT_SUBDIR)
  return nested if os.path.isdir(nested) else path


def save_params(directory: str, params: Any, step: int = 0,
                metadata: Optional[dict] = None) -> str:
  """Writes a params-only checkpoint that `load_params(directory)` restores.

  Returns:
    The manager directory written (`directory/checkpoints`).
  """
  manager_dir = os.path.join(os.path.abspath(directory), CHECKPOINT_SUBDIR)
  with ocp.CheckpointManager(manager_dir,
                             item_names=('params', 'meta')) as manager:
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        meta=ocp.args.JsonSave(dict(metadata or {}))), force=True)
    manager.wait_until_finished()
  return manager_dir


def _abstract_on_default_device(tree_metadata: Any) -> Any:
  """ShapeDtypeStructs on the default device, whatever sharding wrote them."""
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def to_struct(meta):
    return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding)

  return jax.tree_util.tree_map(
      to_struct, tree_metadata,
      is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))


def _resolve_step(manager: ocp.CheckpointManager, manager_dir: str,
                  step: Optional[int]) -> int:
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f'no checkpoint found in {manager_dir}')
  if step is None:
    return max(steps)
  if step not in steps:
    raise FileNotFoundError(
        f'no checkpoint for step {step} in {manager_dir}; have {sorted(steps)}')
  return step


def load_params(workdir_or_path: str, step: Optional[int] = None) -> Any:
  """Restores params only, onto the default device, for interactive analysis.

  Works whatever sharding or device count wrote the checkpoint.

  Args:
    workdir_or_path: a training workdir or a checkpoint manager directory.
    step: the step to restore; the latest when None.
  """
  manager_dir = checkpoint_dir(workdir_or_path)
  with _reading_manager(manager_dir) as manager:
    step = _resolve_step(manager, manager_dir, step)
    metadata = manager.item_metadata(step)['params']
    target = _abstract_on_default_device(metadata)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))
  return restored['params']


def load_metadata(workdir_or_path: str, step: Optional[int] = None) -> dict:
  """The JSON metadata item stored beside the params."""
  manager_dir = checkpoint_dir(workdir_or_path)
  with _reading_manager(manager_dir) as manager:
    step = _resolve_step(manager, manager_dir, step)
    return dict(manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'])


def latest_step(workdir_or_path: str) -> Optional[int]:
  """The newest finished checkpoint step, or None where there is none."""
  manager_dir = checkpoint_dir(workdir_or_path)
  if not os.path.isdir(manager_dir):
    return None
  with _reading_manager(manager_dir) as manager:
    return manager.latest_step()


def _leaf_signatures(tree: Any) -> dict[str, tuple]:
  """'/'-joined key path -> (shape, dtype) of every array leaf."""

  def key_name(key):
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(key_name(k) for k in path):
          (tuple(leaf.shape), np.dtype(leaf.dtype))
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def _check_matches(stored: Any, target: Any, where: str) -> None:
  """Raises a ValueError naming the leaves where `stored` != `target`."""
  have, want = _leaf_signatures(stored), _leaf_signatures(target)
  problems = [f'{name}: stored {have.get(name)}, expected {want.get(name)}'
              for name in sorted(set(have) | set(want))
              if have.get(name) != want.get(name)]
  if problems:
    raise ValueError(
        f'checkpoint {where} does not match this run (changed model or '
        f'optimiser rules?): ' + '; '.join(problems[:5]) +
        (f' and {len(problems) - 5} more' if len(problems) > 5 else ''))


class TrainCheckpointer:
  """Checkpoints of a training run: resume state plus kept snapshots.

  Kept: every step in `keep_steps` (forever: e.g. the pretraining snapshots
  5K..310K that the training-dynamics analysis reads) and the newest
  checkpoint (the rolling one, written every `every_steps` and at the final
  step; older rolling ones are deleted). Saves are asynchronous: the arrays
  are copied off the device before `save` returns, so the caller may donate
  them to the next step at once.
  """

  def __init__(self, workdir: str, *, every_steps: int,
               keep_steps: Iterable[int] = ()):
    self.keep_steps = frozenset(int(s) for s in keep_steps)
    self.every_steps = int(every_steps)
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
    quiet_orbax_info()
    policies = ocp.checkpoint_managers
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=_item_handlers(),
        options=ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=1),
                policies.CustomSteps(sorted(self.keep_steps)),
            ])))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int, total_steps: int) -> bool:
    """Rolling every `every_steps`, every kept snapshot, and the final step."""
    return (step == total_steps or step in self.keep_steps or
            (self.every_steps > 0 and step % self.every_steps == 0))

  def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
    """Starts an asynchronous save of the three items at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(dict(meta))), force=True)
    logging.info('checkpoint: step %d -> %s', step, self.directory)

  def restore(self, step: int, params_target: Any,
              opt_state_target: Any) -> tuple[Any, Any, dict]:
    """Restores (params, opt_state, meta) at `step` onto the targets' shardings.

    Args:
      step: a step of `all_steps()`.
      params_target, opt_state_target: trees of `jax.ShapeDtypeStruct` with
        the shardings (and structure) the training step expects.

    Raises:
      ValueError: the stored trees do not match the targets (e.g. a config
        change in the model or the freezing rules), naming the leaves.
    """
    stored = self._manager.item_metadata(step)
    # Orbax would silently pad or truncate arrays of another shape.
    for item, target in (('params', params_target),
                         ('opt_state', opt_state_target)):
      _check_matches(stored[item].tree, target,
                     f'{self.directory}/{step}/{item}')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(params_target),
        opt_state=ocp.args.StandardRestore(opt_state_target),
        meta=ocp.args.JsonRestore()))
    return restored['params'], restored['opt_state'], dict(restored['meta'])

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'TrainCheckpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def params_to_numpy(params: Any) -> Any:
  return jax.tree_util.tree_map(np.asarray, params)
