"""OpenAI's batch checks (``batch_checks``) through ``validate_prompt_file``: while a batch is
validating, every line is checked; any invalid line fails it before a chunk is written to run,
each line listed with its first problem, in OpenAI's codes and params."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import SamplingParams
from batchinfer.pipeline.batch_checks import NOT_JSON_MESSAGE, BatchRules
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.settings import Limits

RULES = BatchRules(endpoint=Endpoint.chat, model="m1", served=frozenset({"m1", "m2"}))
USER = [{"role": "user", "content": "hi"}]


def line(custom_id: str = "a", **fields: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m1", "messages": USER},
    } | fields


def body(**fields: Any) -> dict[str, Any]:
    return line(body={"model": "m1", "messages": USER, **fields})


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in line().items() if k != field}


def check(
    tmp_path: Path, rows: list[Any], rules: BatchRules = RULES, limits: Limits | None = None
) -> tuple[ValidationSummary, JobLayout]:
    source = tmp_path / "batch.jsonl"
    source.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    layout = JobLayout(tmp_path / "job")
    return validate_prompt_file(source, layout, SamplingParams(), 100, limits, rules=rules), layout


def listed(layout: JobLayout) -> list[tuple[int, str, str | None]]:
    records = [json.loads(raw) for raw in layout.batch_errors.read_text().splitlines()]
    return [(r["line"], r["error"]["code"], r["error"].get("param")) for r in records]


BAD_LINES = [
    # (a bad second line, its code, its param)
    ("not json {", "invalid_json_line", None),
    ('["a", "list"]', "missing_required_parameter", "custom_id"),
    (without("custom_id"), "missing_required_parameter", "custom_id"),
    (without("method"), "missing_required_parameter", "method"),
    (without("url"), "missing_required_parameter", "url"),
    (without("body"), "missing_required_parameter", "body"),
    (line(custom_id=7), "invalid_request", "custom_id"),
    (line(method="GET"), "invalid_request", "method"),
    (line(url="/v1/embeddings"), "invalid_url", "url"),
    (line(url="/v1/images/generations"), "invalid_url", "url"),
    (line(body="a string"), "invalid_request", "body"),
    (body(stream=True), "streaming_unsupported", "body.stream"),
    (line(body={"model": "gpt-9", "messages": USER}), "model_not_found", "body.model"),
    (line(body={"model": "m2", "messages": USER}), "model_mismatch", "body.model"),
    (line(body={"messages": USER}), "invalid_request", "body.model"),
    (line(body={"model": "m1", "prompt": "x"}), "invalid_request", "body.messages"),
    (line(body={"model": 1, "messages": USER}), "invalid_request", "body.model"),
    (line(body={"model": "m1", "messages": "hi"}), "invalid_request", "body.messages"),
    (line(custom_id="first"), "duplicate_custom_id", "custom_id"),
]


@pytest.mark.parametrize(("bad", "code", "param"), BAD_LINES)
def test_one_invalid_line_fails_the_batch_and_is_listed_with_its_code_and_param(
    tmp_path: Path, bad: Any, code: str, param: str | None
) -> None:
    summary, layout = check(tmp_path, [line("first"), bad, line("third")])
    assert summary.file_error is not None and summary.file_error.code == "invalid_batch_file"
    assert "1 of the batch's 3 lines" in summary.file_error.message
    assert summary.chunks == [] and summary.lines == 0  # nothing is sent
    assert listed(layout) == [(2, code, param)]


def test_the_invalid_lines_are_listed_in_order_each_with_its_first_problem(tmp_path: Path) -> None:
    rows = [
        line("a"),
        {"custom_id": "b", "url": "/v1/embeddings"},  # no method, no body, wrong url: method first
        line("c", url="/v1/completions", body={"model": "m1", "stream": True}),  # url before stream
        line("d", body={"model": "gpt-9", "stream": True}),  # stream before the model
        line("a", body={"model": "m2", "messages": USER}),  # the model before the duplicate id
        line("e"),
        line("a"),  # a duplicate of line 1
    ]
    summary, layout = check(tmp_path, rows)
    assert summary.file_error is not None
    assert listed(layout) == [
        (2, "missing_required_parameter", "method"),
        (3, "invalid_url", "url"),
        (4, "streaming_unsupported", "body.stream"),
        (5, "model_mismatch", "body.model"),
        (7, "duplicate_custom_id", "custom_id"),
    ]


def test_messages_say_what_is_wrong_and_how_to_fix_it(tmp_path: Path) -> None:
    rows = [
        "{",
        without("body"),
        line("dup"),
        line("dup"),
        line("x", body={"model": "nope", "messages": USER}),
    ]
    _, layout = check(tmp_path, rows)
    messages = [json.loads(raw)["error"]["message"] for raw in layout.batch_errors.read_text().splitlines()]
    assert messages[0] == NOT_JSON_MESSAGE
    assert "'body'" in messages[1] and "custom_id, method, url and body" in messages[1]
    assert "'dup'" in messages[2] and "line 3" in messages[2]
    assert "'nope'" in messages[3] and "m1, m2" in messages[3]


def test_a_line_over_the_size_limit_is_listed_with_its_own_code(tmp_path: Path) -> None:
    long = line("long", body={"model": "m1", "messages": [{"role": "user", "content": "x" * 500}]})
    _, layout = check(tmp_path, [line("a"), long], limits=Limits(max_line_bytes=300))
    assert listed(layout) == [(2, "line_too_long", None)]


def test_each_endpoint_requires_its_own_prompt_field(tmp_path: Path) -> None:
    rules = RULES.model_copy(update={"endpoint": Endpoint.embeddings})
    rows = [
        line("a", url="/v1/embeddings", body={"model": "m1", "input": "x"}),
        line("b", url="/v1/embeddings", body={"model": "m1", "messages": USER}),
        line("c", url="/v1/embeddings", body={"model": "m1", "input": {"text": "x"}}),
        line("d", url="/v1/embeddings", body={"model": "m1", "input": ["x", "y"]}),
    ]
    _, layout = check(tmp_path, rows, rules)
    assert listed(layout) == [(2, "invalid_request", "body.input"), (3, "invalid_request", "body.input")]


def test_a_valid_batch_passes_and_what_only_the_model_judges_stays_a_line_error(tmp_path: Path) -> None:
    wizard = [{"role": "wizard", "content": "hi"}]
    rows = [line("a"), line("b", body={"model": "m1", "messages": wizard}), line("c")]
    summary, layout = check(tmp_path, rows)
    assert summary.file_error is None and (summary.valid, summary.invalid) == (2, 1)
    assert not layout.batch_errors.exists()
    errors = [json.loads(raw) for raw in layout.line_errors.read_text().splitlines()]
    assert [(e["line"], e["custom_id"], e["error"]["code"]) for e in errors] == [(2, "b", "unknown_role")]


def test_lenient_rules_put_each_invalid_line_in_the_error_file_with_its_param(tmp_path: Path) -> None:
    rules = RULES.model_copy(update={"fail_batch": False})
    summary, layout = check(tmp_path, [line("a"), without("body"), line("a")], rules)
    assert summary.file_error is None and (summary.valid, summary.invalid) == (1, 2)
    errors = [json.loads(raw) for raw in layout.line_errors.read_text().splitlines()]
    assert [(e["line"], e["error"]["code"], e["error"]["param"]) for e in errors] == [
        (2, "missing_required_parameter", "body"),
        (3, "duplicate_custom_id", "custom_id"),
    ]


def test_a_batch_file_is_read_as_jsonl_whatever_its_bytes(tmp_path: Path) -> None:
    source = tmp_path / "batch.parquet"
    source.write_bytes(b"PAR1\x00\x01binary\nPAR1")
    layout = JobLayout(tmp_path / "job")
    summary = validate_prompt_file(source, layout, SamplingParams(), 100, name=str(source), rules=RULES)
    assert summary.file_error is not None and summary.file_error.code == "invalid_batch_file"
    assert listed(layout) == [(1, "invalid_json_line", None), (2, "invalid_json_line", None)]
