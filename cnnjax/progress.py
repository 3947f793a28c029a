"""One progress line for long loops: done/total, rate and ETA.

Feature extraction, the data workers and the streamed analyses all run for
minutes to hours over a known amount of work; they report it the same way,
at most every `every_s` seconds (a log line per item would drown the log),
and always once the work is complete.
"""

from __future__ import annotations

import time
from typing import Callable

from absl import logging


def format_seconds(seconds: float) -> str:
  """h:mm:ss, or '?' for an unknown (infinite or NaN) duration."""
  if not seconds < float('inf'):
    return '?'
  minutes, secs = divmod(int(round(seconds)), 60)
  return f'{minutes // 60}:{minutes % 60:02d}:{secs:02d}'


class Progress:
  """Counts work done and logs `what: done/total unit, rate, elapsed, ETA`.

  The rate is the mean since the start (work items are alike: a recent
  window would only add noise), and the ETA assumes it holds.

  Args:
    what: name of the work in the log line.
    total: units of work to do.
    unit: what is counted ('rows', 'images', 'chunks').
    every_s: the least time between two log lines before the end.
    clock: seconds from an arbitrary origin (tests pass a fake one).
  """

  def __init__(self, what: str, total: int, unit: str = 'items',
               every_s: float = 10.0,
               clock: Callable[[], float] = time.monotonic):
    self.what, self.total, self.unit = what, total, unit
    self.every_s, self._clock = every_s, clock
    self.done = 0
    self._start = self._last = clock()

  def update(self, count: int = 1) -> None:
    """Counts `count` more units; logs if due, and always on completion."""
    self.done += count
    now = self._clock()
    if self.done < self.total and now - self._last < self.every_s:
      return
    self._last = now
    elapsed = now - self._start
    rate = self.done / elapsed if elapsed > 0 else float('inf')
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    logging.info('%s: %d/%d %s, %.1f %s/s, %s elapsed, ETA %s', self.what,
                 self.done, self.total, self.unit, rate, self.unit,
                 format_seconds(elapsed), format_seconds(eta))
