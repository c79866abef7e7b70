"""Keys of their own against a real ``batchinfer serve``: jobs carry their owner as a Prefect tag, and
the lists Prefect filters by it hold only the caller's. The session's ``serve`` gets keys for this
test only (the store is read at every request; with it gone, the server is open again)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import openai
import pytest

from batchinfer.control.keys import KeyStore
from batchinfer.testing.served import ServeProcess, write_prompts

pytestmark = pytest.mark.e2e


@pytest.fixture
def keys(served: ServeProcess) -> Iterator[dict[str, str]]:
    store = KeyStore(served.home / "keys.sqlite3")
    made = {name: store.create(name, admin=name == "root")[1] for name in ("alice", "bob", "root")}
    try:
        yield made
    finally:
        for path in served.home.glob("keys.sqlite3*"):
            path.unlink()


def seed(served: ServeProcess, key: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, served.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def wait(served: ServeProcess, key: str, job_id: str) -> dict[str, object]:
    """The job once it has ended, as ``key`` sees it."""
    deadline = time.monotonic() + 120
    while True:
        job = seed(served, key, "GET", "/batch_inference/job_status", params={"job_id": job_id}).json()
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.1)


def test_each_key_sees_only_its_own_jobs_and_batches_on_a_real_server(
    served: ServeProcess, keys: dict[str, str], data_dir: Path
) -> None:
    assert httpx.get(served.url + "/batch_inference/jobs", timeout=30).status_code == 401
    body = {"model": "fake", "prompt_file_path": {"type": "filepath", "value": ""}}
    body["prompt_file_path"]["value"] = str(write_prompts(data_dir, "tenant-a", ["tenant question"]))  # type: ignore[index]
    job_id = seed(served, keys["alice"], "POST", "/batch_inference/submit_job", json=body).json()["job_id"]
    assert wait(served, keys["alice"], job_id)["status"] == "completed"

    mine = seed(served, keys["bob"], "GET", "/batch_inference/job_status", params={"job_id": job_id})
    never = str(uuid4())
    unknown = seed(served, keys["bob"], "GET", "/batch_inference/job_status", params={"job_id": never})
    assert mine.status_code == 404 and mine.content == unknown.content.replace(
        never.encode(), job_id.encode()
    )

    def listed(key: str) -> set[str]:
        page = seed(served, key, "GET", "/batch_inference/jobs", params={"limit": 200}).json()
        return {job["job_id"] for job in page["data"]}

    assert listed(keys["alice"]) == {job_id}  # Prefect's tag filter: not the session's other jobs
    assert job_id not in listed(keys["bob"]) and job_id in listed(keys["root"])

    alice = openai.OpenAI(base_url=served.url + "/v1", api_key=keys["alice"], max_retries=0)
    bob = openai.OpenAI(base_url=served.url + "/v1", api_key=keys["bob"], max_retries=0)
    line = {"custom_id": "t", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": "fake", "messages": [{"role": "user", "content": "tenant batch"}]}  # type: ignore[assignment]
    file_id = alice.files.create(file=("t.jsonl", json.dumps(line).encode()), purpose="batch").id
    batch = alice.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(file_id)
    assert [b.id for b in bob.batches.list()] == []
    assert wait(served, keys["alice"], batch.id)["status"] == "completed"
    output_id = alice.batches.retrieve(batch.id).output_file_id
    assert output_id is not None and alice.files.content(output_id).read()
    with pytest.raises(openai.NotFoundError):
        bob.files.content(output_id)
