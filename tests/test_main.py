"""The entry point: task registry errors and locked configs."""

import subprocess
import sys
import textwrap

import pytest

from cnnjax import tasks


def test_unknown_task_lists_valid_tasks():
  with pytest.raises(ValueError, match=r"'nope'.*train"):
    tasks.get_task('nope')


def test_every_registered_task_resolves():
  for name in tasks.TASKS:
    assert callable(tasks.get_task(name))


def _run_main(tmp_path, config_body, *extra):
  config = tmp_path / 'cfg.py'
  config.write_text(textwrap.dedent(config_body))
  return subprocess.run(
      [sys.executable, '-m', 'cnnjax.main', f'--config={config}',
       f'--workdir={tmp_path / "w"}', *extra],
      capture_output=True, text=True, timeout=120)


def test_main_rejects_unknown_task(tmp_path):
  result = _run_main(tmp_path, '''
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict({'task': 'nope'})
      ''')
  assert result.returncode != 0
  assert "unknown task 'nope'" in result.stderr


def test_main_config_is_locked(tmp_path):
  result = _run_main(tmp_path, '''
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict({'task': 'train'})
      ''', '--config.no_such_key=1')
  assert result.returncode != 0
  assert 'no_such_key' in result.stderr
