"""Helpers shared by the bench scripts: median-of-runs timing, JSON output.

The machine these run on is usually shared: compare against a reference
measured in the same run (`interleaved_runs`), report ratios, and record the
load average (`load_average`) next to the numbers.
"""

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
  return interleaved_runs({'fn': fn}, runs=runs, warmup=warmup)['fn']


def interleaved_runs(fns: dict[str, Callable[[], Any]], runs: int = 5,
                     warmup: int = 1) -> dict[str, dict[str, float]]:
  """Times several blocking closures in alternation, A B, B A, A B, ...

  On a shared machine the load drifts during a benchmark; alternating the
  contenders (and reversing the order every round) exposes them to the same
  drift, so their ratio means something even when the times do not.

  Args:
    fns: name -> closure that blocks until its work is done.
    runs: timed rounds; every closure runs once per round.
    warmup: untimed rounds first (compilation, allocation).

  Returns:
    name -> {median_s, min_s, max_s, runs, cpu_median_s}: cpu_median_s is
    the process CPU time of a call (all threads), which a busy machine
    inflates less than the wall time.

  Raises:
    ValueError: runs < 1.
  """
  if runs < 1:
    raise ValueError(f'runs must be >= 1, got {runs}')
  names = list(fns)
  for _ in range(warmup):
    for name in names:
      fns[name]()
  times = {name: [] for name in names}
  cpu_times = {name: [] for name in names}
  for round_index in range(runs):
    for name in names if round_index % 2 == 0 else names[::-1]:
      start, cpu_start = time.perf_counter(), time.process_time()
      fns[name]()
      times[name].append(time.perf_counter() - start)
      cpu_times[name].append(time.process_time() - cpu_start)
  return {name: {'median_s': statistics.median(t), 'min_s': min(t),
                 'max_s': max(t), 'runs': runs,
                 'cpu_median_s': statistics.median(cpu_times[name])}
          for name, t in times.items()}


def load_average() -> list[float]:
  """1, 5 and 15 minute load averages (compare with cpu_count)."""
  return [round(value, 2) for value in os.getloadavg()]


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
