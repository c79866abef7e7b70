"""The OpenAI-compatible Files and Batches API, driven by the official ``openai`` SDK, unmodified,
against a running ``batchinfer serve``: a batch is a job of the same flow, so the seed API sees it too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, read_jsonl

pytestmark = pytest.mark.e2e
ENDED = {"completed", "failed", "expired", "cancelled"}


def batch_line(custom_id: str, text: str, model: str = "fake", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def upload(client: openai.OpenAI, name: str, content: bytes) -> str:
    return client.files.create(file=(name, content), purpose="batch").id


def start(
    client: openai.OpenAI,
    content: bytes,
    name: str,
    window: str = "24h",
    endpoint: str = "/v1/chat/completions",
    **extra: Any,
) -> Batch:
    file_id = upload(client, name, content)
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window=window,  # type: ignore[arg-type]  # the SDK's type knows only "24h"
        **extra,
    )


def poll(
    client: openai.OpenAI, batch_id: str, until: set[str], timeout_s: float = 120
) -> tuple[Batch, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in until:
            return batch, seen
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}: {seen}"
        time.sleep(0.1)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def answers(lines: list[dict[str, Any]]) -> dict[str, str]:
    return {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in lines}


# ---- the whole cycle ------------------------------------------------------------------------


CYCLE_TEXTS = {f"req-{i}": f"openai cycle question {i}" for i in range(1, 31)}


def cycle_rows() -> list[Any]:
    rows: list[Any] = [batch_line(cid, text, max_tokens=16) for cid, text in CYCLE_TEXTS.items()]
    # Valid as a batch line; what the model judges (an unknown role) is that line's error.
    rows[19]["body"]["messages"] = [{"role": "wizard", "content": "x"}]
    return rows


def test_the_whole_cycle_upload_create_poll_download_through_the_openai_sdk(
    client: openai.OpenAI, served: ServeProcess, data_dir: Path
) -> None:
    content = jsonl(cycle_rows())
    uploaded = client.files.create(file=("cycle.jsonl", content), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file",
        "batch",
        len(content),
        "cycle.jsonl",
    )
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).read() == content

    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "e2e"},
    )
    assert created.id.startswith("batch_") and created.status in {"validating", "in_progress"}
    batch, seen = poll(client, created.id, ENDED)
    print(f"statuses seen: {seen}")

    assert batch.status == "completed", batch
    assert seen[0] == "validating" and set(seen) <= {"validating", "in_progress", "finalizing", "completed"}
    assert batch.model == "fake" and batch.metadata == {"purpose": "e2e"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        30,
        29,
        1,
    )
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.failed_at is None and batch.cancelled_at is None
    assert batch.errors is None  # as at OpenAI: a request the model refused is in the error file only

    output = lines_of(client, batch.output_file_id)
    expected = {cid: f"echo: {text}" for cid, text in CYCLE_TEXTS.items() if cid != "req-20"}
    assert answers(output) == expected
    first = output[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and isinstance(first["response"]["body"], dict)
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["model"] == "fake-model"  # the server's answer, as it gave it
    errors = lines_of(client, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("req-20", "unknown_role", None),
    ]
    # Stable: retrieving again gives the same output files.
    again = client.batches.retrieve(batch.id)
    assert (again.output_file_id, again.error_file_id) == (batch.output_file_id, batch.error_file_id)
    outputs = {f.id for f in client.files.list(purpose="batch_output")}
    assert {batch.output_file_id, batch.error_file_id} <= outputs

    # The seed API describes the same run.
    job = served.status(batch.id).json()
    assert job["status"] == "completed" and batch.id == "batch_" + job["job_id"].replace("-", "")
    assert job["metadata"]["request_counts"] == batch.request_counts.model_dump()

    # The same file through the seed API gives the same answers (vllm run-batch's line format).
    path = data_dir / "openai-cycle.jsonl"
    path.write_bytes(content)
    seed_job = served.submit_ok(
        {"model": "fake", "prompt_file_path": {"type": "filepath", "value": str(path)}}
    )
    seed_done = served.wait(seed_job["job_id"])
    seed_answers = {
        r["custom_id"]: r["generations"][0]["text"]
        for r in read_jsonl(seed_done["success_file_path"]["value"])
    }
    assert seed_answers == answers(output)
    seed_errors = [
        (r["custom_id"], r["error"]["code"]) for r in read_jsonl(seed_done["error_file_path"]["value"])
    ]
    assert seed_errors == [(e["custom_id"], e["error"]["code"]) for e in errors]

    # Deleting the input file leaves the batch (its job read a staged copy) and its outputs.
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert client.batches.retrieve(batch.id).output_file_id == batch.output_file_id


# ---- list -----------------------------------------------------------------------------------


def test_batches_list_newest_first_with_limit_and_after_and_files_list_filters_by_purpose(
    client: openai.OpenAI,
) -> None:
    ids = [
        start(client, jsonl([batch_line(f"l{i}", f"listed batch {i}")]), f"list-{i}.jsonl").id
        for i in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more is True
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    every = [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after` by itself
    assert every[:3] == ids[::-1] and len(every) == len(set(every))

    inputs = client.files.list(purpose="batch", limit=2)
    assert len(inputs.data) == 2 and all(f.purpose == "batch" for f in inputs.data)
    assert inputs.data[0].created_at >= inputs.data[1].created_at
    for batch_id in ids:
        poll(client, batch_id, ENDED)


# ---- cancel and expire ----------------------------------------------------------------------


SLOW_LINES = 2000


def slow_rows(tag: str, lines: int = SLOW_LINES) -> tuple[bytes, dict[str, str]]:
    texts = {f"{tag}-{i}": f"{tag} question {i}" for i in range(lines)}
    return jsonl([batch_line(cid, t, model="fake-slow", max_tokens=8) for cid, t in texts.items()]), texts


def check_stopped_outputs(
    client: openai.OpenAI, batch: Batch, texts: dict[str, str], code: str
) -> tuple[int, int]:
    output, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert answers(output) == {line["custom_id"]: f"echo: {texts[line['custom_id']]}" for line in output}
    assert {e["error"]["code"] for e in errors} == {code}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(texts)
    return len(output), len(errors)


def test_a_cancelled_batch_goes_cancelling_then_cancelled_keeping_its_finished_lines(
    client: openai.OpenAI, served: ServeProcess
) -> None:
    content, texts = slow_rows("cancel-batch")
    batch = start(client, content, "cancel.jsonl")

    def done(b: Batch) -> int:
        return b.request_counts.completed if b.request_counts else 0

    deadline = time.monotonic() + 60
    while done(client.batches.retrieve(batch.id)) < 100:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"} and cancelling.cancelling_at
    cancelled, seen = poll(client, batch.id, ENDED, timeout_s=60)
    print(f"after cancel: {seen}")
    assert cancelled.status == "cancelled", cancelled
    assert cancelled.cancelled_at and cancelled.cancelled_at >= cancelled.cancelling_at  # type: ignore[operator]
    answered, cut_short = check_stopped_outputs(client, cancelled, texts, "cancelled")
    assert 100 <= answered < SLOW_LINES and answered + cut_short == SLOW_LINES
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == answered

    job = served.status(batch.id).json()  # the seed's view of the same run
    assert job["status"] == "failed" and job["metadata"]["error"]["code"] == "cancelled"
    assert job["metadata"]["request_counts"] == cancelled.request_counts.model_dump()
    assert client.batches.cancel(batch.id) == client.batches.retrieve(batch.id)  # as at OpenAI: unchanged


def test_a_batch_past_its_completion_window_expires_keeping_the_work_done(
    client: openai.OpenAI, served: ServeProcess
) -> None:
    lines = 6000  # ~20 s at the slow model server: the 10 s window passes part-way
    content, texts = slow_rows("expire-batch", lines)
    batch = start(client, content, "expire.jsonl", window="10s")
    assert batch.expires_at == batch.created_at + 10
    expired, seen = poll(client, batch.id, ENDED, timeout_s=90)
    print(f"expiring: {seen}")
    assert expired.status == "expired", expired
    assert expired.expired_at and expired.expired_at >= expired.expires_at  # type: ignore[operator]
    assert expired.cancelling_at is None and expired.cancelled_at is None
    answered, left = check_stopped_outputs(client, expired, texts, "batch_expired")
    assert 0 < answered < lines and answered + left == lines
    # The job stopped itself at its expires_at (not cancelled from outside): the seed API says so.
    job = served.status(batch.id).json()
    assert job["status"] == "failed" and job["metadata"]["error"]["code"] == "expired", job["metadata"]


# ---- what OpenAI refuses at create, and what it finds while validating -------------------------


def test_refusals_at_create_come_as_the_sdks_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="No batch found"):
        client.batches.retrieve("batch_" + "0" * 32)
    with pytest.raises(openai.NotFoundError, match="No file found"):
        client.files.content("file-000000000000")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    file_id = upload(client, "e.jsonl", jsonl([batch_line("a", "x")]))
    with pytest.raises(openai.BadRequestError) as endpoint:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/images/generations", completion_window="24h"
        )
    assert (endpoint.value.code, endpoint.value.param) == ("invalid_value", "endpoint")
    assert "'/v1/chat/completions', '/v1/completions', '/v1/embeddings', and '/v1/responses'" in (
        endpoint.value.message
    )
    # This server's operator turned other windows on (the session's serve): still a duration.
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="soon"
        )  # type: ignore[arg-type]
    assert window.value.param == "completion_window"
    output_file = client.files.create(file=("o.jsonl", jsonl([batch_line("a", "x")])), purpose="batch_output")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(
            input_file_id=output_file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_an_unknown_input_file_makes_a_batch_that_fails_on_input_file_id(client: openai.OpenAI) -> None:
    batch = client.batches.create(
        input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed" and batch.failed_at and batch.errors and batch.errors.data
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == [
        ("invalid_request", None, "input_file_id")
    ]


def rec(custom_id: str, text: str = "x", **body: Any) -> dict[str, Any]:
    """A valid line for the recording model, whose server counts every request it gets."""
    return batch_line(custom_id, text, model="fake-recording", **body)


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in rec("a").items() if k != field}


# One bad file per rule of OpenAI's validating phase: (rows, errors.data as (code, line, param)).
BAD_FILES: dict[str, tuple[list[Any], list[tuple[str, int | None, str | None]]]] = {
    "not json": ([rec("a"), "{not json"], [("invalid_json_line", 2, None)]),
    "not an object": ([rec("a"), [1, 2]], [("missing_required_parameter", 2, "custom_id")]),
    "no custom_id": ([rec("a"), without("custom_id")], [("missing_required_parameter", 2, "custom_id")]),
    "no method": ([rec("a"), without("method")], [("missing_required_parameter", 2, "method")]),
    "no url": ([without("url"), rec("b")], [("missing_required_parameter", 1, "url")]),
    "no body": ([rec("a"), without("body")], [("missing_required_parameter", 2, "body")]),
    "another url": (
        [rec("a"), {**rec("b"), "url": "/v1/embeddings"}],
        [("invalid_url", 2, "url")],
    ),
    "stream": ([rec("a"), rec("b", stream=True)], [("streaming_unsupported", 2, "body.stream")]),
    "a model not served": (
        [batch_line("a", "x", model="no-such-model"), rec("b")],
        [("model_not_found", 1, "body.model"), ("model_mismatch", 2, "body.model")],
    ),
    "a second model": ([rec("a"), batch_line("b", "x", model="fake")], [("model_mismatch", 2, "body.model")]),
    "no messages": (
        [rec("a"), {**rec("b"), "body": {"model": "fake-recording"}}],
        [("invalid_request", 2, "body.messages")],
    ),
    "no model": (
        [rec("a"), {**rec("b"), "body": {"messages": [{"role": "user", "content": "x"}]}}],
        [("invalid_request", 2, "body.model")],
    ),
    "a custom_id twice": ([rec("a"), rec("b"), rec("a")], [("duplicate_custom_id", 3, "custom_id")]),
    "a line over the size limit": (
        [rec("a"), rec("b", text="x" * (1 << 20))],
        [("line_too_long", 2, None)],
    ),
    "every problem at once, in order": (
        ["{", without("body"), rec("c", stream=True), rec("d"), rec("d")],
        [
            ("invalid_json_line", 1, None),
            ("missing_required_parameter", 2, "body"),
            ("streaming_unsupported", 3, "body.stream"),
            ("duplicate_custom_id", 5, "custom_id"),
        ],
    ),
}


@pytest.fixture(scope="module")
def bad_batches(served: ServeProcess, recording_openai: FakeOpenAIServer) -> dict[str, tuple[Batch, int]]:
    """Every bad file as a batch, all created at once and polled to their end; each with the
    requests the model server got meanwhile (the same for all: none may reach it)."""
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    before = recording_openai.requests_total
    created = {name: start(client, jsonl(rows), f"{name}.jsonl") for name, (rows, _) in BAD_FILES.items()}
    ended = {name: poll(client, batch.id, ENDED)[0] for name, batch in created.items()}
    return {name: (batch, recording_openai.requests_total - before) for name, batch in ended.items()}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_file_with_an_invalid_line_fails_while_validating_and_nothing_is_sent(
    bad_batches: dict[str, tuple[Batch, int]], case: str
) -> None:
    batch, requests_sent = bad_batches[case]
    assert batch.status == "failed", batch
    assert requests_sent == 0
    assert batch.failed_at and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == BAD_FILES[case][1]
    assert all(e.message and e.message.endswith(".") for e in batch.errors.data)
    assert (batch.output_file_id, batch.error_file_id) == (None, None)


def test_the_seed_api_still_runs_a_mixed_file_answering_each_valid_line(
    served: ServeProcess, data_dir: Path
) -> None:
    rows, _ = BAD_FILES["every problem at once, in order"]
    path = data_dir / "mixed-through-seed.jsonl"
    path.write_bytes(jsonl([*rows, rec("e", "seed mixed")]))
    job = served.wait(
        served.submit_ok({"model": "fake", "prompt_file_path": {"type": "filepath", "value": str(path)}})[
            "job_id"
        ]
    )
    assert job["status"] == "completed", job
    answered = read_jsonl(job["success_file_path"]["value"])
    assert [(r["line"], r["custom_id"]) for r in answered] == [(4, "d"), (5, "d"), (6, "e")]
    errors = read_jsonl(job["error_file_path"]["value"])
    assert [(e["line"], e["error"]["code"]) for e in errors] == [
        (1, "invalid_json"),
        (2, "not_a_list"),
        (3, "unsupported_parameter"),
    ]


def test_a_lenient_batch_runs_its_valid_lines_and_puts_each_invalid_one_in_the_error_file(
    client: openai.OpenAI,
) -> None:
    rows = [batch_line("a", "lenient a"), "{", batch_line("c", "lenient c", stream=True)]
    batch = start(client, jsonl(rows), "lenient.jsonl", extra_body={"invalid_lines": "error_file"})
    done, _ = poll(client, batch.id, ENDED)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    assert answers(lines_of(client, done.output_file_id)) == {"a": "echo: lenient a"}
    errors = lines_of(client, done.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        (None, "invalid_json_line"),
        ("c", "streaming_unsupported"),
    ]


# ---- idempotent create, expiring outputs ------------------------------------------------------


def test_a_create_retried_with_its_idempotency_key_returns_the_same_batch(
    client: openai.OpenAI, served: ServeProcess
) -> None:
    file_id = upload(client, "idem.jsonl", jsonl([batch_line("a", "idempotent create")]))
    params: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    first = client.batches.create(**params, extra_body={"idempotency_key": "idem-e2e-1"})
    again = client.batches.create(**params, extra_body={"idempotency_key": "idem-e2e-1"})
    assert (again.id, again.created_at) == (first.id, first.created_at)
    with pytest.raises(openai.ConflictError, match="other parameters"):
        client.batches.create(**params, metadata={"x": "y"}, extra_body={"idempotency_key": "idem-e2e-1"})
    done, _ = poll(client, first.id, ENDED)
    assert done.status == "completed"
    listed = [b.id for b in client.batches.list(limit=100) if b.input_file_id == file_id]
    assert listed == [first.id]  # one batch, one job


def test_output_expires_after_sets_the_expiry_of_a_batchs_output_files(client: openai.OpenAI) -> None:
    batch = start(
        client,
        jsonl([batch_line("a", "expiring output")]),
        "expiring.jsonl",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    done, _ = poll(client, batch.id, ENDED)
    assert done.output_file_id is not None
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 3600


def test_retry_failed_of_a_batch_rewrites_its_output_and_error_files_through_the_sdk(
    client: openai.OpenAI, served: ServeProcess, fake_openai: FakeOpenAIServer
) -> None:
    texts = {f"again-{i}": f"openai retry {i}" + (" [fault:503]" if i % 4 == 0 else "") for i in range(12)}
    rows = [batch_line(cid, text, model="fake-faults", max_tokens=16) for cid, text in texts.items()]
    batch, _ = poll(client, start(client, jsonl(rows), "retry.jsonl").id, ENDED)
    assert batch.status == "completed" and len(lines_of(client, batch.error_file_id)) == 3
    try:
        fake_openai.faults = False  # the server recovers
        response = httpx.post(served.url + "/batch_inference/retry_failed", json={"job_id": batch.id})
        assert response.status_code == 200, response.text
        retried, _ = poll(client, batch.id, ENDED)
    finally:
        fake_openai.faults = True
    assert retried.status == "completed" and retried.error_file_id is None
    assert answers(lines_of(client, retried.output_file_id)) == {
        cid: f"echo: {t}" for cid, t in texts.items()
    }
