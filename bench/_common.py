"""Helpers shared by the bench scripts: median-of-runs timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable


def time_runs(fn: Callable[[], Any], runs: int = 5,
              warmup: int = 1) -> dict[str, float]:
  """Times `fn()` `runs` times after `warmup` untimed calls (compilation).

  `fn` must block until its work is done (e.g. `jax.block_until_ready`),
  or asynchronous dispatch makes the times meaningless.

  Returns:
    median_s, min_s, max_s over the timed runs, and the run count.
  """
  if runs < 1:
    raise ValueError(f'runs must be >= 1, got {runs}')
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'min_s': min(times),
          'max_s': max(times), 'runs': runs}


def machine() -> dict[str, Any]:
  """What the numbers were measured on."""
  return {'platform': platform.platform(), 'processor': platform.processor(),
          'cpu_count': os.cpu_count(), 'python': platform.python_version()}


def print_json(payload: Any) -> None:
  json.dump(payload, sys.stdout, indent=2, sort_keys=False)
  sys.stdout.write('\n')
  sys.stdout.flush()


def log(message: str) -> None:
  """Progress on stderr, so stdout stays pure JSON."""
  print(message, file=sys.stderr, flush=True)
