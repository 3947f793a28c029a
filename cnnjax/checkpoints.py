"""Orbax checkpoints: params, optimiser state and metadata as separate items.

Layout: `<workdir>/checkpoints/<step>/{params,opt_state,meta}` (a
CheckpointManager directory). A params-only checkpoint (e.g. imported Caffe
weights) is the same layout without `opt_state`, so every consumer restores
through `load_params`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = 'checkpoints'


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
  with ocp.CheckpointManager(manager_dir, item_names=('params', 'meta'),
                             options=ocp.CheckpointManagerOptions(
                                 read_only=True)) as manager:
    step = _resolve_step(manager, manager_dir, step)
    metadata = manager.item_metadata(step)['params']
    target = _abstract_on_default_device(metadata)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))
  return restored['params']


def load_metadata(workdir_or_path: str, step: Optional[int] = None) -> dict:
  """The JSON metadata item stored beside the params."""
  manager_dir = checkpoint_dir(workdir_or_path)
  with ocp.CheckpointManager(manager_dir, item_names=('params', 'meta'),
                             options=ocp.CheckpointManagerOptions(
                                 read_only=True)) as manager:
    step = _resolve_step(manager, manager_dir, step)
    return dict(manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'])


def params_to_numpy(params: Any) -> Any:
  return jax.tree_util.tree_map(np.asarray, params)
