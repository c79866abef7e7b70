"""The HTTP adapter: what it accepts, what it refuses (and where it says the fault is), and that a
refused request never reaches the job backend. The backend is a test double: this tests HTTP only."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from batchinfer.api.app import create_app
from batchinfer.contract import BatchInference, JobStatus, Options
from batchinfer.engines.catalog import load_catalog
from batchinfer.engines.configs import DEFAULT_MODEL_ID
from batchinfer.errors import JobNotFoundError
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.gather import gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, write_progress
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.settings import Settings

JSONL = '[{"role": "user", "text": "hi"}]\n'
KNOWN_ID = uuid.UUID("4f0c5a3e-0000-4000-8000-000000000001")
SECRET = "very-secret-internal-detail"


class RecordingBackend:
    """Records submissions; knows one job; can be told to blow up."""

    def __init__(self) -> None:
        self.submitted: list[JobParameters] = []
        self.fail_with: Exception | None = None
        self.files = JobLayout(Path("/nonexistent"))  # where the known job's files are
        self.retried: list[tuple[UUID, bool]] = []

    def _job(self, job_id: UUID, params: JobParameters) -> BatchInference:
        return BatchInference(
            job_id=str(job_id),
            created=datetime(2025, 1, 1, tzinfo=UTC),
            status=JobStatus.validating,
            input_file_path=params.prompt_file,
            metadata={"model": params.model},
        )

    async def submit(self, params: JobParameters) -> BatchInference:
        if self.fail_with:
            raise self.fail_with
        self.submitted.append(params)
        return self._job(KNOWN_ID, params)

    async def status(self, job_id: UUID) -> BatchInference:
        if self.fail_with:
            raise self.fail_with
        if job_id != KNOWN_ID:
            raise JobNotFoundError(str(job_id))
        return self._job(
            job_id, JobParameters(model=DEFAULT_MODEL_ID, prompt_file={"type": "uri", "value": "s3://b/k"})
        )

    async def job_files(self, job_id: UUID) -> tuple[BatchInference, JobPlace]:
        return await self.status(job_id), JobPlace(self.files)

    async def retry_failed(self, job_id: UUID, every_error: bool) -> BatchInference:
        self.retried.append((job_id, every_error))
        return await self.status(job_id)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allowed_roots=[tmp_path])


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@contextlib.contextmanager
def serving(settings: Settings, backend: RecordingBackend) -> Iterator[TestClient]:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[RecordingBackend]:
        yield backend

    app = create_app(settings, load_catalog(None), factory)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def client(settings: Settings, backend: RecordingBackend) -> Iterator[TestClient]:
    with serving(settings, backend) as test_client:
        yield test_client


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(JSONL)
    return path


def body(prompts: Path, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": DEFAULT_MODEL_ID,
        "prompt_file_path": {"type": "filepath", "value": str(prompts)},
    }
    request.update(overrides)
    return request


# ---- submit: accepted -------------------------------------------------------------------------


def test_submit_with_a_filepath_passes_the_checked_path_to_the_backend(
    client: TestClient, backend: RecordingBackend, prompts: Path
) -> None:
    response = client.post(
        "/batch_inference/submit_job",
        json=body(prompts, options={"max_tokens": 8, "temperature": 0}, num_generations=2),
    )
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == str(KNOWN_ID)
    assert response.json()["status"] == "validating"
    (params,) = backend.submitted
    assert params.model == DEFAULT_MODEL_ID
    assert params.prompt_file.type.value == "filepath"
    assert params.prompt_file.value == str(prompts.resolve())
    assert params.options == Options(max_tokens=8, temperature=0.0)
    assert params.num_generations == 2


def test_submit_defaults_to_one_generation_and_empty_options(
    client: TestClient, backend: RecordingBackend, prompts: Path
) -> None:
    assert client.post("/batch_inference/submit_job", json=body(prompts)).status_code == 200
    (params,) = backend.submitted
    assert (params.num_generations, params.options) == (1, Options())


def test_submit_with_a_file_uri_passes_the_uri_unchanged(
    client: TestClient, backend: RecordingBackend, prompts: Path
) -> None:
    uri = {"type": "uri", "value": prompts.as_uri()}
    response = client.post("/batch_inference/submit_job", json=body(prompts, prompt_file_path=uri))
    assert response.status_code == 200, response.text
    assert backend.submitted[0].prompt_file.model_dump(mode="json") == uri


def test_a_submits_max_error_rate_reaches_the_job(
    client: TestClient, backend: RecordingBackend, prompts: Path
) -> None:
    response = client.post("/batch_inference/submit_job", json=body(prompts, max_error_rate=0.05))
    assert response.status_code == 200, response.text
    assert backend.submitted[0].max_error_rate == 0.05


@pytest.mark.parametrize("encoding", ["text", "base64"])
def test_submit_with_raw_bytes_stages_the_content_and_passes_a_filepath(
    client: TestClient, backend: RecordingBackend, prompts: Path, settings: Settings, encoding: str
) -> None:
    value = JSONL if encoding == "text" else base64.b64encode(JSONL.encode()).decode()
    raw = {"type": "raw_bytes", "value": value}
    response = client.post("/batch_inference/submit_job", json=body(prompts, prompt_file_path=raw))
    assert response.status_code == 200, response.text
    staged = backend.submitted[0].prompt_file
    assert staged.type.value == "filepath"
    assert Path(staged.value).parent == settings.uploads_dir
    assert Path(staged.value).read_text() == JSONL


# ---- submit: refused --------------------------------------------------------------------------


def _outside(tmp_path: Path, prompts: Path) -> str:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jsonl"
    outside.write_text(JSONL)
    return str(outside)


def _path(kind: str, value: Callable[[Path, Path], str]) -> Callable[[Path, Path], dict[str, Any]]:
    return lambda tmp_path, prompts: body(
        prompts, prompt_file_path={"type": kind, "value": value(tmp_path, prompts)}
    )


def _with(**fields: Any) -> Callable[[Path, Path], dict[str, Any]]:
    return lambda tmp_path, prompts: body(prompts, **fields)


# case -> (request body built from (tmp_path, prompts), the loc that detail[0] must start with)
REFUSALS: dict[str, tuple[Callable[[Path, Path], dict[str, Any]], list[str]]] = {
    "missing model": (
        lambda tmp_path, prompts: {"prompt_file_path": body(prompts)["prompt_file_path"]},
        ["body", "model"],
    ),
    "empty model": (_with(model=""), ["body", "model"]),
    "unknown model": (_with(model="gpt-9"), ["body", "model"]),
    "missing prompt_file_path": (
        lambda tmp_path, prompts: {"model": DEFAULT_MODEL_ID},
        ["body", "prompt_file_path"],
    ),
    "unknown Path type": (_path("ftp", lambda t, p: "x"), ["body", "prompt_file_path", "type"]),
    "a URI given as filepath": (
        _path("filepath", lambda t, p: p.as_uri()),
        ["body", "prompt_file_path", "type"],
    ),
    "a filepath given as uri": (_path("uri", lambda t, p: str(p)), ["body", "prompt_file_path", "type"]),
    "missing file": (
        _path("filepath", lambda t, p: str(t / "nope.jsonl")),
        ["body", "prompt_file_path", "value"],
    ),
    "file outside the roots": (_path("filepath", _outside), ["body", "prompt_file_path", "value"]),
    "raw_bytes neither JSONL nor base64": (
        _path("raw_bytes", lambda t, p: "hello there"),
        ["body", "prompt_file_path", "value"],
    ),
    "num_generations 0": (_with(num_generations=0), ["body", "num_generations"]),
    "max_tokens 0": (_with(options={"max_tokens": 0}), ["body", "options", "max_tokens"]),
    "temperature -0.1": (_with(options={"temperature": -0.1}), ["body", "options", "temperature"]),
    "top_p 0": (_with(options={"top_p": 0}), ["body", "options", "top_p"]),
    "top_p 1.5": (_with(options={"top_p": 1.5}), ["body", "options", "top_p"]),
    "unknown option": (_with(options={"beam": 3}), ["body", "options", "beam"]),
    "max_error_rate 1.5": (_with(max_error_rate=1.5), ["body", "max_error_rate"]),
    "max_error_rate -0.1": (_with(max_error_rate=-0.1), ["body", "max_error_rate"]),
    "unknown top-level field": (_with(priority="high"), ["body", "priority"]),
    "num_generations over the limit": (_with(num_generations=17), ["body", "num_generations"]),
    "max_tokens over the limit": (_with(options={"max_tokens": 32769}), ["body", "options", "max_tokens"]),
    "gzip raw_bytes": (
        _path("raw_bytes", lambda t, p: base64.b64encode(gzip.compress(JSONL.encode())).decode()),
        ["body", "prompt_file_path", "value"],
    ),
    "a scheme off the allowlist": (
        _path("uri", lambda t, p: "data:,[]"),
        ["body", "prompt_file_path", "value"],
    ),
    "http to a loopback address": (
        _path("uri", lambda t, p: "http://127.0.0.1/p.jsonl"),
        ["body", "prompt_file_path", "value"],
    ),
    "http to a private address": (
        _path("uri", lambda t, p: "https://10.0.0.1/p.jsonl"),
        ["body", "prompt_file_path", "value"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_submit_is_a_422_naming_the_field_and_creates_no_job(
    case: str, client: TestClient, backend: RecordingBackend, tmp_path: Path, prompts: Path
) -> None:
    build, loc = REFUSALS[case]
    response = client.post("/batch_inference/submit_job", json=build(tmp_path, prompts))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"][: len(loc)] == loc
    assert detail[0]["msg"]
    assert backend.submitted == []


def test_an_unknown_model_refusal_lists_the_known_ids(client: TestClient, prompts: Path) -> None:
    response = client.post("/batch_inference/submit_job", json=body(prompts, model="gpt-9"))
    assert response.status_code == 422
    assert DEFAULT_MODEL_ID in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "x",', b"not json", b"", b"[" * 100_000, b'{"model": "caf\xe9"}'],
    ids=["truncated", "not json", "empty body", "nested too deeply", "not UTF-8"],
)
def test_a_malformed_json_body_is_a_422_located_in_the_body(
    raw: bytes, client: TestClient, backend: RecordingBackend
) -> None:
    response = client.post(
        "/batch_inference/submit_job", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert backend.submitted == []


# ---- job_status -------------------------------------------------------------------------------


def test_job_status_of_a_known_job_returns_it(client: TestClient) -> None:
    response = client.get("/batch_inference/job_status", params={"job_id": str(KNOWN_ID)})
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == str(KNOWN_ID)
    BatchInference.model_validate(response.json())


@pytest.mark.parametrize("job_id", ["not-a-uuid", "123", "'; drop table"])
def test_job_status_with_a_non_uuid_id_is_a_422_on_the_query_job_id(client: TestClient, job_id: str) -> None:
    response = client.get("/batch_inference/job_status", params={"job_id": job_id})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "job_id"]


def test_job_status_without_an_id_is_a_422_on_the_query_job_id(client: TestClient) -> None:
    response = client.get("/batch_inference/job_status")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "job_id"]


def test_job_status_of_an_unknown_job_is_a_404(client: TestClient) -> None:
    response = client.get("/batch_inference/job_status", params={"job_id": str(uuid.uuid4())})
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["query", "job_id"]


# ---- unexpected failures ----------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["submit", "status"])
def test_an_unexpected_backend_exception_is_a_500_without_a_traceback(
    operation: str, client: TestClient, backend: RecordingBackend, prompts: Path
) -> None:
    backend.fail_with = RuntimeError(SECRET)
    if operation == "submit":
        response = client.post("/batch_inference/submit_job", json=body(prompts))
    else:
        response = client.get("/batch_inference/job_status", params={"job_id": str(KNOWN_ID)})
    assert response.status_code == 500
    assert SECRET not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    assert response.json()["detail"]


# ---- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "setting"),
    [
        ({"num_generations": 17}, "BATCHINFER_MAX_NUM_GENERATIONS"),
        ({"options": {"max_tokens": 40_000}}, "BATCHINFER_MAX_MAX_TOKENS"),
    ],
    ids=["num_generations", "max_tokens"],
)
def test_a_refusal_past_a_limit_names_the_limit_and_its_setting(
    fields: dict[str, Any], setting: str, client: TestClient, prompts: Path
) -> None:
    response = client.post("/batch_inference/submit_job", json=body(prompts, **fields))
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "over the limit" in message and setting in message


def test_limits_come_from_the_settings(tmp_path: Path, backend: RecordingBackend, prompts: Path) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path], max_num_generations=64)
    with serving(settings, backend) as client:
        response = client.post("/batch_inference/submit_job", json=body(prompts, num_generations=64))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("kind", ["filepath", "raw_bytes"])
def test_a_prompt_file_over_the_size_limit_is_a_413_naming_the_value_field(
    kind: str, tmp_path: Path, backend: RecordingBackend, prompts: Path
) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path], max_prompt_file_bytes=10)
    value = str(prompts) if kind == "filepath" else JSONL
    with serving(settings, backend) as client:
        response = client.post(
            "/batch_inference/submit_job",
            json=body(prompts, prompt_file_path={"type": kind, "value": value}),
        )
    assert response.status_code == 413, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "prompt_file_path", "value"]
    assert detail["type"] == "file_too_large"
    assert "BATCHINFER_MAX_PROMPT_FILE_BYTES" in detail["msg"]
    assert backend.submitted == []


def test_private_uris_are_accepted_when_the_settings_allow_them(
    tmp_path: Path, backend: RecordingBackend, prompts: Path
) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path], allow_private_uris=True)
    uri = {"type": "uri", "value": "http://127.0.0.1:9/p.jsonl"}
    with serving(settings, backend) as client:
        response = client.post("/batch_inference/submit_job", json=body(prompts, prompt_file_path=uri))
    assert response.status_code == 200, response.text


# ---- bearer-token auth ------------------------------------------------------------------------

TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def authed(tmp_path: Path, backend: RecordingBackend) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", allowed_roots=[tmp_path], api_token=TOKEN)
    with serving(settings, backend) as test_client:
        yield test_client


ENDPOINTS = {
    "submit_job": lambda c, h, p: c.post("/batch_inference/submit_job", json=body(p), headers=h),
    "job_status": lambda c, h, p: c.get(
        "/batch_inference/job_status", params={"job_id": str(KNOWN_ID)}, headers=h
    ),
    "models": lambda c, h, p: c.get("/models", headers=h),
    "openapi.json": lambda c, h, p: c.get("/openapi.json", headers=h),
    "docs": lambda c, h, p: c.get("/docs", headers=h),
}
BAD_CREDENTIALS = {
    "no header": {},
    "a wrong token": {"Authorization": "Bearer wrong"},
    "the token with another scheme": {"Authorization": f"Basic {TOKEN}"},
    "the token without a scheme": {"Authorization": TOKEN},
    "a prefix of the token": {"Authorization": f"Bearer {TOKEN[:-1]}"},
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_with_a_token_set_every_endpoint_refuses_a_request_without_it_with_a_401(
    endpoint: str, credentials: str, authed: TestClient, backend: RecordingBackend, prompts: Path
) -> None:
    response = ENDPOINTS[endpoint](authed, BAD_CREDENTIALS[credentials], prompts)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["header", "authorization"]
    assert TOKEN not in response.text
    assert backend.submitted == []


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_with_a_token_set_the_right_bearer_token_is_let_through(
    endpoint: str, scheme: str, authed: TestClient, prompts: Path
) -> None:
    response = ENDPOINTS[endpoint](authed, {"Authorization": f"{scheme} {TOKEN}"}, prompts)
    assert response.status_code == 200, response.text


def test_with_a_token_set_healthz_stays_open(authed: TestClient) -> None:
    assert authed.get("/healthz").status_code == 200


def test_without_a_token_set_no_header_is_needed(client: TestClient, prompts: Path) -> None:
    assert client.post("/batch_inference/submit_job", json=body(prompts)).status_code == 200
    assert client.get("/models").status_code == 200


def test_the_token_is_compared_in_constant_time(authed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from batchinfer.api import app as app_module

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", spy)
    authed.get("/models", headers={"Authorization": "Bearer guess"})
    assert calls == [(b"guess", TOKEN.encode())]


def test_job_results_is_ndjson_of_the_records_after_after_line_with_the_jobs_status(
    client: TestClient, backend: RecordingBackend, tmp_path: Path
) -> None:
    backend.files = JobLayout(tmp_path / "job")
    backend.files.work.mkdir(parents=True)
    backend.files.line_errors.write_text(
        "".join(f'{{"line": {n}, "error": {{"code": "invalid_json", "message": "m"}}}}\n' for n in (1, 2, 3))
    )
    gather_outputs(backend.files, [], 3)
    write_progress(backend.files, JobProgress(outputs_ready=True))
    url = "/batch_inference/job_results"
    response = client.get(url, params={"job_id": str(KNOWN_ID), "after_line": 1})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["x-batchinfer-job-status"] == "validating"
    assert [json.loads(line)["line"] for line in response.text.splitlines()] == [2, 3]


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"job_id": str(uuid.uuid4())}, 404, None),
        ({"job_id": "not-a-uuid"}, 422, "job_id"),
        ({"job_id": str(KNOWN_ID), "after_line": -1}, 422, "after_line"),
    ],
)
def test_a_bad_job_results_query_is_refused_naming_the_parameter(
    client: TestClient, params: dict[str, str | int], status: int, field: str | None
) -> None:
    response = client.get("/batch_inference/job_results", params=params)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize(
    ("body", "every_error"),
    [({"job_id": str(KNOWN_ID)}, False), ({"job_id": str(KNOWN_ID), "all": True}, True)],
    ids=["retryable by default", "all"],
)
def test_retry_failed_hands_the_job_and_which_lines_to_the_backend(
    client: TestClient, backend: RecordingBackend, body: dict[str, Any], every_error: bool
) -> None:
    response = client.post("/batch_inference/retry_failed", json=body)
    assert response.status_code == 200, response.text
    assert backend.retried == [(KNOWN_ID, every_error)]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "job_id"), ({"job_id": "nope"}, "job_id"), ({"job_id": str(KNOWN_ID), "lines": [1]}, "lines")],
    ids=["no job_id", "not a uuid", "unknown field"],
)
def test_a_bad_retry_failed_body_is_a_422_naming_the_field(
    client: TestClient, backend: RecordingBackend, body: dict[str, Any], field: str
) -> None:
    response = client.post("/batch_inference/retry_failed", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert backend.retried == []
