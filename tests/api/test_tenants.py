"""Many users, one server: keys of their own, and nobody reads another's jobs, files or batches.

Two user keys (alice, bob) and an admin key, through the seed API and the official ``openai`` SDK,
in-process over an in-memory job backend whose jobs a test ends in any state. For every call that
takes an id, bob's answer on alice's object is the very answer an id never issued gets, in every
state; bob's lists hold none of alice's ids; the admin sees and manages both.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from batchinfer.api.app import create_app
from batchinfer.control.keys import KeyStore, Quota
from batchinfer.engines.catalog import load_catalog
from batchinfer.settings import Settings
from batchinfer.testing.memory_backend import MemoryBackend

MODEL = load_catalog(None).models[0].id
CHAT = "/v1/chat/completions"
TOKEN = "the-operators-token"
# The states an object may be in when another tenant asks for it: (state type, error code).
ENDED = {
    "completed": ("COMPLETED", None),
    "failed": ("FAILED", "no_valid_lines"),
    "cancelled": ("CANCELLED", "cancelled"),
    "expired": ("FAILED", "expired"),
}


@dataclass
class Tenant:
    key: str
    http: TestClient
    sdk: openai.OpenAI

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def seed(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers=self.headers(), **kwargs)


@dataclass
class Server:
    backend: MemoryBackend
    keys: KeyStore
    http: TestClient
    tmp: Path

    def tenant(self, key: str) -> Tenant:
        sdk = openai.OpenAI(
            base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0
        )
        return Tenant(key, self.http, sdk)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path], api_token=TOKEN)
    backend = MemoryBackend()

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[MemoryBackend]:
        yield backend

    app = create_app(settings, load_catalog(None), factory)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Server(backend, KeyStore(settings.keys_path), http, tmp_path)


def make_key(server: Server, name: str, admin: bool = False, **quota: int) -> Tenant:
    _, key = server.keys.create(name, admin=admin, quota=Quota(**quota))
    return server.tenant(key)


@pytest.fixture
def alice(server: Server) -> Tenant:
    return make_key(server, "alice")


@pytest.fixture
def bob(server: Server) -> Tenant:
    return make_key(server, "bob")


@pytest.fixture
def admin(server: Server) -> Tenant:
    return make_key(server, "root", admin=True)


def prompts(tmp: Path, lines: int = 1) -> dict[str, Any]:
    path = tmp / f"prompts-{uuid4().hex}.jsonl"
    path.write_text("".join(json.dumps([{"role": "user", "text": f"q{i}"}]) + "\n" for i in range(lines)))
    return {"model": MODEL, "prompt_file_path": {"type": "filepath", "value": str(path)}}


def submit(server: Server, tenant: Tenant, lines: int = 1) -> httpx.Response:
    return tenant.seed("POST", "/batch_inference/submit_job", json=prompts(server.tmp, lines))


def batch_of(tenant: Tenant) -> openai.types.Batch:
    line = {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": MODEL, "messages": []}}
    file_id = tenant.sdk.files.create(
        file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch"
    ).id
    return tenant.sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")


def end(server: Server, job_id: str, state: str) -> None:
    """End a job (or a batch's job) in ``state``, with an output and an error file."""
    out = server.tmp / f"out-{uuid4().hex}"
    out.mkdir()
    answer = {"line": 1, "custom_id": "a", "generations": [{"role": "assistant", "text": "hi"}], "usage": {}}
    (out / "success.jsonl").write_text(json.dumps(answer) + "\n")
    failed = {"line": 2, "custom_id": "b", "error": {"code": "http_500", "message": "m"}}
    (out / "errors.jsonl").write_text(json.dumps(failed) + "\n")
    job = server.backend.job_of(job_id)
    job.end(*ENDED[state])
    job.outputs = (out / "success.jsonl", out / "errors.jsonl")


# Every call that takes a job id, through the seed API: (method, path, how the id is passed).
SEED_CALLS: dict[str, Callable[[Tenant, str], httpx.Response]] = {
    "job_status": lambda t, i: t.seed("GET", "/batch_inference/job_status", params={"job_id": i}),
    "job_results": lambda t, i: t.seed("GET", "/batch_inference/job_results", params={"job_id": i}),
    "resume_job": lambda t, i: t.seed("POST", "/batch_inference/resume_job", params={"job_id": i}),
    "cancel_job": lambda t, i: t.seed("POST", "/batch_inference/cancel_job", params={"job_id": i}),
    "retry_failed": lambda t, i: t.seed("POST", "/batch_inference/retry_failed", json={"job_id": i}),
}
# Every call that takes a batch or file id, through the SDK, as the raw answer it gets.
V1_CALLS: dict[str, Callable[[Tenant, str], Any]] = {
    "batches.retrieve": lambda t, i: t.sdk.batches.with_raw_response.retrieve(i),
    "batches.cancel": lambda t, i: t.sdk.batches.with_raw_response.cancel(i),
    "files.retrieve": lambda t, i: t.sdk.files.with_raw_response.retrieve(i),
    "files.content": lambda t, i: t.sdk.files.with_raw_response.content(i),
    "files.delete": lambda t, i: t.sdk.files.with_raw_response.delete(i),
}


def refusal(call: Callable[[], Any]) -> tuple[int, bytes]:
    """The status and bytes of a refused call (an SDK error or a plain response)."""
    try:
        response = call()
    except openai.APIStatusError as error:
        return error.status_code, error.response.content
    return response.status_code, response.content


def as_never_issued(
    call: Callable[[Tenant, str], Any], tenant: Tenant, object_id: str, fake: str
) -> tuple[int, bytes]:
    """What ``tenant`` gets for an id never issued (``fake``), as if it had asked for ``object_id``."""
    status, body = refusal(lambda: call(tenant, fake))
    return status, body.replace(fake.encode(), object_id.encode())


@pytest.mark.parametrize("state", list(ENDED))
def test_another_users_job_answers_every_call_as_an_id_never_issued(
    server: Server, alice: Tenant, bob: Tenant, admin: Tenant, state: str
) -> None:
    job_id = submit(server, alice).json()["job_id"]
    end(server, job_id, state)
    for name, call in SEED_CALLS.items():
        got = refusal(lambda call=call: call(bob, job_id))  # type: ignore[misc]
        assert got == as_never_issued(call, bob, job_id, str(uuid4())), name
        assert got[0] == 404, name
    assert alice.seed("GET", "/batch_inference/job_status", params={"job_id": job_id}).status_code == 200
    assert admin.seed("GET", "/batch_inference/job_status", params={"job_id": job_id}).status_code == 200


@pytest.mark.parametrize("state", list(ENDED))
def test_another_users_batch_and_files_answer_every_call_as_ids_never_issued(
    server: Server, alice: Tenant, bob: Tenant, admin: Tenant, state: str
) -> None:
    batch = batch_of(alice)
    end(server, batch.id, state)
    batch = alice.sdk.batches.retrieve(batch.id)
    assert batch.output_file_id and batch.error_file_id  # outputs exist, and are alice's
    ids = {"batches": [batch.id], "files": [batch.input_file_id, batch.output_file_id, batch.error_file_id]}
    for name, call in V1_CALLS.items():
        for object_id in ids[name.split(".")[0]]:
            fake = ("batch_" + uuid4().hex) if name.startswith("batches") else f"file-{uuid4().hex}"
            got = refusal(lambda call=call, object_id=object_id: call(bob, object_id))  # type: ignore[misc]
            assert got == as_never_issued(call, bob, object_id, fake), (name, object_id)
            assert got[0] == 404, name
    assert admin.sdk.batches.retrieve(batch.id).id == batch.id
    assert (
        admin.sdk.files.content(batch.output_file_id).read()
        == alice.sdk.files.content(batch.output_file_id).read()
    )


def test_lists_hold_only_the_callers_objects_and_the_admin_sees_all(
    server: Server, alice: Tenant, bob: Tenant, admin: Tenant
) -> None:
    alice_job, bob_job = submit(server, alice).json()["job_id"], submit(server, bob).json()["job_id"]
    alice_batch, bob_batch = batch_of(alice), batch_of(bob)

    def jobs(tenant: Tenant) -> set[str]:
        page = tenant.seed("GET", "/batch_inference/jobs", params={"limit": 200}).json()
        return {job["job_id"] for job in page["data"]}

    def v1(tenant: Tenant) -> tuple[set[str], set[str]]:
        return {b.id for b in tenant.sdk.batches.list()}, {f.id for f in tenant.sdk.files.list()}

    alice_jobs = {alice_job, alice_batch.id.removeprefix("batch_")}
    assert {j.replace("-", "") for j in jobs(alice)} == {j.replace("-", "") for j in alice_jobs}
    assert not {j.replace("-", "") for j in jobs(bob)} & {j.replace("-", "") for j in alice_jobs}
    assert v1(alice) == ({alice_batch.id}, {alice_batch.input_file_id})
    assert v1(bob) == ({bob_batch.id}, {bob_batch.input_file_id})
    assert jobs(admin) >= {alice_job, bob_job}
    assert v1(admin) == (
        {alice_batch.id, bob_batch.id},
        {alice_batch.input_file_id, bob_batch.input_file_id},
    )


def test_a_batch_cannot_be_made_from_another_users_file(server: Server, alice: Tenant, bob: Tenant) -> None:
    alice_file = alice.sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="batch").id
    assert len(alice_file.removeprefix("file-")) * 4 >= 128  # hex digits of random bits
    stolen = bob.sdk.batches.create(input_file_id=alice_file, endpoint=CHAT, completion_window="24h")
    never = bob.sdk.batches.create(
        input_file_id="file-" + uuid4().hex, endpoint=CHAT, completion_window="24h"
    )
    assert stolen.status == never.status == "failed" and server.backend.jobs == {}
    assert stolen.errors and never.errors and stolen.errors.data and never.errors.data
    assert stolen.errors.data[0].code == never.errors.data[0].code == "invalid_request"
    assert stolen.errors.data[0].param == "input_file_id"


def test_idempotency_keys_are_each_users_own(server: Server, alice: Tenant, bob: Tenant) -> None:
    first = batch_of(alice)
    line = json.dumps(
        {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": MODEL, "messages": []}}
    )
    bob_file = bob.sdk.files.create(file=("b.jsonl", line.encode()), purpose="batch").id
    params: dict[str, Any] = {
        "endpoint": CHAT,
        "completion_window": "24h",
        "extra_body": {"idempotency_key": "k"},
    }
    alice.sdk.batches.create(input_file_id=first.input_file_id, **params)
    mine = bob.sdk.batches.create(input_file_id=bob_file, **params)  # the same key: no conflict
    assert bob.sdk.batches.create(input_file_id=bob_file, **params).id == mine.id


CREDENTIALS = {
    "no key": {},
    "a key never made": {"Authorization": "Bearer bik_nope"},
    "x-api-key never made": {"x-api-key": "bik_nope"},
}


@pytest.mark.parametrize("credentials", list(CREDENTIALS))
def test_without_a_valid_key_every_call_is_a_401(server: Server, alice: Tenant, credentials: str) -> None:
    for path in ("/batch_inference/jobs", "/v1/batches", "/v1/files", "/models"):
        response = server.http.get(path, headers=CREDENTIALS[credentials])
        assert response.status_code == 401, path


def test_a_key_is_taken_as_x_api_key_too_and_a_revoked_one_is_refused_at_once(
    server: Server, alice: Tenant
) -> None:
    by_header = server.http.get("/batch_inference/jobs", headers={"x-api-key": alice.key})
    assert by_header.status_code == 200
    assert server.keys.revoke("alice")
    assert alice.seed("GET", "/batch_inference/jobs").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        alice.sdk.batches.list()
    _, rotated = server.keys.rotate("alice") or (None, "")
    assert server.tenant(rotated).seed("GET", "/batch_inference/jobs").status_code == 200
    assert alice.seed("GET", "/batch_inference/jobs").status_code == 401  # the old secret stays refused


def test_the_operators_token_is_an_admin_key(server: Server, alice: Tenant) -> None:
    job_id = submit(server, alice).json()["job_id"]
    operator = server.tenant(TOKEN)
    assert operator.seed("GET", "/batch_inference/job_status", params={"job_id": job_id}).status_code == 200


def test_the_keys_store_holds_no_key_in_plain_text(server: Server, alice: Tenant, admin: Tenant) -> None:
    stored = b"".join(path.read_bytes() for path in server.keys.path.parent.glob("keys.sqlite3*"))
    assert alice.key.encode() not in stored and admin.key.encode() not in stored
    assert alice.key[12:].encode() not in stored  # not even past the characters `keys list` shows


def test_a_quota_is_enforced_and_given_back_once_a_job_ends(server: Server) -> None:
    carol = make_key(server, "carol", max_running_jobs=1, max_enqueued_requests=5)
    first = submit(server, carol, lines=3)
    assert first.status_code == 200
    refused = submit(server, carol, lines=1)
    assert refused.status_code == 429
    detail = refused.json()["detail"][0]
    assert detail["loc"][-1] == "max_running_jobs" and "1 in use" in detail["msg"]
    cancelled = carol.seed("POST", "/batch_inference/cancel_job", params={"job_id": first.json()["job_id"]})
    assert cancelled.status_code == 200
    server.backend.job_of(first.json()["job_id"]).end("CANCELLED", "cancelled")  # its run stops
    assert submit(server, carol, lines=3).status_code == 200  # the job ended: its share is back
    with pytest.raises(openai.RateLimitError, match="max_running_jobs"):  # /v1 counts the same
        batch_of(carol)


def test_a_quota_of_requests_counts_the_lines_of_the_jobs_not_ended(server: Server) -> None:
    dave = make_key(server, "dave", max_enqueued_requests=5)
    assert submit(server, dave, lines=3).status_code == 200
    over = submit(server, dave, lines=3)
    assert over.status_code == 429
    assert "max_enqueued_requests = 5: 3 in use" in over.json()["detail"][0]["msg"]
    assert submit(server, dave, lines=2).status_code == 200
