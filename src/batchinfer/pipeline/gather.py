"""Merging line errors, chunk results and copies for duplicate lines (``duplicates``), in input
order, into the success and error files and the results table.

Every source is already sorted by line, so a streaming k-way merge keeps memory flat. The merge
checks the one promise that matters: each non-blank input line lands in exactly one output file.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchinfer import jsonwire
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobError
from batchinfer.pipeline.duplicates import DuplicateCopies, duplicate_entries
from batchinfer.pipeline.jobfiles import JobLayout, atomic_write
from batchinfer.pipeline.results_table import ResultsTable
from batchinfer.records import ErrorDetail, ErrorRecord


class GatherCounts(BaseModel):
    succeeded: int
    failed: int


def line_records(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line, raw JSON line, the record) for each record in ``path``, a file sorted by line."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            obj = jsonwire.loads(raw)
            yield obj["line"], raw if raw.endswith("\n") else raw + "\n", obj


def gather_outputs(
    layout: JobLayout,
    result_paths: list[Path],
    expected_lines: int,
    file_error: ErrorDetail | None = None,
) -> GatherCounts:
    """Write ``success.jsonl``, ``errors.jsonl`` and ``results.parquet`` (every line's outcome, with
    a table's carried columns). ``file_error`` adds a whole-file record (line null) to the errors."""
    sources = [
        line_records(layout.line_errors),
        duplicate_entries(layout.duplicates),
        *(line_records(p) for p in result_paths),
    ]
    copies = DuplicateCopies(layout.duplicates)
    succeeded = failed = 0
    previous = 0
    with (
        atomic_write(layout.success) as success,
        atomic_write(layout.errors) as errors,
        atomic_write(layout.results, "wb") as results_file,
        ResultsTable(results_file, layout.carried_columns) as results,
    ):
        for record in heapq.merge(*sources, key=lambda record: record[0]):
            line, raw, obj = copies.resolve(record)
            if line <= previous:
                raise JobError(
                    f"Line {line} appears twice in the chunk results", code=ErrorCode.duplicate_line
                )
            previous = line
            results.add(obj)
            if "generations" in obj:
                succeeded += 1
                success.write(raw)
            else:
                failed += 1
                errors.write(raw)
        if file_error is not None:
            errors.write(ErrorRecord(line=None, error=file_error).model_dump_json() + "\n")
        if succeeded + failed != expected_lines:
            # Raised before the files are renamed into place: no output that looks complete.
            raise JobError(
                f"Gathered {succeeded + failed} records for {expected_lines} input lines; "
                "re-run the job to redo the missing chunks.",
                code=ErrorCode.lost_lines,
            )
    return GatherCounts(succeeded=succeeded, failed=failed)
