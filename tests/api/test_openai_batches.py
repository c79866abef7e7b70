"""The OpenAI-compatible API's parts: status mapping, timestamps, line conversion, the store of
files and batches; and the /v1 routes against an in-memory job backend (no Prefect)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from batchinfer.api.app import create_app
from batchinfer.api.openai.batches import window_seconds
from batchinfer.api.openai.files import FileStore
from batchinfer.api.openai.ids import batch_id_of, job_uuid_of
from batchinfer.api.openai.lines import (
    OutputContext,
    batch_errors,
    convert,
    error_line,
    scan_models,
    success_line,
    unrun_records,
)
from batchinfer.api.openai.records import BatchRecord, StoredFile
from batchinfer.api.openai.status import timestamps
from batchinfer.api.openai.store import Store, adopt_json_records
from batchinfer.contract import BatchInference, JobStatus
from batchinfer.control.states import SEED_STATUS, BatchStatus, StateEvent, batch_status, job_status
from batchinfer.engines.catalog import load_catalog
from batchinfer.errors import FileTooLargeError, JobNotFoundError
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.settings import Settings

# ---- status ---------------------------------------------------------------------------------

STATUS_TABLE = [
    # (state type, state name, job error code, expiring) -> batch status
    ("SCHEDULED", "Scheduled", None, False, "validating"),
    ("SCHEDULED", "Late", None, False, "validating"),
    ("PENDING", "Pending", None, False, "validating"),
    ("RUNNING", "Running", None, False, "validating"),
    ("RUNNING", "Validating", None, False, "validating"),
    ("RUNNING", "Inferring", None, False, "in_progress"),
    ("RUNNING", "Retrying", None, False, "in_progress"),
    ("RUNNING", "Gathering", None, False, "finalizing"),
    ("PAUSED", "Paused", None, False, "in_progress"),
    ("COMPLETED", "Completed", None, False, "completed"),
    ("CANCELLING", "Cancelling", None, False, "cancelling"),
    ("CANCELLED", "Cancelled", "cancelled", False, "cancelled"),
    ("FAILED", "Failed", "cancelled", False, "cancelled"),
    ("FAILED", "Failed", "no_valid_lines", False, "failed"),
    ("FAILED", "Failed", "model_unreachable", False, "failed"),
    ("CRASHED", "Crashed", "crashed", False, "failed"),
    ("FAILED", "Failed", "deadline_exceeded", False, "expired"),
    ("FAILED", "Failed", "expired", False, "expired"),
    ("CANCELLED", "Cancelled", "expired", False, "expired"),
    # The adapter stopped it for its completion window: its stop reads expired.
    ("CANCELLING", "Cancelling", None, True, "finalizing"),
    ("CANCELLED", "Cancelled", "cancelled", True, "expired"),
    ("COMPLETED", "Completed", None, True, "completed"),  # it finished before the stop landed
    ("RUNNING", "Inferring", None, True, "in_progress"),
]


@pytest.mark.parametrize(("state_type", "name", "code", "expiring", "expected"), STATUS_TABLE)
def test_batch_status_from_the_flow_run_state(
    state_type: str, name: str, code: str | None, expiring: bool, expected: str
) -> None:
    assert batch_status(state_type, name, code, expiring) is BatchStatus(expected)


@pytest.mark.parametrize(("state_type", "name", "code", "expiring", "expected"), STATUS_TABLE)
def test_the_batch_status_and_the_seed_status_of_a_run_agree(
    state_type: str, name: str, code: str | None, expiring: bool, expected: str
) -> None:
    assert SEED_STATUS[BatchStatus(expected)] is job_status(state_type, name)


def test_every_prefect_state_type_is_mapped() -> None:
    from prefect.client.schemas.objects import StateType

    for state_type in StateType:
        batch_status(state_type.value, None, None)
    with pytest.raises(ValueError, match="Unmapped"):
        batch_status("NEW_STATE", None, None)


T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_timestamps_come_from_the_state_history() -> None:
    history = [
        StateEvent("SCHEDULED", "Scheduled", at(0)),
        StateEvent("RUNNING", "Running", at(1)),
        StateEvent("RUNNING", "Validating", at(2)),
        StateEvent("RUNNING", "Inferring", at(3)),
        StateEvent("RUNNING", "Gathering", at(9)),
        StateEvent("COMPLETED", "Completed", at(10)),
    ]
    stamps = timestamps(list(reversed(history)), BatchStatus.completed)  # any order in
    base = int(T0.timestamp())
    assert stamps == {
        "in_progress_at": base + 3,
        "finalizing_at": base + 9,
        "completed_at": base + 10,
        "failed_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "expired_at": None,
    }


def test_a_cancelled_run_has_cancelling_and_cancelled_times_and_an_expired_one_expired_at() -> None:
    history = [
        StateEvent("RUNNING", "Inferring", at(3)),
        StateEvent("CANCELLING", "Cancelling", at(5)),
        StateEvent("CANCELLED", "Cancelled", at(7)),
    ]
    base = int(T0.timestamp())
    cancelled = timestamps(history, BatchStatus.cancelled)
    assert (cancelled["cancelling_at"], cancelled["cancelled_at"], cancelled["expired_at"]) == (
        base + 5,
        base + 7,
        None,
    )
    expired = timestamps(history, BatchStatus.expired)
    assert (expired["cancelled_at"], expired["expired_at"]) == (None, base + 7)


# ---- ids, windows ---------------------------------------------------------------------------


def test_a_batch_id_names_its_job() -> None:
    job = UUID("6f1c2a3e-0000-4000-8000-000000000001")
    assert batch_id_of(job) == "batch_6f1c2a3e000040008000000000000001"
    assert job_uuid_of(batch_id_of(job)) == job == job_uuid_of(str(job))
    assert job_uuid_of("batch_nothex") is None and job_uuid_of("../etc") is None


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400), ("90m", 5400), ("3s", 3), ("2d", 172800)])
def test_completion_windows(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "24", "0h", "soon", "-1h", "1w"])
def test_completion_windows_refused(window: str) -> None:
    with pytest.raises(ValueError):
        window_seconds(window)


# ---- lines ----------------------------------------------------------------------------------


def test_the_model_is_read_off_the_lines_and_other_models_are_reported_by_line() -> None:
    lines = [
        b"not json\n",
        b'{"custom_id": "a", "body": {"messages": []}}\n',
        b'{"custom_id": "b", "body": {"model": "m1", "messages": []}}\n',
        b'{"custom_id": "c", "body": {"model": "m2", "messages": []}}\n',
        b'{"custom_id": "d", "body": {"model": "m1", "messages": []}}\n',
    ]
    found = scan_models(lines)
    assert (found.model, found.first_line, found.mismatched) == ("m1", 3, [4])
    assert scan_models([b"[]\n"]).model is None


CTX = OutputContext(batch_id="batch_abc", model="fake", created=1_700_000_000)


def test_a_success_record_becomes_a_chat_completion_line_with_an_object_body() -> None:
    record = {
        "line": 3,
        "custom_id": "r3",
        "generations": [
            {"role": "assistant", "text": "hi", "finish_reason": "stop"},
            {"role": "assistant", "text": "ho", "finish_reason": "length", "logprobs": {"content": []}},
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    line = success_line(record, CTX)
    assert line["custom_id"] == "r3" and line["error"] is None and line["id"].startswith("batch_req_")
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
    body = line["response"]["body"]
    assert (body["object"], body["model"], body["created"]) == ("chat.completion", "fake", 1_700_000_000)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop",
            "logprobs": None,
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "ho"},
            "finish_reason": "length",
            "logprobs": {"content": []},
        },
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert success_line(record, CTX) == line  # ids are stable: the same file made twice is the same


def test_a_record_that_carries_the_servers_answer_is_output_with_that_answer_as_its_body() -> None:
    answer = {
        "id": "chatcmpl-server-1",
        "object": "chat.completion",
        "model": "served",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "prompt_tokens_details": {}},
    }
    record = {"line": 1, "custom_id": "a", "generations": [], "usage": {}, "response": answer}
    assert success_line(record, CTX)["response"]["body"] == answer


def test_a_local_engines_tool_call_and_refusal_go_back_into_the_built_message() -> None:
    generation = {
        "role": "assistant",
        "text": "",
        "tool_call": True,
        "metadata": {"tool_calls": [{"id": "c"}]},
    }
    record = {"line": 1, "custom_id": None, "generations": [generation], "usage": {}}
    message = success_line(record, CTX)["response"]["body"]["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}


def test_local_records_of_completions_and_embeddings_are_built_in_their_endpoints_shape() -> None:
    completions = OutputContext(batch_id="b", model="m", created=0, endpoint="/v1/completions")
    record = {
        "line": 1,
        "custom_id": None,
        "generations": [{"text": "t", "finish_reason": "length"}],
        "usage": {},
    }
    body = success_line(record, completions)["response"]["body"]
    assert (body["object"], body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == (
        "text_completion",
        "t",
        "length",
    )
    vectors = {"line": 2, "custom_id": None, "generations": [], "embeddings": [[0.5], [1.0]], "usage": {}}
    data = success_line(vectors, CTX)["response"]["body"]["data"]
    assert [(d["index"], d["embedding"]) for d in data] == [(0, [0.5]), (1, [1.0])]


def test_error_records_become_error_lines_and_a_model_servers_http_status_is_kept() -> None:
    invalid = error_line(
        {"line": 2, "custom_id": None, "error": {"code": "invalid_json", "message": "m"}}, CTX
    )
    assert invalid["response"] is None and invalid["error"] == {"code": "invalid_json", "message": "m"}
    refused = error_line({"line": 5, "custom_id": "x", "error": {"code": "http_400", "message": "bad"}}, CTX)
    assert refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["message"] == "bad"
    assert refused["error"]["code"] == "http_400"


def test_lines_cut_short_by_an_expiry_read_batch_expired() -> None:
    cut = {"line": 7, "custom_id": "y", "error": {"code": "cancelled", "message": "m"}}
    expired = OutputContext(batch_id="b", model="fake", created=0, expired=True)
    assert error_line(cut, expired)["error"]["code"] == "batch_expired"
    assert error_line(cut, CTX)["error"]["code"] == "cancelled"
    other = {"line": 8, "custom_id": "z", "error": {"code": "http_500", "message": "m"}}
    assert error_line(other, expired)["error"]["code"] == "http_500"


def test_convert_tells_records_apart_and_writes_jsonl() -> None:
    records = [
        '{"line":1,"custom_id":"a","generations":[{"role":"assistant","text":"t"}],"usage":{}}\n',
        "\n",
        '{"line":2,"custom_id":"b","error":{"code":"invalid_json","message":"m"}}\n',
    ]
    lines = [json.loads(raw) for raw in convert(records, CTX)]
    assert [(x["custom_id"], x["error"] is None) for x in lines] == [("a", True), ("b", False)]


def test_a_batch_that_never_ran_has_every_line_in_its_error_file() -> None:
    lines = [b'{"custom_id": "a"}\n', b"\n", b"broken\n", b'{"custom_id": 5}\n']
    records = [json.loads(r) for r in unrun_records(lines, "batch_expired", "late")]
    assert [(r["line"], r["custom_id"]) for r in records] == [(1, "a"), (3, None), (4, None)]


def test_validation_line_errors_become_batch_errors_up_to_a_limit() -> None:
    raws = [
        json.dumps({"line": n, "custom_id": None, "error": {"code": "invalid_json", "message": "m"}})
        for n in range(5)
    ]
    raws[1] = json.dumps({"line": 1, "error": {"code": "invalid_url", "message": "u", "param": "url"}})
    assert [e.model_dump() for e in batch_errors(raws, 2)] == [
        {"code": "invalid_json", "message": "m", "param": None, "line": 0},
        {"code": "invalid_url", "message": "u", "param": "url", "line": 1},
    ]


# ---- the store ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "openai.sqlite3")


def test_the_file_store_keeps_bytes_and_file_objects_and_deletes_both(tmp_path: Path, store: Store) -> None:
    files = FileStore(tmp_path / "files", store)
    first = files.create("a.jsonl", "batch", [b"ab", b"c"], owner="")
    second = files.create("b.jsonl", "batch_output", [b""], owner="")
    assert files.path(first.id).read_bytes() == b"abc"
    assert first.public().model_dump() | {"created_at": 0} == {
        "id": first.id,
        "object": "file",
        "bytes": 3,
        "created_at": 0,
        "filename": "a.jsonl",
        "purpose": "batch",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
    assert [f.id for f in files.page(None, None, None, 10)[0]] == [second.id, first.id]  # newest first
    assert [f.id for f in files.page(None, "batch", None, 10)[0]] == [first.id]
    assert files.delete(first.id, None) and not files.delete(first.id, None)
    assert files.get(first.id, None) is None and not files.path(first.id).exists()
    assert files.get("../../etc/passwd", None) is None and files.get("file-../x", None) is None


def test_a_file_over_the_limit_is_not_stored(tmp_path: Path, store: Store) -> None:
    files = FileStore(tmp_path / "files", store)
    with pytest.raises(FileTooLargeError):
        files.create("big.jsonl", "batch", [b"x" * 6, b"x" * 6], max_bytes=10, owner="")
    assert files.page(None, None, None, 10) == ([], False) and list((tmp_path / "files").iterdir()) == []


def test_a_file_is_gone_once_its_expiry_passes(tmp_path: Path, store: Store) -> None:
    now = [1_000_000.0]
    files = FileStore(tmp_path / "files", store, clock=lambda: now[0])
    lasting = files.create("keep.jsonl", "batch", [b"k"], owner="")
    expiring = files.create("gone.jsonl", "batch", [b"g"], expires_after_s=3600, owner="")
    assert expiring.expires_at == 1_000_000 + 3600 and lasting.expires_at is None
    now[0] += 3599
    assert files.get(expiring.id, None) == expiring
    now[0] += 1
    assert [f.id for f in files.page(None, None, None, 10)[0]] == [lasting.id]
    assert files.get(expiring.id, None) is None and not files.path(expiring.id).exists()


def record(n: int, **fields: Any) -> BatchRecord:
    fields = {"model": None, **fields}
    return BatchRecord(
        id=f"batch_{n:032x}",
        job_id=None,
        input_file_id="file-x",
        input_path=None,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        window_s=86400,
        created_at=n,
        created_ns=n,
        expires_at=n + 86400,
        **fields,
    )


def test_batch_pages_run_newest_first_after_a_cursor(store: Store) -> None:
    for n in range(1, 6):
        store.save_batch(record(n))
    ids = [r.id for r in store.batches_page(None, None, 10)[0]]
    assert ids == [record(n).id for n in (5, 4, 3, 2, 1)]
    assert [r.id for r in store.batches_page(None, ids[0], 2)[0]] == ids[1:3]
    assert store.batches_page(None, ids[0], 2)[1] is True and store.batches_page(None, ids[2], 2)[1] is False
    assert store.batches_page(None, "batch_" + "f" * 32, 2) == ([], False)  # an unknown cursor


def test_a_batch_is_found_by_its_idempotency_key_and_a_key_makes_one_batch(store: Store) -> None:
    store.save_batch(record(1, idempotency_key="k"))
    store.save_batch(record(1, idempotency_key="k", model="updated"))  # the same batch, saved again
    found = store.batch_by_key("", "k")
    assert found is not None and found.model == "updated"
    with pytest.raises(sqlite3.IntegrityError):
        store.save_batch(record(2, idempotency_key="k"))


def test_records_an_earlier_release_kept_as_json_files_are_adopted_once(tmp_path: Path, store: Store) -> None:
    files_dir, batches_dir = tmp_path / "files", tmp_path / "batches"
    files_dir.mkdir()
    batches_dir.mkdir()
    old = StoredFile(
        id="file-abc", bytes=1, created_at=1, filename="a", purpose="batch", sha256="0", created_ns=1
    )
    (files_dir / "file-abc.json").write_text(old.model_dump_json())
    (batches_dir / f"{record(1).id}.json").write_text(record(1).model_dump_json())
    assert adopt_json_records(store, files_dir, batches_dir) == 2
    assert store.file("file-abc", None) == old and store.batch(record(1).id, None) == record(1)
    assert adopt_json_records(store, files_dir, batches_dir) == 0


# ---- the routes, on an in-memory backend ----------------------------------------------------

JOB = UUID("4f0c5a3e-0000-4000-8000-000000000002")


class OneJobBackend:
    """Submits one job and reports it in whatever state a test sets."""

    def __init__(self) -> None:
        self.submitted: list[JobParameters] = []
        self.state: dict[str, Any] = {"type": "SCHEDULED", "name": "Scheduled"}

    def _job(self) -> BatchInference:
        params = self.submitted[0]
        return BatchInference(
            job_id=str(JOB),
            created=T0,
            status=job_status(self.state["type"], self.state["name"]),
            input_file_path=params.prompt_file,
            metadata={"model": params.model, "state": self.state, "request_counts": {"total": 1}},
        )

    async def submit(self, params: JobParameters) -> BatchInference:
        self.submitted.append(params)
        return self._job()

    async def status(self, job_id: UUID) -> BatchInference:
        if job_id != JOB or not self.submitted:
            raise JobNotFoundError(str(job_id))
        return self._job()

    async def history(self, job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
        return {}  # no states recorded: every timestamp but created_at stays null

    async def job_files(self, job_id: UUID) -> tuple[BatchInference, JobPlace]:
        return await self.status(job_id), JobPlace(JobLayout(Path("/nonexistent") / str(job_id)))

    async def jobs_files(self, job_ids: list[UUID]) -> dict[UUID, tuple[BatchInference, JobPlace]]:
        known = [job_id for job_id in job_ids if job_id == JOB and self.submitted]
        return {job_id: await self.job_files(job_id) for job_id in known}


@pytest.fixture
def backend() -> OneJobBackend:
    return OneJobBackend()


@pytest.fixture
def client(tmp_path: Path, backend: OneJobBackend) -> Iterator[TestClient]:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[OneJobBackend]:
        yield backend

    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path])
    catalog = load_catalog(None)
    app = create_app(settings, catalog, factory)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def default_model() -> str:
    return load_catalog(None).models[0].id


def upload(client: TestClient, content: bytes, purpose: str = "batch") -> Any:
    return client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": purpose})


def test_upload_and_create_submit_one_job_reading_a_staged_copy(
    client: TestClient, backend: OneJobBackend, tmp_path: Path
) -> None:
    line = {
        "custom_id": "a",
        "body": {"model": default_model(), "messages": [{"role": "user", "content": "x"}]},
    }
    content = (json.dumps(line) + "\n").encode()
    file_id = upload(client, content).json()["id"]
    response = client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert response.status_code == 200, response.text
    batch = response.json()
    assert batch["id"] == batch_id_of(JOB) and batch["status"] == "validating"
    assert batch["expires_at"] == batch["created_at"] + 86400 and batch["errors"] is None
    params = backend.submitted[0]
    assert params.model == default_model()
    # The job stops itself at the batch's expires_at, to the second.
    assert params.expires_at is not None and params.expires_at.timestamp() == batch["expires_at"]
    staged = Path(params.prompt_file.value)
    assert staged.read_bytes() == content and staged.is_relative_to(tmp_path / "home" / "uploads")
    # The seed's job_status takes the batch id; the route reaches the same job.
    seed = client.get("/batch_inference/job_status", params={"job_id": batch["id"]})
    assert seed.status_code == 200 and seed.json()["job_id"] == str(JOB)


def test_v1_errors_have_openais_shape(client: TestClient) -> None:
    missing = client.get("/v1/batches/batch_" + "0" * 32)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error" and missing.json()["error"]["message"]
    bad_limit = client.get("/v1/batches", params={"limit": 0})
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"
    not_json = client.post("/v1/batches", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "error" in not_json.json()
    no_field = client.post("/v1/batches", json={"endpoint": "/v1/chat/completions"})
    assert no_field.status_code == 400 and no_field.json()["error"]["param"] == "input_file_id"
    assert upload(client, b"{}\n", purpose="nope").json()["error"]["param"] == "purpose"
    no_route = client.get("/v1/nothing")
    assert no_route.status_code == 404 and "error" in no_route.json()
    # Outside /v1 the seed's shapes stay as they were.
    seed = client.get("/batch_inference/job_status", params={"job_id": "nope"})
    assert seed.status_code == 422 and "detail" in seed.json()


def test_file_routes_list_retrieve_content_delete(client: TestClient) -> None:
    ids = [upload(client, f"{i}\n".encode()).json()["id"] for i in range(3)]
    listed = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in listed["data"]] == ids[::-1][:2] and listed["has_more"] is True
    rest = client.get("/v1/files", params={"limit": 2, "after": listed["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert client.get(f"/v1/files/{ids[1]}/content").content == b"1\n"
    assert client.delete(f"/v1/files/{ids[1]}").json() == {"id": ids[1], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{ids[1]}").status_code == 404
    assert client.delete(f"/v1/files/{ids[1]}").status_code == 404


def test_a_batch_of_a_finished_job_with_no_outputs_stays_without_files(
    client: TestClient, backend: OneJobBackend
) -> None:
    line = {
        "custom_id": "a",
        "body": {"model": default_model(), "messages": [{"role": "user", "content": "x"}]},
    }
    file_id = upload(client, (json.dumps(line) + "\n").encode()).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch_id = client.post("/v1/batches", json=body).json()["id"]
    backend.state = {"type": "CANCELLED", "name": "Cancelled"}  # cancelled before it ran
    batch = client.get(f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "cancelled" and batch["error_file_id"]
    errors = client.get(f"/v1/files/{batch['error_file_id']}/content").text.splitlines()
    assert [json.loads(e)["custom_id"] for e in errors] == ["a"]
    assert client.get(f"/v1/batches/{batch_id}").json()["error_file_id"] == batch["error_file_id"]
    assert JobStatus.failed is job_status("CANCELLED", "Cancelled")
