"""A job's records finished so far, in input order, while it runs (``GET /batch_inference/job_results``).

A chunk's result file is written whole, renamed into place when the chunk ends, and sorted by line;
the invalid lines found by validation are in ``line_errors.jsonl``, the lines that repeat an earlier
one in ``duplicates.jsonl``. So the records of every line
before the first chunk that has not finished are final, and a k-way merge of those files gives
them in input order: the same records, byte for byte, that gather will write to the two output
files. Once the outputs are written, they are read instead (they also hold a whole-file error,
line null, which comes last). Each call reads the files afresh: a reader follows a job by asking
again with ``after_line`` set to the last line it has. A job on a store is read from there (copies
in a temp folder, gone after). Pure: no Prefect.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchinfer.pipeline.duplicates import DuplicateCopies, duplicate_entries
from batchinfer.pipeline.gather import line_records
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress
from batchinfer.pipeline.jobstore import JobPlace

Record = tuple[int, str, dict[str, Any]]


def finished_so_far(place: JobPlace, after_line: int = 0) -> Iterator[str]:
    """The raw JSON lines (newline-terminated) of the job's final records after ``after_line``,
    in input order, up to the first chunk that has not finished."""
    progress = place.read_progress()
    if progress is None or (progress.chunk_key is None and not progress.outputs_ready):
        return  # still validating: no line is final yet
    layout = place.layout
    if progress.outputs_ready:
        with place.local_copies([layout.success, layout.errors]) as copy:
            yield from _from_outputs(copy, after_line)
        return
    finished, boundary = _finished_chunks(place, progress)
    with place.local_copies([layout.line_errors, layout.duplicates, *finished]) as copy:
        yield from _from_chunks(copy, [copy.root / layout.name_of(p) for p in finished], boundary, after_line)


def _finished_chunks(place: JobPlace, progress: JobProgress) -> tuple[list[Path], int | None]:
    """The result files of the chunks that finished before the first that has not, and that
    chunk's first line (None: every chunk has finished)."""
    assert progress.chunk_key is not None
    results = [place.layout.chunk_result(index, progress.chunk_key) for index in range(progress.chunks)]
    present = place.present(results)
    for index, result in enumerate(results):
        if result not in present:
            return results[:index], _first_line(place.layout, progress, index)
    return results, None


def _from_chunks(
    layout: JobLayout, finished: list[Path], boundary: int | None, after_line: int
) -> Iterator[str]:
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


def _first_line(layout: JobLayout, progress: JobProgress, index: int) -> int:
    """Chunk ``index``'s first input line: in the progress, or (a job that started before it was
    there) its input file, on the disk of the machine that runs it."""
    if index < len(progress.chunk_first_lines):
        return progress.chunk_first_lines[index]
    with open(layout.chunk_input(index), encoding="utf-8") as handle:
        return int(json.loads(handle.readline())["line"])
