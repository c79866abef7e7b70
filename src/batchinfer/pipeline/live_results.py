"""A job's records finished so far, in input order, while it runs (``GET /batch_inference/job_results``).

A chunk's result file is written whole, renamed into place when the chunk ends, and sorted by line;
the invalid lines found by validation are in ``line_errors.jsonl``, the lines that repeat an earlier
one in ``duplicates.jsonl``. So the records of every line
before the first chunk that has not finished are final, and a k-way merge of those files gives
them in input order: the same records, byte for byte, that gather will write to the two output
files. Once the outputs are written, they are read instead (they also hold a whole-file error,
line null, which comes last). Each call reads the files afresh: a reader follows a job by asking
again with ``after_line`` set to the last line it has. Pure: no Prefect.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchinfer.pipeline.duplicates import DuplicateCopies, duplicate_entries
from batchinfer.pipeline.gather import line_records
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, read_progress

Record = tuple[int, str, dict[str, Any]]


def finished_so_far(layout: JobLayout, after_line: int = 0) -> Iterator[str]:
    """The raw JSON lines (newline-terminated) of the job's final records after ``after_line``,
    in input order, up to the first chunk that has not finished."""
    progress = read_progress(layout)
    if progress is None:
        return iter(())
    if progress.outputs_ready:
        return _from_outputs(layout, after_line)
    if progress.chunk_key is None:  # still validating: no line is final yet
        return iter(())
    return _from_chunks(layout, progress, after_line)


def _from_chunks(layout: JobLayout, progress: JobProgress, after_line: int) -> Iterator[str]:
    assert progress.chunk_key is not None
    finished: list[Path] = []
    boundary: int | None = None  # the first line of the first unfinished chunk
    for index in range(progress.chunks):
        result = layout.chunk_result(index, progress.chunk_key)
        if not result.exists():
            boundary = _first_line(layout.chunk_input(index))
            break
        finished.append(result)
    sources = [
        line_records(layout.line_errors),
        duplicate_entries(layout.duplicates),
        *(line_records(path) for path in finished),
    ]
    copies = DuplicateCopies(layout.duplicates)
    for record in _merged(sources):
        if boundary is not None and record[0] >= boundary:
            return  # (a duplicate before it copies a line before it: one already final)
        line, raw, _ = copies.resolve(record)
        if line > after_line:
            yield raw


def _from_outputs(layout: JobLayout, after_line: int) -> Iterator[str]:
    whole_file: list[str] = []
    numbered = (record for record in line_records(layout.errors) if not _whole_file(record, whole_file))
    for line, raw, _ in _merged([line_records(layout.success), numbered]):
        if line > after_line:
            yield raw
    if after_line == 0:
        yield from whole_file


def _whole_file(record: Record, into: list[str]) -> bool:
    """Whether ``record`` is a whole-file error (line null); such records are kept in ``into``."""
    if record[0] is None:
        into.append(record[1])
        return True
    return False


def _merged(sources: Iterable[Iterator[Record]]) -> Iterator[Record]:
    return heapq.merge(*sources, key=lambda record: record[0])


def _first_line(chunk_input: Path) -> int:
    with open(chunk_input, encoding="utf-8") as handle:
        return int(json.loads(handle.readline())["line"])
