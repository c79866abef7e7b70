"""POST /batch_inference/resume_job over HTTP: 200 with the job, 404 unknown, 409 not resumable, 422
not a UUID, 401 without the token when one is set. The backend is a double: this tests HTTP only."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from batchinfer.api.app import create_app
from batchinfer.contract import BatchInference, JobStatus, PathType
from batchinfer.contract import Path as PromptPath
from batchinfer.engines.catalog import load_catalog
from batchinfer.errors import JobNotFoundError, JobNotResumableError
from batchinfer.jobspec import JobParameters
from batchinfer.settings import Settings

CRASHED = uuid.UUID("4f0c5a3e-0000-4000-8000-00000000c0de")
COMPLETED = uuid.UUID("4f0c5a3e-0000-4000-8000-00000000d0e5")


class ResumingBackend:
    """Knows a crashed job (resumable) and a completed one (not)."""

    def __init__(self) -> None:
        self.resumed: list[UUID] = []

    async def submit(self, params: JobParameters) -> BatchInference:
        raise NotImplementedError

    async def status(self, job_id: UUID) -> BatchInference:
        raise NotImplementedError

    async def resume(self, job_id: UUID) -> BatchInference:
        if job_id == COMPLETED:
            raise JobNotResumableError(f"Job {job_id} has already completed; there is nothing to resume.")
        if job_id != CRASHED:
            raise JobNotFoundError(str(job_id))
        self.resumed.append(job_id)
        return BatchInference(
            job_id=str(job_id),
            created=datetime(2025, 1, 1, tzinfo=UTC),
            status=JobStatus.validating,
            input_file_path=PromptPath(type=PathType.filepath, value="/data/p.jsonl"),
            metadata={"model": "fake"},
        )


@pytest.fixture
def backend() -> ResumingBackend:
    return ResumingBackend()


def _client(settings: Settings, backend: ResumingBackend) -> TestClient:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[ResumingBackend]:
        yield backend

    return TestClient(create_app(settings, load_catalog(None), factory), raise_server_exceptions=False)  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path, backend: ResumingBackend) -> Iterator[TestClient]:
    with _client(Settings(home=tmp_path / "home", allowed_roots=[tmp_path]), backend) as test_client:
        yield test_client


def test_resuming_a_crashed_job_returns_it_scheduled_again_under_the_same_id(
    client: TestClient, backend: ResumingBackend
) -> None:
    response = client.post("/batch_inference/resume_job", params={"job_id": str(CRASHED)})
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == str(CRASHED)
    assert response.json()["status"] == "validating"
    assert backend.resumed == [CRASHED]


# (case, job_id, status, error type)
REFUSALS = [
    ("unknown job", str(uuid.uuid4()), 404, "job_not_found"),
    ("completed job", str(COMPLETED), 409, "job_not_resumable"),
    ("not a uuid", "not-a-uuid", 422, "invalid_job_id"),
]


@pytest.mark.parametrize(
    ("job_id", "status", "kind"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_resume_that_cannot_be_done_is_a_4xx_naming_the_job_id(
    client: TestClient, backend: ResumingBackend, job_id: str, status: int, kind: str
) -> None:
    response = client.post("/batch_inference/resume_job", params={"job_id": job_id})
    assert response.status_code == status
    detail = response.json()["detail"][0]
    assert (detail["loc"], detail["type"]) == (["query", "job_id"], kind)
    assert detail["msg"]
    assert backend.resumed == []


def test_the_resume_endpoint_is_in_the_openapi_document_as_a_post_with_a_job_id(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/batch_inference/resume_job"]["post"]
    assert [p["name"] for p in operation["parameters"]] == ["job_id"]


def test_with_a_token_set_resuming_needs_it(tmp_path: Path, backend: ResumingBackend) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path], api_token="s3cret-token")
    with _client(settings, backend) as client:
        url, params = "/batch_inference/resume_job", {"job_id": str(CRASHED)}
        assert client.post(url, params=params).status_code == 401
        assert backend.resumed == []
        ok = client.post(url, params=params, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
