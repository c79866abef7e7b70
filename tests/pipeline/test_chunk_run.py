"""run_chunk: one chunk through an engine into its result file; idempotent on re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchinfer.contract import Message
from batchinfer.engines.base import Engine, PromptRequest, SamplingParams
from batchinfer.pipeline.chunk_run import ChunkCounts, ChunkFiles, read_requests, run_chunk
from batchinfer.records import ErrorDetail
from batchinfer.testing.engines import EchoEngine, Flag


def write_chunk(path: Path, texts: list[tuple[int, str]], n: int = 1) -> Path:
    params = SamplingParams(n=n)
    path.write_text(
        "".join(
            PromptRequest(
                line=line,
                custom_id=f"id-{line}" if line % 2 else None,
                messages=[Message(role="user", text=text)],
                params=params,
            ).model_dump_json()
            + "\n"
            for line, text in texts
        )
    )
    return path


@pytest.fixture
def chunk(tmp_path: Path) -> Path:
    return write_chunk(tmp_path / "input-00000.jsonl", [(1, "a"), (2, "please fail"), (4, "b")], n=2)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_test_engine_satisfies_the_engine_protocol() -> None:
    assert isinstance(EchoEngine(), Engine)


def test_run_chunk_writes_one_record_per_request_in_order_and_returns_counts(
    tmp_path: Path, chunk: Path
) -> None:
    result = tmp_path / "result-00000-k.jsonl"
    counts = run_chunk(ChunkFiles(0, chunk, result), EchoEngine())
    assert counts == ChunkCounts(
        index=0,
        succeeded=2,
        failed=1,
        prompt_tokens=6,
        completion_tokens=4,
        error_codes={"http_400": 1},
    )
    assert [r["line"] for r in records(result)] == [1, 2, 4]


def test_a_success_record_has_the_documented_shape(tmp_path: Path, chunk: Path) -> None:
    result = tmp_path / "result.jsonl"
    run_chunk(ChunkFiles(0, chunk, result), EchoEngine())
    first = records(result)[0]
    assert set(first) == {"line", "custom_id", "generations", "usage"}
    assert first["line"] == 1
    assert first["custom_id"] == "id-1"
    assert (
        first["generations"]
        == [{"role": "assistant", "text": "echo: a", "eot": True, "finish_reason": "stop"}] * 2
    )
    assert first["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_an_error_record_has_the_documented_shape(tmp_path: Path, chunk: Path) -> None:
    result = tmp_path / "result.jsonl"
    run_chunk(ChunkFiles(0, chunk, result), EchoEngine())
    error = records(result)[1]
    assert error == {
        "line": 2,
        "custom_id": None,
        "error": {"code": "http_400", "message": "the server refused it"},
    }


def test_a_rerun_reuses_the_result_file_without_calling_the_engine(tmp_path: Path, chunk: Path) -> None:
    result = tmp_path / "result.jsonl"
    first = run_chunk(ChunkFiles(0, chunk, result), EchoEngine())
    content = result.read_bytes()
    engine = EchoEngine()
    again = run_chunk(ChunkFiles(0, chunk, result), engine)
    assert engine.calls == []
    assert again.reused is True
    assert again.model_dump(exclude={"reused"}) == first.model_dump(exclude={"reused"})
    assert result.read_bytes() == content


def test_an_engine_returning_the_wrong_number_of_outcomes_fails_the_chunk_and_writes_nothing(
    tmp_path: Path, chunk: Path
) -> None:
    result = tmp_path / "result.jsonl"
    with pytest.raises(RuntimeError, match="outcomes"):
        run_chunk(ChunkFiles(0, chunk, result), EchoEngine(drop=1))
    assert not result.exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def test_an_engine_exception_fails_the_chunk_and_leaves_no_result(tmp_path: Path, chunk: Path) -> None:
    def engine_down(calls: int) -> None:
        raise ConnectionError("engine down")

    result = tmp_path / "result.jsonl"
    with pytest.raises(ConnectionError):
        run_chunk(ChunkFiles(0, chunk, result), EchoEngine(on_call=engine_down))
    assert not result.exists()


def test_the_engine_gets_the_whole_chunk_in_one_call(tmp_path: Path, chunk: Path) -> None:
    engine = EchoEngine()
    run_chunk(ChunkFiles(3, chunk, tmp_path / "r.jsonl"), engine)
    assert engine.calls == [[1, 2, 4]]


def test_read_requests_round_trips_the_chunk_file(chunk: Path) -> None:
    requests = read_requests(chunk)
    assert [(r.line, r.custom_id, r.params.n) for r in requests] == [
        (1, "id-1", 2),
        (2, None, 2),
        (4, None, 2),
    ]


class Stopped(Flag):
    """A job's cancel signal, already set."""

    def __init__(self) -> None:
        super().__init__(True)


def test_a_chunk_started_after_a_cancel_records_every_line_cancelled_without_the_engine(
    tmp_path: Path, chunk: Path
) -> None:
    engine, result = EchoEngine(), tmp_path / "result.jsonl"
    counts = run_chunk(ChunkFiles(0, chunk, result), engine, stop=Stopped())
    assert engine.calls == []
    assert [(r["line"], r["error"]["code"]) for r in records(result)] == [
        (1, "cancelled"),
        (2, "cancelled"),
        (4, "cancelled"),
    ]
    assert counts.failed == 3 and counts.error_codes == {"cancelled": 3}


def test_a_rerun_after_a_cancel_runs_only_the_cancelled_lines_and_keeps_the_rest(
    tmp_path: Path, chunk: Path
) -> None:
    result = tmp_path / "result.jsonl"
    run_chunk(ChunkFiles(0, chunk, result), EchoEngine())
    cut_short = [json.loads(line) for line in result.read_text().splitlines()]
    cut_short[2] = {"line": 4, "custom_id": None, "error": {"code": "cancelled", "message": "cut"}}
    result.write_text("".join(json.dumps(r) + "\n" for r in cut_short))

    engine = EchoEngine()
    counts = run_chunk(ChunkFiles(0, chunk, result), engine)
    assert engine.calls == [[4]]  # only the cancelled line went to the model again
    lines = records(result)
    assert [r["line"] for r in lines] == [1, 2, 4]
    assert lines[0]["generations"][0]["text"] == "echo: a"  # kept, not re-run
    assert lines[1]["error"]["code"] == "http_400"  # a real failure is kept, not re-run
    assert lines[2]["generations"][0]["text"] == "echo: b"
    assert (counts.succeeded, counts.failed, counts.reused) == (2, 1, False)


class Expired(Stopped):
    """A job's stop signal, set because its completion window passed."""

    abandoned = ErrorDetail(code="expired", message="window passed")


def test_lines_cut_short_by_an_expiry_read_expired_and_a_rerun_runs_them_again(
    tmp_path: Path, chunk: Path
) -> None:
    result = tmp_path / "result.jsonl"
    run_chunk(ChunkFiles(0, chunk, result), EchoEngine(), stop=Expired())
    assert {r["error"]["code"] for r in records(result)} == {"expired"}
    engine = EchoEngine()
    run_chunk(ChunkFiles(0, chunk, result), engine)
    assert engine.calls == [[1, 2, 4]]
