"""/v1 answers as OpenAI's Batch API answers, driven by the official ``openai`` SDK, unmodified,
in-process (the SDK's HTTP client is the app's test client) over an in-memory job backend whose
jobs a test puts in any state, with a clock a test moves: create-time refusals, a batch that
fails at create, cancel in every state, idempotent create, files that expire."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import openai
import pytest
from fastapi.testclient import TestClient

from batchinfer.api.app import create_app
from batchinfer.api.openai import schemas
from batchinfer.engines.catalog import load_catalog
from batchinfer.jobspec import LineChecks
from batchinfer.settings import Settings
from batchinfer.testing.memory_backend import MemoryBackend

MODEL = load_catalog(None).models[0].id
CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    sdk: openai.OpenAI
    backend: MemoryBackend
    clock: Clock
    http: TestClient
    tmp: Path


@contextlib.contextmanager
def serve(tmp_path: Path, **settings: Any) -> Iterator[Server]:
    backend, clock = MemoryBackend(tmp_path / "home" / "jobs"), Clock()

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[MemoryBackend]:
        yield backend

    app = create_app(
        Settings(home=tmp_path / "home", allowed_roots=[tmp_path], **settings),
        load_catalog(None),
        factory,  # type: ignore[arg-type]
        clock=clock,
    )
    with TestClient(app, raise_server_exceptions=False) as http:
        sdk = openai.OpenAI(
            base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0
        )
        yield Server(sdk, backend, clock, http, tmp_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve(tmp_path) as running:
        yield running


def batch_file(server: Server, rows: int = 1) -> str:
    line = {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": MODEL, "messages": []}}
    content = "".join(json.dumps(line | {"custom_id": f"r{i}"}) + "\n" for i in range(rows)).encode()
    return server.sdk.files.create(file=("in.jsonl", content), purpose="batch").id


def create(server: Server, **fields: Any) -> openai.types.Batch:
    params: dict[str, Any] = {"endpoint": CHAT, "completion_window": "24h"} | fields
    if "input_file_id" not in params:
        params["input_file_id"] = batch_file(server)
    return server.sdk.batches.create(**params)


# ---- create: what OpenAI refuses with a 400 ----------------------------------------------------

REFUSED_AT_CREATE = [
    # (create fields, param, code, words the message holds)
    (
        {"endpoint": "/v1/images/generations"},
        "endpoint",
        "invalid_value",
        "Supported values are: '/v1/chat/completions', '/v1/completions', '/v1/embeddings', and "
        "'/v1/responses'",
    ),
    ({"completion_window": "1h"}, "completion_window", "invalid_value", "Supported values are: '24h'"),
    ({"completion_window": "48h"}, "completion_window", "invalid_value", "Invalid value: '48h'"),
    (
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        "metadata",
        "object_above_max_properties",
        "at most 16",
    ),
    ({"metadata": {"k" * 65: "v"}}, f"metadata.{'k' * 65}", "string_above_max_length", "maximum length 64"),
    ({"metadata": {"team": "x" * 513}}, "metadata.team", "string_above_max_length", "maximum length 512"),
    ({"metadata": {"team": 7}}, "metadata.team", "invalid_type", "expected a string"),
    (
        {"output_expires_after": {"anchor": "created_at", "seconds": 60}},
        "output_expires_after.seconds",
        None,
        "greater than or equal to 3600",
    ),
    (
        {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
        "output_expires_after.anchor",
        None,
        "created_at",
    ),
    ({"extra_body": {"priority": "high"}}, "priority", "unknown_parameter", "Unrecognized request argument"),
]


@pytest.mark.parametrize(("fields", "param", "code", "words"), REFUSED_AT_CREATE)
def test_what_openai_refuses_at_create_is_a_400_naming_the_field(
    server: Server, fields: dict[str, Any], param: str, code: str | None, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        create(server, **fields)
    assert (refused.value.status_code, refused.value.param, refused.value.code) == (400, param, code)
    assert words in refused.value.message
    assert server.backend.jobs == {}  # no job, no batch
    assert server.sdk.batches.list().data == []


def test_an_operator_may_allow_other_completion_windows(tmp_path: Path) -> None:
    with serve(tmp_path, openai_any_completion_window=True) as server:
        batch = create(server, completion_window="90m")
        assert batch.completion_window == "90m" and batch.expires_at == batch.created_at + 5400
        with pytest.raises(openai.BadRequestError, match="not a duration"):
            create(server, completion_window="soon")


def test_metadata_within_openais_limits_is_kept(server: Server) -> None:
    metadata = {f"k{i}": "v" * 512 for i in range(16)}
    assert create(server, metadata=metadata).metadata == metadata


# ---- create: what OpenAI finds while validating -------------------------------------------------


def test_an_unknown_input_file_makes_a_batch_that_fails_naming_input_file_id(server: Server) -> None:
    batch = create(server, input_file_id="file-doesnotexist")
    assert batch.status == "failed" and batch.failed_at == batch.created_at
    assert batch.errors is not None and batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.code, error.param, error.line) == ("invalid_request", "input_file_id", None)
    assert "file-doesnotexist" in (error.message or "") and "purpose 'batch'" in (error.message or "")
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    assert server.sdk.batches.retrieve(batch.id) == batch
    assert [b.id for b in server.sdk.batches.list().data] == [batch.id]
    assert server.backend.jobs == {}  # nothing to run
    with pytest.raises(openai.ConflictError, match=r"Cannot cancel a batch with status 'failed'\."):
        server.sdk.batches.cancel(batch.id)


def test_the_job_of_a_batch_checks_its_lines_as_openai_does(server: Server) -> None:
    batch = create(server)
    params = server.backend.job_of(batch.id).params
    assert (params.line_checks, params.endpoint, params.model) == (LineChecks.openai, CHAT, MODEL)
    lenient = create(server, extra_body={"invalid_lines": "error_file"})
    assert server.backend.job_of(lenient.id).params.line_checks is LineChecks.openai_lenient


def test_a_batch_that_failed_validation_lists_each_line_and_has_no_files(server: Server) -> None:
    batch = create(server)
    job = server.backend.job_of(batch.id)
    job_dir = server.tmp / "home" / "jobs" / str(UUID(batch.id.removeprefix("batch_")))
    (job_dir / "work").mkdir(parents=True)
    bad = {"line": 2, "custom_id": "x", "error": {"code": "invalid_url", "message": "m", "param": "url"}}
    (job_dir / "work" / "batch_errors.jsonl").write_text(json.dumps(bad) + "\n")
    job.state = {"type": "FAILED", "name": "Failed"}
    job.error = {"code": "invalid_batch_file", "message": "1 of the batch's 2 lines are invalid"}
    failed = server.sdk.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.errors is not None
    assert [(e.code, e.line, e.param) for e in failed.errors.data or []] == [("invalid_url", 2, "url")]
    assert (failed.output_file_id, failed.error_file_id) == (None, None)


# ---- retrieve, cancel -------------------------------------------------------------------------


def test_unknown_ids_are_404s_that_say_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="No batch found with id 'batch_nope'"):
        server.sdk.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError, match="No batch found"):
        server.sdk.batches.cancel("batch_" + "0" * 32)
    with pytest.raises(openai.NotFoundError, match="No file found with id 'file-nope'"):
        server.sdk.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError, match="No file found"):
        server.sdk.files.content("file-nope")


@pytest.mark.parametrize(
    ("state", "error", "status"),
    [
        ({"type": "COMPLETED", "name": "Completed"}, None, "completed"),
        ({"type": "FAILED", "name": "Failed"}, {"code": "no_valid_lines", "message": "m"}, "failed"),
        ({"type": "FAILED", "name": "Failed"}, {"code": "expired", "message": "m"}, "expired"),
    ],
)
def test_cancelling_an_ended_batch_is_a_409_naming_its_status(
    server: Server, state: dict[str, str], error: dict[str, str] | None, status: str
) -> None:
    batch = create(server)
    job = server.backend.job_of(batch.id)
    job.state, job.error = state, error
    with pytest.raises(openai.ConflictError) as refused:
        server.sdk.batches.cancel(batch.id)
    assert refused.value.body == {  # OpenAI's answer, to the byte
        "message": f"Cannot cancel a batch with status '{status}'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert job.state == state


def test_cancelling_a_batch_that_is_stopping_or_stopped_returns_it_unchanged(server: Server) -> None:
    batch = create(server)
    cancelling = server.sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and isinstance(cancelling.cancelling_at, int)
    again = server.sdk.batches.cancel(batch.id)
    assert again == cancelling
    job = server.backend.job_of(batch.id)
    job.state, job.error = {"type": "CANCELLED", "name": "Cancelled"}, {"code": "cancelled", "message": "m"}
    cancelled = server.sdk.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and server.sdk.batches.cancel(batch.id) == cancelled


def test_every_timestamp_openai_sets_is_an_integer_or_null(server: Server) -> None:
    batch = create(server)
    server.sdk.batches.cancel(batch.id)
    raw = server.http.get(f"/v1/batches/{batch.id}").json()
    stamps = {k: v for k, v in raw.items() if k.endswith("_at")}
    assert len(stamps) == 9 and all(v is None or type(v) is int for v in stamps.values()), stamps
    assert all(
        type(v) is int for k, v in stamps.items() if k in ("created_at", "expires_at", "cancelling_at")
    )


# ---- idempotent create ------------------------------------------------------------------------


def test_the_same_idempotency_key_and_parameters_return_the_same_batch(server: Server) -> None:
    file_id = batch_file(server)
    first = create(server, input_file_id=file_id, extra_body={"idempotency_key": "nightly-1"})
    server.clock.now += 5
    again = create(server, input_file_id=file_id, extra_body={"idempotency_key": "nightly-1"})
    assert (again.id, again.created_at) == (first.id, first.created_at)
    assert len(server.backend.jobs) == 1
    other = create(server, input_file_id=file_id, extra_body={"idempotency_key": "nightly-2"})
    assert other.id != first.id and len(server.backend.jobs) == 2


def test_the_same_idempotency_key_with_other_parameters_is_a_409(server: Server) -> None:
    file_id = batch_file(server)
    first = create(server, input_file_id=file_id, extra_body={"idempotency_key": "k"})
    with pytest.raises(openai.ConflictError) as conflict:
        create(server, input_file_id=file_id, metadata={"a": "b"}, extra_body={"idempotency_key": "k"})
    assert conflict.value.param == "idempotency_key" and first.id in conflict.value.message
    assert "other parameters" in conflict.value.message and len(server.backend.jobs) == 1


def test_a_key_that_made_a_failed_batch_returns_it_too(server: Server) -> None:
    first = create(server, input_file_id="file-missing", extra_body={"idempotency_key": "k"})
    again = create(server, input_file_id="file-missing", extra_body={"idempotency_key": "k"})
    assert again.id == first.id and again.status == "failed"


# ---- files that expire -------------------------------------------------------------------------


def finished(server: Server, batch_id: str) -> None:
    """Its job completed, with one answer and one error in its output files."""
    out = server.tmp / "out"
    out.mkdir(exist_ok=True)
    success = {
        "line": 1,
        "custom_id": "r0",
        "generations": [{"role": "assistant", "text": "hi"}],
        "usage": {},
    }
    error = {"line": 2, "custom_id": "r1", "error": {"code": "http_500", "message": "m"}}
    (out / "success.jsonl").write_text(json.dumps(success) + "\n")
    (out / "errors.jsonl").write_text(json.dumps(error) + "\n")
    job = server.backend.job_of(batch_id)
    job.state, job.outputs = (
        {"type": "COMPLETED", "name": "Completed"},
        (out / "success.jsonl", out / "errors.jsonl"),
    )


def test_output_expires_after_makes_the_output_and_error_files_expire(server: Server) -> None:
    batch = create(server, output_expires_after={"anchor": "created_at", "seconds": 3600})
    finished(server, batch.id)
    done = server.sdk.batches.retrieve(batch.id)
    assert done.output_file_id and done.error_file_id
    made = [server.sdk.files.retrieve(i) for i in (done.output_file_id, done.error_file_id)]
    assert [f.expires_at for f in made] == [f.created_at + 3600 for f in made]
    server.clock.now += 3600
    for file_id in (done.output_file_id, done.error_file_id):
        with pytest.raises(openai.NotFoundError):
            server.sdk.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            server.sdk.files.content(file_id)
    assert {f.id for f in server.sdk.files.list()} == {batch.input_file_id}
    assert server.sdk.batches.retrieve(batch.id).output_file_id == done.output_file_id  # as at OpenAI


def test_without_output_expires_after_the_output_files_last(server: Server) -> None:
    batch = create(server)
    finished(server, batch.id)
    done = server.sdk.batches.retrieve(batch.id)
    server.clock.now += 365 * 86400
    assert server.sdk.files.retrieve(done.output_file_id or "").expires_at is None


def test_an_uploaded_file_with_expires_after_is_gone_after_it(server: Server) -> None:
    uploaded = server.sdk.files.create(
        file=("x.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 7200}
    )
    assert uploaded.expires_at == uploaded.created_at + 7200
    server.clock.now += 7199
    assert server.sdk.files.retrieve(uploaded.id).id == uploaded.id
    server.clock.now += 1
    with pytest.raises(openai.NotFoundError):
        server.sdk.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError) as refused:
        server.sdk.files.create(
            file=("x.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 5}
        )
    assert refused.value.param == "expires_after.seconds"


# ---- the wire objects ---------------------------------------------------------------------------

SDK_TYPES: list[tuple[type[Any], type[Any]]] = [
    (schemas.Batch, openai.types.Batch),
    (schemas.BatchError, openai.types.BatchError),
    (schemas.BatchRequestCounts, openai.types.BatchRequestCounts),
    (schemas.BatchUsage, openai.types.BatchUsage),
    (schemas.FileObject, openai.types.FileObject),
    (schemas.FileDeleted, openai.types.FileDeleted),
]


@pytest.mark.parametrize(("ours", "sdk"), SDK_TYPES, ids=lambda t: t.__name__)
def test_the_wire_objects_have_the_sdks_fields(ours: type[Any], sdk: type[Any]) -> None:
    assert set(ours.model_fields) == set(sdk.model_fields)


def test_a_batch_reads_back_through_the_sdks_type_unchanged(server: Server) -> None:
    raw: Callable[[str], dict[str, Any]] = lambda path: server.http.get(path).json()  # noqa: E731
    batch = create(server, metadata={"a": "b"})
    body = raw(f"/v1/batches/{batch.id}")
    assert openai.types.Batch.model_validate(body).model_dump() == body
