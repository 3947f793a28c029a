"""The `study` task: every experiment of the seeds in one workdir, then the report.

configs/study.py lists the steps in dependency order, each an experiment
config of its own (pretraining, finetuning, detection, classification,
analyses) with the task that runs it. This module runs them one after the
other in ONE workdir, so the nets, proposals and feature stores one step
computes are the next one's inputs, and records each finished step:

  <workdir>/study/study.json          the plan (steps, what they produce,
                                      the study's args, the demo's facts)
  <workdir>/study/done/<step>.json    a finished step: the fingerprint of
                                      its config, its time (written last)
  <workdir>/study/failed/<step>.json  a failed step's error (keep_going)
  <workdir>/report/                   cnnjax.reporting.report, at the end

A rerun skips every step whose marker holds the fingerprint of the step's
current config, so an interrupted study redoes only unfinished steps (and
those resume from their own caches); a step whose config changed runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from typing import Any, Callable

from absl import logging
import jax
import ml_collections

from cnnjax import config_lib
from cnnjax import nets
from cnnjax import progress as progress_lib
from cnnjax import tasks
from cnnjax.reporting import report

STUDY_DIR = 'study'


def train_net(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """The `net` step: `config.net` trained as every experiment would get it."""
  return nets.resolve(config, config.net, workdir)


# Step tasks beyond the registry: the finetuned nets as cnnjax.nets makes them.
STEP_TASKS = {'net': train_net}


def step_task(name: str) -> Callable:
  """The function of a step's task: a study step task or a registered one."""
  return STEP_TASKS[name] if name in STEP_TASKS else tasks.get_task(name)


def fingerprint(step: ml_collections.ConfigDict) -> str:
  """What decides a step's outputs: its task, workdir and config."""
  text = json.dumps({'task': step.task, 'workdir': step.workdir,
                     'config': step.config.to_dict()},
                    sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()


def _matches(name: str, step: ml_collections.ConfigDict, selector: str) -> bool:
  """A selector names the step, its group (`detect`) or a product."""
  return (selector == name or name.startswith(selector + '_') or
          selector in step.produces)


def select(config: ml_collections.ConfigDict) -> list[str]:
  """The steps `config.only` / `config.skip` leave, in the study's order.

  Raises:
    ValueError: a selector that matches no step (listing the valid ones).
  """
  steps = config.steps
  for selector in (*config.only, *config.skip):
    if not any(_matches(n, steps[n], selector) for n in config.order):
      groups = sorted({n.split('_')[0] for n in config.order})
      products = sorted({p for n in config.order for p in steps[n].produces})
      raise ValueError(
          f'only/skip: {selector!r} matches no step; steps: '
          f'{", ".join(config.order)}; groups: {", ".join(groups)}; '
          f'products: {", ".join(products)}')
  return [n for n in config.order
          if (not config.only or any(_matches(n, steps[n], s)
                                     for s in config.only))
          and not any(_matches(n, steps[n], s) for s in config.skip)]


def marker_path(workdir: str, name: str, kind: str = 'done') -> str:
  return os.path.join(workdir, STUDY_DIR, kind, f'{name}.json')


def is_done(workdir: str, name: str, step: ml_collections.ConfigDict) -> bool:
  """Whether the step finished under its current config."""
  path = marker_path(workdir, name)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get('fingerprint') == fingerprint(step)


def step_workdir(workdir: str, step: ml_collections.ConfigDict) -> str:
  """The step's own workdir: the study's, or one inside (or outside) it."""
  return os.path.normpath(os.path.join(workdir,
                                       os.path.expanduser(step.workdir)))


class _Progress:
  """Step i of n with the elapsed time and an ETA.

  The ETA is the remaining steps' expected seconds (configs/study.py: the
  measured demo figures, or full-scale estimates) scaled by how fast this
  run's steps have been against the same expectation. Steps that took less
  than a tenth of theirs found their work cached and say nothing of speed.
  """

  def __init__(self, expected: dict[str, float]):
    self._expected = expected
    self._start = time.monotonic()
    self._actual = self._planned = 0.0

  def start(self, index: int, names: list[str], what: str) -> None:
    elapsed = time.monotonic() - self._start
    speed = self._actual / self._planned if self._planned else 1.0
    left = speed * sum(self._expected[n] for n in names[index:])
    clock = progress_lib.format_seconds
    line = (f'study: step {index + 1}/{len(names)} {names[index]} ({what}); '
            f'{clock(elapsed)} elapsed, ETA {clock(left)}')
    logging.info(line)
    print(line, flush=True)

  def finish(self, name: str, seconds: float) -> None:
    if seconds >= 0.1 * self._expected[name]:
      self._actual += seconds
      self._planned += self._expected[name]


def _write_plan(config: ml_collections.ConfigDict, workdir: str,
                selected: list[str]) -> None:
  config_lib.write_json_atomic(
      os.path.join(workdir, STUDY_DIR, 'study.json'),
      {'runlocal': config.runlocal, 'args': config.args,
       'det_grid': config.det_grid,
       'demo': config.demo.to_dict() if config.demo else None,
       'steps': [{'name': n, 'task': config.steps[n].task,
                  'what': config.steps[n].what,
                  'produces': list(config.steps[n].produces),
                  'selected': n in selected} for n in config.order]})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the study's unfinished steps in order, then writes the report.

  Args:
    config: see configs/study.py (`steps`, `order`, `only`, `skip`,
      `keep_going`).
    workdir: the study's workdir, shared by every step.

  Returns:
    {'ran': steps run now, 'skipped': steps done earlier, 'failed': {step:
    error}, 'report': the report's path}.

  Raises:
    RuntimeError: a step failed (after the others ran, with keep_going).
  """
  workdir = os.path.abspath(workdir)
  names = select(config)
  writer = jax.process_index() == 0
  if writer:
    _write_plan(config, workdir, names)
  done = [n for n in names if is_done(workdir, n, config.steps[n])]
  todo = [n for n in names if n not in done]
  print(f'study: {len(names)} steps, {len(done)} done earlier '
        f'({", ".join(done) or "none"}), {len(todo)} to run', flush=True)
  progress = _Progress({n: float(config.steps[n].seconds) for n in todo})
  failed = {}
  for index, name in enumerate(todo):
    step = config.steps[name]
    progress.start(index, todo, step.what)
    start = time.monotonic()
    try:
      step_task(step.task)(step.config, step_workdir(workdir, step))
    except Exception as error:  # pylint: disable=broad-except
      if not config.keep_going:
        raise
      failed[name] = f'{type(error).__name__}: {error}'
      logging.error('study: step %s failed:\n%s', name,
                    traceback.format_exc())
      print(f'study: step {name} FAILED: {failed[name]}', flush=True)
      if writer:
        config_lib.write_json_atomic(
            marker_path(workdir, name, 'failed'),
            {'step': name, 'error': failed[name],
             'traceback': traceback.format_exc()})
      progress.finish(name, time.monotonic() - start)
      continue
    seconds = time.monotonic() - start
    progress.finish(name, seconds)
    if writer:
      stale = marker_path(workdir, name, 'failed')
      if os.path.exists(stale):
        os.remove(stale)
      config_lib.write_json_atomic(
          marker_path(workdir, name),
          {'step': name, 'task': step.task, 'fingerprint': fingerprint(step),
           'seconds': round(seconds, 1),
           'finished': time.strftime('%Y-%m-%d %H:%M:%S')})
    print(f'study: step {name} done in '
          f'{progress_lib.format_seconds(seconds)}', flush=True)

  path = report.write_report(workdir) if writer else ''
  print(f'study: report {path}', flush=True)
  if failed:
    raise RuntimeError(f'study: {len(failed)} steps failed (see {path}): ' +
                       '; '.join(f'{n}: {e}' for n, e in failed.items()))
  return {'ran': todo, 'skipped': done, 'failed': failed, 'report': path}
