"""The garbage collector while a job runs.

A job's process holds a large heap before the first request: Prefect, pydantic's schemas, the
engine, a million objects or more. CPython's collector walks the whole of it on each full
collection, and a job allocates fast (a few dozen objects a line, tens of thousands of lines a
minute), so full collections come often: on a loopback model server they took a third of the job
process's CPU, and the job ran at two thirds of the rate it runs at without them.

``quiet_collector()`` freezes the heap the job starts with (``gc.freeze``: those objects are left
out of every collection until the job ends) and collects the young generation less often. The
job's own cyclic garbage is still collected, and nothing is lost: on the way out the heap is
unfrozen and the thresholds are put back, so a process that runs a job in-process (a notebook, a
test, ``serve``'s in-process runs) gets its collector back as it was. Jobs that overlap in one
process share one setting: the first in sets it, the last out restores it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations between young collections (CPython 3.11's default is 700). Large enough that a young
# collection comes once per few hundred lines instead of every dozen; young objects are cheap to
# walk, so the pause stays well under a millisecond.
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def quiet_collector(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """The job's starting heap frozen and young collections rarer, until the block ends."""
    _enter(young_threshold)
    try:
        yield
    finally:
        _leave()


def _enter(young_threshold: int) -> None:
    global _holders, _saved
    with _lock:
        _holders += 1
        if _holders == 1:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(young_threshold, _saved[0]), *_saved[1:])


def _leave() -> None:
    global _holders, _saved
    with _lock:
        _holders -= 1
        if _holders == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            gc.unfreeze()
            _saved = None
