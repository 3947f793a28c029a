"""The progress line: when it logs, and its rate, elapsed time and ETA."""

import logging

from cnnjax import progress


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def messages(caplog):
  return [r.getMessage() for r in caplog.records if r.name == 'absl']


def test_logs_at_most_every_interval_and_always_at_the_end(caplog):
  caplog.set_level(logging.INFO)
  clock = FakeClock()
  line = progress.Progress('extract test', 1000, 'rows', every_s=30.0,
                           clock=clock)
  clock.now += 10.0
  line.update(100)                       # 10 s since the start: quiet
  assert messages(caplog) == []
  clock.now += 30.0
  line.update(300)                       # 40 s: 400 rows at 10 rows/s
  assert messages(caplog) == [
      'extract test: 400/1000 rows, 10.0 rows/s, 0:00:40 elapsed, '
      'ETA 0:01:00']
  clock.now += 29.0
  line.update(100)                       # 29 s after the last line: quiet
  assert len(messages(caplog)) == 1
  clock.now += 3531.0                    # 3600 s in all
  line.update(500)                       # complete: logs although not due
  assert messages(caplog)[-1] == (
      'extract test: 1000/1000 rows, 0.3 rows/s, 1:00:00 elapsed, '
      'ETA 0:00:00')
  assert line.done == 1000


def test_complete_work_logs_even_within_the_interval(caplog):
  caplog.set_level(logging.INFO)
  clock = FakeClock()
  line = progress.Progress('statistics', 3, 'chunks', clock=clock)
  for _ in range(3):
    clock.now += 0.5
    line.update()
  assert messages(caplog) == [
      'statistics: 3/3 chunks, 2.0 chunks/s, 0:00:02 elapsed, ETA 0:00:00']


def test_format_seconds():
  assert progress.format_seconds(0.4) == '0:00:00'
  assert progress.format_seconds(59.6) == '0:01:00'
  assert progress.format_seconds(3 * 3600 + 62) == '3:01:02'
  assert progress.format_seconds(float('inf')) == '?'
  assert progress.format_seconds(float('nan')) == '?'
