"""Running one chunk through an engine into its result file. Idempotent: a result file that exists
is the chunk's finished work (it was renamed into place whole), so a re-run only counts it, unless
the job stopped while the chunk ran: then its lines cut short (``cancelled``, ``expired``, a fail-fast
code) and those that failed for a reason the user had to fix (401, 404, quota), and only those, run
again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from batchinfer import jsonwire
from batchinfer.engines.base import (
    CANCELLED,
    RERUN_ON_RESUME,
    Engine,
    InFlightCap,
    OutcomeWatch,
    PromptRequest,
    StopFlag,
)
from batchinfer.pipeline.jobfiles import atomic_write
from batchinfer.pipeline.result_cache import ResultCache
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


_REQUESTS = TypeAdapter(list[PromptRequest])


def read_requests(path: Path) -> list[PromptRequest]:
    """A chunk's input file, validated in one call (a third of the time of one call a line)."""
    lines = path.read_bytes().splitlines()
    return _REQUESTS.validate_json(b"[" + b",".join(line for line in lines if line.strip()) + b"]")


def to_record(request: PromptRequest, outcome: Completion | ErrorDetail) -> SuccessRecord | ErrorRecord:
    if isinstance(outcome, ErrorDetail):
        return ErrorRecord(line=request.line, custom_id=request.custom_id, error=outcome)
    return SuccessRecord(
        line=request.line,
        custom_id=request.custom_id,
        generations=outcome.generations,
        usage=outcome.usage,
        embeddings=outcome.embeddings,
        response=outcome.response,
    )


@dataclass(frozen=True)
class ChunkFiles:
    """One chunk's files: its input (validated requests) and the result file it writes."""

    index: int
    input_path: Path
    result_path: Path


def run_chunk(
    chunk: ChunkFiles,
    engine: Engine,
    stop: StopFlag | None = None,
    max_in_flight: InFlightCap | None = None,
    cache: ResultCache | None = None,
) -> ChunkCounts:
    """Run the chunk (or what a cancel left of it) and write its result file; its counts. With a
    ``cache``, the requests it has answers for are answered from it, and new answers kept in it."""
    requests = read_requests(chunk.input_path)
    kept: dict[int, tuple[str, dict[str, Any]]] = {}  # line -> finished record, raw and parsed
    if chunk.result_path.exists():
        kept = _finished_records(chunk.result_path)
        if len(kept) == len(requests):  # the whole chunk is done: count it, run nothing
            counts = ChunkCounts(index=chunk.index, reused=True)
            for _, obj in kept.values():
                _count_parsed(counts, obj)
            return counts
        requests = [r for r in requests if r.line not in kept]
    keys = {} if cache is None else {r.line: key for r in requests if (key := cache.key(r)) is not None}
    fresh, requests = _answered_from_cache(cache, keys, requests)
    outcomes = _outcomes(requests, engine, stop, max_in_flight)
    if len(outcomes) != len(requests):
        raise RuntimeError(
            f"Engine returned {len(outcomes)} outcomes for {len(requests)} requests in chunk {chunk.index}"
        )
    fresh.update({r.line: to_record(r, o) for r, o in zip(requests, outcomes, strict=True)})
    if cache is not None:  # only answers: a failure is worth asking again
        found = zip(requests, outcomes, strict=True)
        cache.put({keys[r.line]: o for r, o in found if r.line in keys and isinstance(o, Completion)})
    return _write(chunk, kept, fresh)


def _answered_from_cache(
    cache: ResultCache | None, keys: dict[int, bytes], requests: list[PromptRequest]
) -> tuple[dict[int, SuccessRecord | ErrorRecord], list[PromptRequest]]:
    """The records of the requests the cache has answers for (marked cached), and the others."""
    if cache is None or not keys:
        return {}, requests
    answers = cache.get(list(keys.values()))
    hits: dict[int, SuccessRecord | ErrorRecord] = {}
    for request in requests:
        if (answer := answers.get(keys.get(request.line, b""))) is not None:
            hits[request.line] = to_record(request, answer).model_copy(update={"cached": True})
    return hits, [r for r in requests if r.line not in hits]


def _outcomes(
    requests: list[PromptRequest], engine: Engine, stop: StopFlag | None, max_in_flight: InFlightCap | None
) -> list[Any]:
    """The engine's outcomes, or for a stopped job its reason for every line it did not finish."""
    if stop is not None and stop.is_set():
        return [_abandoned(stop)] * len(requests)
    outcomes = engine.infer(requests, stop=stop, max_in_flight=max_in_flight)
    # The job judges its failures (``runtime.fail_fast``): an engine that does not report each
    # answer as it lands (an HTTP engine does) has its answers reported once its call returns.
    if isinstance(stop, OutcomeWatch) and not getattr(engine, "reports_outcomes", False):
        for outcome in outcomes:
            if not _cut_short(outcome):
                stop.observe(outcome)
    abandoned = _abandoned(stop)  # asked now: the stop may have come during the call
    return [abandoned if _cut_short(o) else o for o in outcomes]


def _abandoned(stop: StopFlag | None) -> ErrorDetail:
    """Why the lines cut short were abandoned (cancelled, expired, a fail-fast): the stop knows."""
    abandoned: ErrorDetail = getattr(stop, "abandoned", CANCELLED)
    return abandoned


def _cut_short(outcome: Any) -> bool:
    return isinstance(outcome, ErrorDetail) and outcome.code == CANCELLED.code


def _write(
    chunk: ChunkFiles,
    kept: dict[int, tuple[str, dict[str, Any]]],
    fresh: dict[int, SuccessRecord | ErrorRecord],
) -> ChunkCounts:
    """The result file, kept and fresh records in line order, written whole; its counts."""
    counts = ChunkCounts(index=chunk.index)
    with atomic_write(chunk.result_path) as out:
        for line in sorted(kept.keys() | fresh.keys()):
            if line in kept:
                raw, obj = kept[line]
                _count_parsed(counts, obj)
            else:
                record = fresh[line]
                _count_record(counts, record)
                raw = dump_record(record)
            out.write(raw + "\n")
    return counts


def _finished_records(result_path: Path) -> dict[int, tuple[str, dict[str, Any]]]:
    """An existing result file's records by line, without the ones a stop cut short or that failed
    for a reason the user fixes before resuming (``RERUN_ON_RESUME``)."""
    finished, _ = records_to_keep(result_path, lambda code: code in RERUN_ON_RESUME)
    return finished


def records_to_keep(
    result_path: Path, run_again: Callable[[str], bool]
) -> tuple[dict[int, tuple[str, dict[str, Any]]], int]:
    """A result file's records by line (raw, parsed), less the error records whose code
    ``run_again`` picks; and how many those were."""
    kept, dropped = {}, 0
    with open(result_path, encoding="utf-8") as handle:
        for raw in handle:
            obj = jsonwire.loads(raw)
            code = obj.get("error", {}).get("code")
            if code is not None and run_again(code):
                dropped += 1
            else:
                kept[obj["line"]] = (raw.rstrip("\n"), obj)
    return kept, dropped


def _count_parsed(counts: ChunkCounts, obj: dict[str, Any]) -> None:
    """Count a record read back from a result file."""
    if "generations" in obj:
        _count_success(counts, obj["usage"].get("prompt_tokens", 0), obj["usage"].get("completion_tokens", 0))
    else:
        _count_error(counts, obj["error"]["code"])


def _count_record(counts: ChunkCounts, record: SuccessRecord | ErrorRecord) -> None:
    """Count a record this run produced (no need to read it back)."""
    if isinstance(record, SuccessRecord):
        _count_success(counts, record.usage.prompt_tokens, record.usage.completion_tokens)
    else:
        _count_error(counts, record.error.code)


def _count_success(counts: ChunkCounts, prompt_tokens: int, completion_tokens: int) -> None:
    counts.succeeded += 1
    counts.prompt_tokens += prompt_tokens
    counts.completion_tokens += completion_tokens


def _count_error(counts: ChunkCounts, code: str) -> None:
    counts.failed += 1
    counts.error_codes[code] = counts.error_codes.get(code, 0) + 1
