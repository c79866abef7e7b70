"""A batch's output and error files: made once its job has ended, in OpenAI's line format, as
files of purpose ``batch_output`` in the file store, so that their ids are stable.

They are made again only if the job's own outputs change (a resumed job gathers again): the
record keeps a signature (size and mtime) of the outputs it converted. With the batch's
``output_expires_after``, both files expire that long after they are made.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fsspec.core import url_to_fs

from batchinfer.api.openai.files import FileStore
from batchinfer.api.openai.lines import (
    EXPIRED_CODE,
    EXPIRED_MESSAGE,
    OutputContext,
    convert,
    read_lines,
    unrun_records,
)
from batchinfer.api.openai.records import BatchRecord, StoredFile
from batchinfer.contract import BatchInference
from batchinfer.control.states import BatchStatus
from batchinfer.error_codes import ErrorCode

OUTPUT_PURPOSE = "batch_output"
UNRUN_SIGNATURE = "unrun"
CANCELLED_MESSAGE = "This request was not executed: the batch was cancelled before it ran."


@dataclass(frozen=True)
class OutputFiles:
    output_file_id: str | None
    error_file_id: str | None
    signature: str | None


def make_outputs(
    record: BatchRecord, job: BatchInference, status: BatchStatus, files: FileStore
) -> OutputFiles | None:
    """The batch's files, made now if they are missing or stale; None when there is nothing to
    make (the job has not ended, or failed before it wrote outputs)."""
    expired = status is BatchStatus.expired
    if job.success_file_path is not None and job.error_file_path is not None:
        success, errors = job.success_file_path.value, job.error_file_path.value
        (success_signature, made), (errors_signature, _) = _stamp(success), _stamp(errors)
        signature = f"{success_signature};{errors_signature};{int(expired)}"
        if signature == record.outputs_signature:
            return None
        ctx = OutputContext(record.id, record.model or "", made, expired, record.endpoint)
        return _store(record, files, signature, _text(success), _text(errors), ctx)
    if status in (BatchStatus.cancelled, BatchStatus.expired):
        # Stopped before the job read its file: every line goes to the error file, none is lost.
        if record.outputs_signature == UNRUN_SIGNATURE:
            return None
        code, message = (
            (EXPIRED_CODE, EXPIRED_MESSAGE) if expired else (ErrorCode.cancelled, CANCELLED_MESSAGE)
        )
        assert record.input_path is not None  # a batch with a job has its staged input
        unrun = unrun_records(read_lines(Path(record.input_path)), code, message)
        ctx = OutputContext(
            record.id, record.model or "", int(job.created.timestamp()), expired, record.endpoint
        )
        return _store(record, files, UNRUN_SIGNATURE, iter(()), unrun, ctx)
    return None


def _store(
    record: BatchRecord,
    files: FileStore,
    signature: str,
    success: Iterator[str],
    errors: Iterator[str],
    ctx: OutputContext,
) -> OutputFiles:

    def made(kind: str, records: Iterator[str]) -> StoredFile:
        """The batch's owner's file, as its input file was, with the batch's output expiry."""
        name, lines = f"{record.id}_{kind}.jsonl", convert(records, ctx)
        return files.create(
            name, OUTPUT_PURPOSE, lines, None, record.output_expires_after_s, owner=record.owner
        )

    output, error = made("output", success), made("error", errors)
    if error.bytes == 0:  # OpenAI leaves error_file_id null when no request failed
        files.delete(error.id, None)
    for stale in (record.output_file_id, record.error_file_id):
        if stale is not None:
            files.delete(stale, None)
    return OutputFiles(output.id, error.id if error.bytes else None, signature)


def _stamp(location: str) -> tuple[str, int]:
    """What changes when the output at ``location`` (a path, or a URL on the job's store) is
    written again, and when it was written (whole seconds)."""
    fs, key = url_to_fs(location)
    fs.invalidate_cache(key)
    info = fs.info(key)
    modified = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    seconds = int(modified.timestamp()) if isinstance(modified, datetime) else int(modified)
    return f"{info.get('size')}:{info.get('ETag') or modified}", seconds


def _text(location: str) -> Iterator[str]:
    fs, key = url_to_fs(location)
    with fs.open(key, "r", encoding="utf-8") as handle:
        yield from handle
