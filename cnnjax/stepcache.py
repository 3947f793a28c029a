"""The workdir's cache of computed arrays, one .npz per pipeline step.

Detection (SVMs, box regressors, detections) and the analyses (entropy,
selectivity, subsets, CKA) save what a step computed so that a rerun only
redraws its tables and figures. A cached file records the settings it was
computed with; a rerun with other settings, or on features extracted anew
(their store's config hash is part of the settings), computes again instead
of silently reusing stale arrays.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

from absl import logging
import numpy as np

_SETTINGS_KEY = '_settings'


def store_signature(store) -> str:
  """What identifies a feature store's contents (its extraction's hash).

  Args:
    store: a `features.store.FeatureStore`.
  """
  return str(store.metadata.get('config_hash', store.directory))


def cached_arrays(path: str, compute: Callable[[], Mapping[str, Any]],
                  **settings: Any) -> dict[str, np.ndarray]:
  """The arrays an earlier run saved at `path` with the same settings.

  Otherwise `compute()` runs and its arrays are saved (atomically: a crash
  leaves no half-written file that a rerun would trust) with the settings.

  Args:
    path: the .npz file.
    compute: returns name -> array.
    **settings: JSON-able values the arrays depend on.

  Returns:
    name -> numpy array.
  """
  signature = json.dumps(settings, sort_keys=True, default=str)
  if os.path.exists(path):
    with np.load(path) as found:
      if (_SETTINGS_KEY in found.files and
          str(found[_SETTINGS_KEY]) == signature):
        return {k: found[k] for k in found.files if k != _SETTINGS_KEY}
    logging.info('%s was computed with other settings: recomputing', path)
  arrays = {name: np.asarray(value) for name, value in compute().items()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.savez(f, **{_SETTINGS_KEY: np.array(signature)}, **arrays)
  os.replace(tmp, path)
  return arrays
