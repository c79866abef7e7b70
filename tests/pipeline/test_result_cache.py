"""The result cache of a model with ``cache: true`` (``pipeline.result_cache``): a re-run sends
only what it has no answer for, serves the rest marked cached, and keeps within its size cap."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from batchinfer.contract import Message
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.pipeline.chunk_run import ChunkFiles, run_chunk
from batchinfer.pipeline.result_cache import ResultCache
from batchinfer.testing.engines import EchoEngine

GREEDY = SamplingParams(temperature=0)


def chunk_file(path: Path, texts: list[str], params: SamplingParams = GREEDY) -> Path:
    path.write_text(
        "".join(
            PromptRequest(line=n, messages=[Message(role="user", text=t)], params=params).model_dump_json()
            + "\n"
            for n, t in enumerate(texts, start=1)
        )
    )
    return path


def run(
    tmp_path: Path, name: str, texts: list[str], cache: ResultCache, **params: float
) -> tuple[EchoEngine, list]:
    engine = EchoEngine()
    source = chunk_file(
        tmp_path / f"input-{name}.jsonl", texts, SamplingParams(**{"temperature": 0, **params})
    )
    result = tmp_path / f"result-{name}.jsonl"
    run_chunk(ChunkFiles(0, source, result), engine, cache=cache)
    return engine, [json.loads(line) for line in result.read_text().splitlines()]


@pytest.fixture
def cache(tmp_path: Path) -> ResultCache:
    return ResultCache(tmp_path / "cache.sqlite3", '{"id": "m"}', max_bytes=1 << 20)


def sent(engine: EchoEngine) -> list[int]:
    return [line for call in engine.calls for line in call]


def test_a_rerun_sends_only_what_changed_and_serves_the_rest_marked_cached(
    tmp_path: Path, cache: ResultCache
) -> None:
    first, records = run(tmp_path, "a", ["one", "two", "three"], cache)
    assert sent(first) == [1, 2, 3] and not any(r.get("cached") for r in records)
    again, cached = run(tmp_path, "b", ["one", "two", "changed"], cache)
    assert sent(again) == [3]
    assert [r.get("cached", False) for r in cached] == [True, True, False]
    assert [r["generations"] for r in cached[:2]] == [r["generations"] for r in records[:2]]


def test_sampled_requests_are_never_served_from_the_cache(tmp_path: Path, cache: ResultCache) -> None:
    run(tmp_path, "a", ["one"], cache, temperature=0.8)
    engine, _ = run(tmp_path, "b", ["one"], cache, temperature=0.8)
    assert sent(engine) == [1]


def test_a_seeded_request_is_deterministic_and_is_cached(tmp_path: Path, cache: ResultCache) -> None:
    run(tmp_path, "a", ["one"], cache, temperature=0.8, seed=7)
    engine, _ = run(tmp_path, "b", ["one"], cache, temperature=0.8, seed=7)
    assert sent(engine) == []


def test_failures_are_not_kept_they_are_asked_again(tmp_path: Path, cache: ResultCache) -> None:
    run(tmp_path, "a", ["please fail"], cache)
    engine, records = run(tmp_path, "b", ["please fail"], cache)
    assert sent(engine) == [1] and records[0]["error"]["code"] == "http_400"


def test_another_model_config_does_not_share_answers(tmp_path: Path, cache: ResultCache) -> None:
    run(tmp_path, "a", ["one"], cache)
    other = ResultCache(tmp_path / "cache.sqlite3", '{"id": "m", "max_tokens": 9}', max_bytes=1 << 20)
    engine, _ = run(tmp_path, "b", ["one"], other)
    assert sent(engine) == [1]


def answer_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT MAX(size) FROM answers").fetchone()[0])


def test_past_its_cap_the_answers_used_least_recently_go_first(tmp_path: Path, cache: ResultCache) -> None:
    run(tmp_path, "probe", ["old"], cache)
    room_for_two = int(2.5 * answer_bytes(tmp_path / "cache.sqlite3"))
    small = ResultCache(tmp_path / "small.sqlite3", "m", max_bytes=room_for_two)
    for name in ("old", "recent", "newest"):
        run(tmp_path, name, [name], small)
    engine, _ = run(tmp_path, "again", ["old", "recent", "newest"], small)
    assert sent(engine) == [1]  # "old" went; the two used since are kept
