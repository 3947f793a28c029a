"""The explicit registry of tasks `cnnjax.main` can run (`config.task`).

Each entry names `module:function`; the function is called as
`fn(config, workdir)`. Modules are imported only when their task runs, so a
task's heavy dependencies never slow the others down.
"""

from __future__ import annotations

import importlib
from typing import Callable

TASKS = {
    'analyze': 'cnnjax.analyze:run',
    'classify': 'cnnjax.classify:run',
    'detect': 'cnnjax.detection.task:run',
    'study': 'cnnjax.study:run',
    'train': 'cnnjax.train:run',
}


def get_task(name: str) -> Callable:
  """Returns the entry point of task `name`; a ValueError lists valid names."""
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; valid tasks: '
                     f'{", ".join(sorted(TASKS))}')
  module_name, fn_name = TASKS[name].split(':')
  return getattr(importlib.import_module(module_name), fn_name)
