"""Making a finished job's failed lines run again (``POST /batch_inference/retry_failed``).

A chunk's result file is what the job reuses when it runs again: a line with a record there is not
sent again, a line without one is. So retrying the failed lines is taking their error records out
of the result files; the job then runs again under its id, sends only those lines, and gather
rewrites both output files with the new outcomes merged in, in input order, each line once.

By default only the failures that may succeed later are taken out (``engines.base.retryable``:
timeouts, 408, 429, 5xx, connection errors); ``every_error`` takes every inference error. Lines the
input file got wrong (``line_errors.jsonl``: not JSON, no messages ...) are never in a result file:
they would fail the same way. Pure: no Prefect.
"""

from __future__ import annotations

from pathlib import Path

from batchinfer.engines.base import retryable
from batchinfer.pipeline.chunk_run import records_to_keep
from batchinfer.pipeline.jobfiles import JobProgress, atomic_write
from batchinfer.pipeline.jobstore import JobPlace


def strip_failed(place: JobPlace, progress: JobProgress, every_error: bool = False) -> int:
    """Take the error records a retry runs again out of the job's chunk result files (each
    rewritten whole, atomically; on the job's store when it has one); how many lines were taken out."""
    if progress.chunk_key is None:
        return 0
    layout = place.layout
    results = [layout.chunk_result(index, progress.chunk_key) for index in range(progress.chunks)]
    taken = 0
    with place.local_copies(results) as copy:
        for result in results:
            name = layout.name_of(result)
            local = copy.root / name
            stripped = _strip(local, every_error) if local.exists() else 0
            if stripped and place.store is not None:
                place.store.publish(local, name)
            taken += stripped
    return taken


def _strip(result: Path, every_error: bool) -> int:
    kept, taken = records_to_keep(result, lambda code: every_error or retryable(code))
    if taken:
        with atomic_write(result) as out:
            out.writelines(raw + "\n" for raw, _ in kept.values())
    return taken
