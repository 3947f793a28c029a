"""Process pools for CPU-bound data preparation, with a progress line.

Selective search and the demo-data generator are pure Python/OpenCV work per
image, so they scale with processes, not threads. Workers are *spawned*: a
parent that already runs JAX (multithreaded) must not fork.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import cv2

from cnnjax import progress

_Job = TypeVar('_Job')
_Result = TypeVar('_Result')


def _init_worker() -> None:
  # One OpenCV thread per process: the parallelism is over jobs.
  cv2.setNumThreads(1)


def map_in_processes(fn: Callable[[_Job], _Result], jobs: Sequence[_Job], *,
                     num_workers: int, what: str,
                     sizes: Iterable[int] | None = None,
                     unit: str = 'images') -> list[_Result]:
  """`[fn(job) for job in jobs]`, in `num_workers` processes, in order.

  Args:
    fn: a module-level function (it is pickled by name).
    jobs: picklable arguments, one per call.
    num_workers: processes; 0 or 1 runs everything in this process.
    what: name of the work in the progress line.
    sizes: per job, how many `unit`s it covers (default 1 each).
    unit: what the progress line counts.

  Returns:
    The results in the order of `jobs`.
  """
  sizes = list(sizes) if sizes is not None else [1] * len(jobs)
  line = progress.Progress(what, sum(sizes), unit)
  if num_workers <= 1 or len(jobs) <= 1:
    results = []
    for job, size in zip(jobs, sizes):
      results.append(fn(job))
      line.update(size)
    return results
  results: list[Any] = []
  with concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context('spawn'),
      initializer=_init_worker) as pool:
    chunk = max(1, len(jobs) // (8 * num_workers))
    for result, size in zip(pool.map(fn, jobs, chunksize=chunk), sizes):
      results.append(result)
      line.update(size)
  return results
