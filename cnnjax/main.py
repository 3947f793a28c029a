r"""Entry point: `python -m cnnjax.main --config configs/x.py[:args] --workdir W`.

Intentionally short: flags, optional multi-host setup, the resolved config
written to the workdir, then one call into the task registry.
"""

from __future__ import annotations

import logging as python_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cnnjax import config_lib
from cnnjax import tasks

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with `:args`.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where outputs are written.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() (multi-host; env or cluster provides '
    'the coordinator).')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietCheckpointing(python_logging.Filter):
  """Drops Orbax's INFO chatter so progress lines stay readable."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return (record.levelno >= python_logging.WARNING or
            '/orbax/' not in record.pathname)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietCheckpointing())
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  task_fn = tasks.get_task(config.get('task', ''))
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    config_lib.write_json_atomic(os.path.join(workdir, 'config.json'),
                                 config.to_dict())
  logging.info('task %s, workdir %s, %d devices', config.task, workdir,
               jax.device_count())
  task_fn(config, workdir)


if __name__ == '__main__':
  app.run(main)
