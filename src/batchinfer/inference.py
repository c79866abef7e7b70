"""Running one chunk through an engine into its result file. Idempotent: a result file that exists
is the chunk's finished work (it was renamed into place whole), so a re-run only counts it."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from batchinfer.engines.base import Engine, PromptRequest
from batchinfer.jobfiles import atomic_write
from batchinfer.records import Completion, ErrorDetail, ErrorRecord, SuccessRecord, dump_record


class ChunkCounts(BaseModel):
    index: int
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused: bool = False  # True when an earlier run had already written this chunk's result
    # Codes of the failed requests: the flow tells a model server that was never reached
    # (every one a connection_error) from one that answered (see ``unreachable.py``).
    error_codes: dict[str, int] = Field(default_factory=dict)


def read_requests(path: Path) -> list[PromptRequest]:
    with open(path, encoding="utf-8") as handle:
        return [PromptRequest.model_validate_json(line) for line in handle]


def to_record(request: PromptRequest, outcome: Completion | ErrorDetail) -> SuccessRecord | ErrorRecord:
    if isinstance(outcome, ErrorDetail):
        return ErrorRecord(line=request.line, custom_id=request.custom_id, error=outcome)
    return SuccessRecord(
        line=request.line,
        custom_id=request.custom_id,
        generations=outcome.generations,
        usage=outcome.usage,
    )


def run_chunk(index: int, input_path: Path, result_path: Path, engine: Engine) -> ChunkCounts:
    if result_path.exists():
        return count_results(index, result_path)
    requests = read_requests(input_path)
    outcomes = engine.infer(requests)
    if len(outcomes) != len(requests):
        raise RuntimeError(
            f"Engine returned {len(outcomes)} outcomes for {len(requests)} requests in chunk {index}"
        )
    counts = ChunkCounts(index=index)
    with atomic_write(result_path) as out:
        for request, outcome in zip(requests, outcomes, strict=True):
            record = to_record(request, outcome)
            _add(counts, record)
            out.write(dump_record(record) + "\n")
    return counts


def count_results(index: int, result_path: Path) -> ChunkCounts:
    counts = ChunkCounts(index=index, reused=True)
    with open(result_path, encoding="utf-8") as handle:
        for line in handle:
            obj = json.loads(line)
            if "generations" in obj:
                counts.succeeded += 1
                counts.prompt_tokens += obj["usage"].get("prompt_tokens", 0)
                counts.completion_tokens += obj["usage"].get("completion_tokens", 0)
            else:
                _count_error(counts, obj["error"]["code"])
    return counts


def _add(counts: ChunkCounts, record: SuccessRecord | ErrorRecord) -> None:
    if isinstance(record, SuccessRecord):
        counts.succeeded += 1
        counts.prompt_tokens += record.usage.prompt_tokens
        counts.completion_tokens += record.usage.completion_tokens
    else:
        _count_error(counts, record.error.code)


def _count_error(counts: ChunkCounts, code: str) -> None:
    counts.failed += 1
    counts.error_codes[code] = counts.error_codes.get(code, 0) + 1
