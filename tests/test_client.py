"""The Python client: what it sends, how it reads the server's refusals, and that it drives a real
`batchinfer serve` end to end. Unit tests inject ``httpx.MockTransport``; nothing is patched."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path as LocalPath
from typing import Any

import httpx
import pytest

import batchinfer
from batchinfer.client import (
    AsyncBatchInferClient,
    BatchInferClient,
    BatchInferClientError,
    JobPage,
    JobWaitTimeout,
    ResultsSoFar,
    cancel_job,
    job_status,
    list_jobs,
    prompt_path,
    submit_job,
    wait_for_job,
)
from batchinfer.contract import BatchInference, JobStatus, Options, Path, PathType
from batchinfer.errors import BatchInferError
from batchinfer.pipeline.prompt_source import decode_raw_bytes
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, read_jsonl, user_prompt, write_jsonl

JOB_ID = "4f0c5a3e-0000-4000-8000-000000000001"
JSONL = b'[{"role": "user", "text": "hi"}]\n'
Handler = Callable[[httpx.Request], httpx.Response]


def job_json(status: str = "validating", **extra: Any) -> dict[str, Any]:
    return {"job_id": JOB_ID, "created": "2025-01-01T00:00:00Z", "status": status, "metadata": {}, **extra}


class Recorder:
    """A MockTransport handler that records every request and answers from a script."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers) or [httpx.Response(200, json=job_json())]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # The last answer repeats, so a poller can ask as often as it likes.
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_json(self) -> Any:
        return json.loads(self.last.content)


def client_for(handler: Handler, **kwargs: Any) -> BatchInferClient:
    return BatchInferClient("http://batchinfer.test", transport=httpx.MockTransport(handler), **kwargs)


def async_client_for(handler: Handler, **kwargs: Any) -> AsyncBatchInferClient:
    return AsyncBatchInferClient("http://batchinfer.test", transport=httpx.MockTransport(handler), **kwargs)


@pytest.fixture(autouse=True)
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test says what it wants of BATCHINFER_URL and BATCHINFER_API_TOKEN."""
    monkeypatch.delenv("BATCHINFER_URL", raising=False)
    monkeypatch.delenv("BATCHINFER_API_TOKEN", raising=False)


# ---- prompt_file: what the caller gives, and the contract Path sent for it ----------------------


@pytest.fixture
def cwd_and_home(tmp_path: LocalPath, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    return str(cwd), str(home)


@pytest.mark.parametrize(
    ("given", "expected_type", "expected_value"),
    [
        ("/data/prompts.jsonl", "filepath", "/data/prompts.jsonl"),
        ("prompts.jsonl", "filepath", "{cwd}/prompts.jsonl"),
        ("sub/../prompts.jsonl", "filepath", "{cwd}/prompts.jsonl"),
        ("~/prompts.jsonl", "filepath", "{home}/prompts.jsonl"),
        (LocalPath("sub/prompts.jsonl"), "filepath", "{cwd}/sub/prompts.jsonl"),
        ("notes:v2.jsonl", "filepath", "{cwd}/notes:v2.jsonl"),
        ("s3://bucket/prompts.jsonl", "uri", "s3://bucket/prompts.jsonl"),
        ("https://example.com/p.jsonl?sig=abc", "uri", "https://example.com/p.jsonl?sig=abc"),
        ("file:///data/prompts.jsonl", "uri", "file:///data/prompts.jsonl"),
        ("gs://bucket/prompts.jsonl", "uri", "gs://bucket/prompts.jsonl"),
        (JSONL, "raw_bytes", base64.b64encode(JSONL).decode()),
        (bytearray(JSONL), "raw_bytes", base64.b64encode(JSONL).decode()),
        (Path(type=PathType.uri, value="s3://b/k"), "uri", "s3://b/k"),
        (Path(type=PathType.raw_bytes, value="[]"), "raw_bytes", "[]"),
    ],
    ids=[
        "absolute-path",
        "relative-path-made-absolute",
        "dot-dot-normalized",
        "tilde-expanded",
        "pathlib-path",
        "colon-in-file-name-is-not-a-scheme",
        "s3-uri",
        "https-uri-kept-whole",
        "file-uri",
        "gs-uri",
        "bytes-as-base64",
        "bytearray-as-base64",
        "contract-path-as-is",
        "contract-raw-bytes-as-is",
    ],
)
def test_a_prompt_file_becomes_the_contract_path_the_server_expects(
    cwd_and_home: tuple[str, str], given: Any, expected_type: str, expected_value: str
) -> None:
    cwd, home = cwd_and_home
    path = prompt_path(given)
    assert path.type.value == expected_type
    assert path.value == expected_value.format(cwd=cwd, home=home)


def test_bytes_are_sent_so_that_the_server_decodes_them_back_exactly() -> None:
    content = b"[" + "caf\u00e9".encode() + b"]\n\xff"  # any bytes, even not UTF-8
    assert decode_raw_bytes(prompt_path(content).value) == content


@pytest.mark.parametrize(
    ("given", "error"),
    [(42, TypeError), (None, TypeError), ({"type": "uri"}, TypeError), ("", ValueError)],
    ids=["int", "none", "dict", "empty-string"],
)
def test_a_prompt_file_of_no_known_kind_is_refused_before_sending(given: Any, error: type) -> None:
    with pytest.raises(error, match="prompt_file"):
        prompt_path(given)


# ---- what each call sends -----------------------------------------------------------------------


def test_submit_job_posts_the_contract_body() -> None:
    recorder = Recorder()
    with client_for(recorder) as client:
        job = client.submit_job(
            "fake", "s3://b/p.jsonl", options=Options(max_tokens=8, temperature=0), num_generations=2
        )
    assert (recorder.last.method, recorder.last.url.path) == ("POST", "/batch_inference/submit_job")
    assert recorder.last_json() == {
        "model": "fake",
        "prompt_file_path": {"type": "uri", "value": "s3://b/p.jsonl"},
        "options": {"max_tokens": 8, "temperature": 0},
        "num_generations": 2,
    }
    assert isinstance(job, BatchInference) and job.status is JobStatus.validating


def test_submit_job_sends_max_error_rate_when_given() -> None:
    recorder = Recorder()
    with client_for(recorder) as client:
        client.submit_job("fake", "s3://b/p.jsonl", max_error_rate=0.1)
    assert recorder.last_json()["max_error_rate"] == 0.1


def results_answer(status: str, *lines: int) -> httpx.Response:
    body = "".join(
        json.dumps({"line": n, "error": {"code": "timeout", "message": "m"}}) + "\n" for n in lines
    )
    return httpx.Response(200, text=body, headers={"X-Batchinfer-Job-Status": status})


def test_job_results_reads_the_ndjson_records_and_the_jobs_status() -> None:
    recorder = Recorder(results_answer("running", 4, 5))
    with client_for(recorder) as client:
        so_far = client.job_results(JOB_ID, after_line=3)
    assert dict(recorder.last.url.params) == {"job_id": JOB_ID, "after_line": "3"}
    assert [r["line"] for r in so_far.records] == [4, 5] and so_far.last_line == 5
    assert so_far.status is JobStatus.running


def test_follow_results_asks_from_the_last_line_it_has_until_the_job_has_ended() -> None:
    recorder = Recorder(
        results_answer("running", 1, 2), results_answer("running"), results_answer("completed", 3)
    )
    with client_for(recorder) as client:
        lines = [record["line"] for record in client.follow_results(JOB_ID, poll_s=0)]
    assert lines == [1, 2, 3]
    assert [r.url.params["after_line"] for r in recorder.requests] == ["0", "2", "2"]


def test_an_answer_without_the_status_header_is_an_invalid_response() -> None:
    with (
        client_for(Recorder(httpx.Response(200, text=""))) as client,
        pytest.raises(BatchInferClientError) as raised,
    ):
        client.job_results(JOB_ID)
    assert raised.value.code == "invalid_response"


def test_the_async_client_reads_job_results_too() -> None:
    async def scenario() -> ResultsSoFar:
        async with async_client_for(Recorder(results_answer("completed", 1))) as client:
            return await client.job_results(JOB_ID)

    so_far = asyncio.run(scenario())
    assert so_far.last_line == 1 and so_far.status is JobStatus.completed


@pytest.mark.parametrize(
    ("options", "sent"),
    [
        (None, None),
        (Options(), {}),
        (Options(top_p=0.5, logprobs=True), {"top_p": 0.5, "logprobs": True}),
        ({"max_tokens": 4}, {"max_tokens": 4}),
        ({"top_p": 2, "made_up": 1}, {"top_p": 2, "made_up": 1}),
    ],
    ids=["none-left-out", "empty-options", "options-without-nones", "dict-as-is", "bad-dict-for-server"],
)
def test_options_are_sent_without_nones_and_a_dict_as_given_for_the_server_to_judge(
    options: Any, sent: dict[str, Any] | None
) -> None:
    recorder = Recorder()
    with client_for(recorder) as client:
        client.submit_job("fake", b"[]", options=options)
    assert recorder.last_json().get("options") == sent
    assert ("options" in recorder.last_json()) == (sent is not None)


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda c: c.job_status(JOB_ID), "GET", "/batch_inference/job_status"),
        (lambda c: c.cancel_job(JOB_ID), "POST", "/batch_inference/cancel_job"),
    ],
    ids=["job_status", "cancel_job"],
)
def test_job_calls_name_the_job_in_the_query(
    call: Callable[[BatchInferClient], BatchInference], method: str, path: str
) -> None:
    recorder = Recorder()
    with client_for(recorder) as client:
        assert call(client).job_id == JOB_ID
    assert (recorder.last.method, recorder.last.url.path) == (method, path)
    assert dict(recorder.last.url.params) == {"job_id": JOB_ID}


@pytest.mark.parametrize(
    ("kwargs", "params"),
    [
        ({}, {"limit": "20", "offset": "0"}),
        ({"limit": 5, "offset": 10}, {"limit": "5", "offset": "10"}),
        ({"status": JobStatus.failed}, {"limit": "20", "offset": "0", "status": "failed"}),
        (
            {"status": "running", "model": "fake"},
            {"limit": "20", "offset": "0", "status": "running", "model": "fake"},
        ),
    ],
    ids=["defaults", "paging", "status-enum", "status-and-model"],
)
def test_list_jobs_sends_only_the_filters_given_and_reads_a_page(
    kwargs: dict[str, Any], params: dict[str, str]
) -> None:
    page = {"data": [job_json("running")], "total": 7, "limit": 1, "offset": 0, "has_more": True}
    recorder = Recorder(httpx.Response(200, json=page))
    with client_for(recorder) as client:
        result = client.list_jobs(**kwargs)
    assert (recorder.last.method, recorder.last.url.path) == ("GET", "/batch_inference/jobs")
    assert dict(recorder.last.url.params) == params
    assert isinstance(result, JobPage)
    assert (result.total, result.has_more, result.data[0].status) == (7, True, JobStatus.running)


# ---- where the server is, and the token ---------------------------------------------------------


def test_the_base_url_and_token_come_from_the_environment_when_a_client_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    monkeypatch.setenv("BATCHINFER_URL", "http://elsewhere.test:9000/")
    monkeypatch.setenv("BATCHINFER_API_TOKEN", "s3cret")
    client = BatchInferClient(transport=httpx.MockTransport(recorder))
    monkeypatch.setenv("BATCHINFER_URL", "http://later.test")  # read once, at build time
    with client:
        client.job_status(JOB_ID)
    assert str(recorder.last.url).startswith("http://elsewhere.test:9000/batch_inference/job_status?")
    assert recorder.last.headers["authorization"] == "Bearer s3cret"


def test_without_environment_the_client_talks_to_serves_default_address_without_a_token() -> None:
    recorder = Recorder()
    with BatchInferClient(transport=httpx.MockTransport(recorder)) as client:
        client.job_status(JOB_ID)
    assert recorder.last.url.host == "127.0.0.1" and recorder.last.url.port == 8000
    assert "authorization" not in recorder.last.headers


@pytest.mark.parametrize(
    ("env_token", "argument", "sent"),
    [("from-env", "from-arg", "Bearer from-arg"), ("from-env", None, "Bearer from-env"), ("", None, None)],
    ids=["argument-wins", "environment", "empty-means-none"],
)
def test_the_token_argument_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, env_token: str, argument: str | None, sent: str | None
) -> None:
    monkeypatch.setenv("BATCHINFER_API_TOKEN", env_token)
    recorder = Recorder()
    with client_for(recorder, token=argument) as client:
        client.job_status(JOB_ID)
    assert recorder.last.headers.get("authorization") == sent


# ---- refusals: one exception type, naming the field and quoting the server -----------------------


def refusal(status: int, detail: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail, **extra})


@pytest.mark.parametrize(
    ("answer", "status", "field", "code", "says"),
    [
        (
            refusal(
                422, [{"loc": ["body", "num_generations"], "msg": "Input should be >= 1", "type": "gte"}]
            ),
            422,
            "num_generations",
            "gte",
            "num_generations: Input should be >= 1",
        ),
        (
            refusal(
                422, [{"loc": ["body", "options", "top_p"], "msg": "at most 1", "type": "less_than_equal"}]
            ),
            422,
            "options.top_p",
            "less_than_equal",
            "options.top_p: at most 1",
        ),
        (
            refusal(
                422,
                [
                    {
                        "loc": ["body", "model"],
                        "msg": "Unknown model 'x'. Known: fake",
                        "type": "unknown_model",
                    }
                ],
            ),
            422,
            "model",
            "unknown_model",
            "model: Unknown model 'x'. Known: fake",
        ),
        (
            refusal(404, [{"loc": ["query", "job_id"], "msg": "No job with id", "type": "job_not_found"}]),
            404,
            "job_id",
            "job_not_found",
            "job_id: No job with id",
        ),
        (
            refusal(
                401, [{"loc": ["header", "authorization"], "msg": "Missing token", "type": "unauthorized"}]
            ),
            401,
            "authorization",
            "unauthorized",
            "authorization: Missing token",
        ),
        (
            refusal(422, [{"loc": ["body"], "msg": "Field required", "type": "missing"}]),
            422,
            "body",
            "missing",
            "body: Field required",
        ),
        (
            refusal(503, "The Prefect API is not ready; retry.", type="service_unavailable"),
            503,
            None,
            "service_unavailable",
            "The Prefect API is not ready; retry.",
        ),
        (
            refusal(500, "Internal error; see the server log.", type="internal"),
            500,
            None,
            "internal",
            "Internal error; see the server log.",
        ),
        (refusal(404, "Not Found"), 404, None, "http_404", "Not Found"),
        (
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            502,
            None,
            "http_502",
            "<html>Bad Gateway</html>",
        ),
    ],
    ids=[
        "field-error",
        "nested-field",
        "unknown-model",
        "unknown-job",
        "no-token",
        "whole-body",
        "string-detail-with-type",
        "internal-error",
        "no-such-route",
        "proxy-html-page",
    ],
)
def test_a_refusal_raises_one_error_type_naming_the_field_and_quoting_the_server(
    answer: httpx.Response, status: int, field: str | None, code: str, says: str
) -> None:
    with client_for(Recorder(answer)) as client, pytest.raises(BatchInferClientError) as caught:
        client.submit_job("fake", b"[]")
    error = caught.value
    assert isinstance(error, BatchInferError)
    assert (error.status_code, error.field, error.code) == (status, field, code)
    assert says in error.message
    assert error.message.startswith(f"POST /batch_inference/submit_job answered {status} ")


def test_every_field_error_is_kept_and_named_in_the_message() -> None:
    detail = [
        {"loc": ["body", "num_generations"], "msg": "too small", "type": "gte"},
        {"loc": ["body", "options", "max_tokens"], "msg": "too small", "type": "gte"},
    ]
    with client_for(Recorder(refusal(422, detail))) as client, pytest.raises(BatchInferClientError) as caught:
        client.submit_job("fake", b"[]")
    assert [e.field for e in caught.value.errors] == ["num_generations", "options.max_tokens"]
    assert "num_generations: too small; options.max_tokens: too small" in str(caught.value)
    assert caught.value.detail == detail


def test_a_long_error_page_is_cut_in_the_message() -> None:
    client = client_for(Recorder(httpx.Response(502, text="x" * 5000)))
    with client, pytest.raises(BatchInferClientError) as caught:
        client.job_status(JOB_ID)
    assert len(caught.value.message) < 700


def test_a_server_that_cannot_be_reached_raises_the_same_error_type_saying_where_it_looked() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with client_for(refuse) as client, pytest.raises(BatchInferClientError) as caught:
        client.job_status(JOB_ID)
    assert (caught.value.status_code, caught.value.code) == (None, "unreachable")
    assert "http://batchinfer.test" in caught.value.message and "BATCHINFER_URL" in caught.value.message


def test_an_answer_that_is_not_a_job_raises_the_same_error_type() -> None:
    client = client_for(Recorder(httpx.Response(200, json={"hello": "world"})))
    with client, pytest.raises(BatchInferClientError, match="not a BatchInference") as caught:
        client.job_status(JOB_ID)
    assert caught.value.code == "invalid_response"


# ---- waiting ------------------------------------------------------------------------------------


def test_wait_for_job_polls_until_the_job_completes() -> None:
    recorder = Recorder(
        *(httpx.Response(200, json=job_json(s)) for s in ["validating", "running", "completed"])
    )
    with client_for(recorder) as client:
        job = client.wait_for_job(JOB_ID, poll_s=0)
    assert job.status is JobStatus.completed
    assert len(recorder.requests) == 3


def test_wait_for_job_returns_a_failed_job_too() -> None:
    recorder = Recorder(
        httpx.Response(200, json=job_json("failed", metadata={"error": {"code": "empty_file"}}))
    )
    with client_for(recorder) as client:
        assert client.wait_for_job(JOB_ID, poll_s=0).metadata["error"]["code"] == "empty_file"


def test_wait_for_job_gives_up_after_timeout_with_the_last_status_seen() -> None:
    client = client_for(Recorder(httpx.Response(200, json=job_json("running"))))
    with client, pytest.raises(JobWaitTimeout) as caught:
        client.wait_for_job(JOB_ID, timeout_s=0.05, poll_s=0.01)
    error: object = caught.value
    assert isinstance(error, TimeoutError) and isinstance(error, BatchInferClientError)
    assert caught.value.job.status is JobStatus.running
    assert JOB_ID in str(error) and "running" in str(error)


# ---- the async client: the same calls, awaited --------------------------------------------------


def test_the_async_client_submits_and_waits_like_the_sync_one() -> None:
    recorder = Recorder(
        httpx.Response(200, json=job_json("validating")),
        httpx.Response(200, json=job_json("running")),
        httpx.Response(200, json=job_json("completed")),
    )

    async def scenario() -> BatchInference:
        async with async_client_for(recorder, token="t") as client:
            job = await client.submit_job("fake", "s3://b/k", options={"max_tokens": 2})
            return await client.wait_for_job(job.job_id, poll_s=0)

    assert asyncio.run(scenario()).status is JobStatus.completed
    assert [r.url.path for r in recorder.requests] == [
        "/batch_inference/submit_job",
        "/batch_inference/job_status",
        "/batch_inference/job_status",
    ]
    assert json.loads(recorder.requests[0].content)["options"] == {"max_tokens": 2}
    assert all(r.headers["authorization"] == "Bearer t" for r in recorder.requests)


def test_the_async_client_lists_cancels_and_refuses_like_the_sync_one() -> None:
    page = {"data": [], "total": 0, "limit": 20, "offset": 0, "has_more": False}
    recorder = Recorder(
        httpx.Response(200, json=page),
        httpx.Response(200, json=job_json("running")),
        refusal(404, [{"loc": ["query", "job_id"], "msg": "No job", "type": "job_not_found"}]),
    )

    async def scenario() -> None:
        async with async_client_for(recorder) as client:
            assert (await client.list_jobs(model="fake")).total == 0
            assert (await client.cancel_job(JOB_ID)).status is JobStatus.running
            with pytest.raises(BatchInferClientError) as caught:
                await client.job_status(JOB_ID)
            assert (caught.value.status_code, caught.value.field) == (404, "job_id")

    asyncio.run(scenario())


def test_the_async_client_times_out_like_the_sync_one() -> None:
    async def scenario() -> None:
        async with async_client_for(Recorder(httpx.Response(200, json=job_json("running")))) as client:
            await client.wait_for_job(JOB_ID, timeout_s=0.05, poll_s=0.01)

    with pytest.raises(JobWaitTimeout):
        asyncio.run(scenario())


# ---- the package: cheap to import, names there for mypy and IDEs --------------------------------


def test_importing_the_client_names_from_the_package_imports_neither_prefect_nor_torch() -> None:
    code = (
        "import sys\n"
        "import batchinfer\n"
        "assert 'batchinfer.client' not in sys.modules, 'plain import loaded the client'\n"
        "from batchinfer import submit_job, AsyncBatchInferClient, BatchInferClientError\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'torch', 'transformers'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_exported_name_resolves_to_the_clients_own() -> None:
    import batchinfer.client as client_module

    assert set(batchinfer.__all__) - {"__version__"} <= set(dir(batchinfer))
    for name in batchinfer.__all__:
        if name != "__version__":
            assert getattr(batchinfer, name) is getattr(client_module, name)
    assert batchinfer.__version__


def test_an_unknown_package_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        batchinfer.no_such_thing  # noqa: B018


# ---- end to end: a real `batchinfer serve`, the fake model --------------------------------------


def _answers(job: BatchInference) -> list[str]:
    # Client and server share this machine, so the job's output path is readable here.
    assert job.success_file_path is not None
    return [r["generations"][0]["text"] for r in read_jsonl(job.success_file_path.value)]


@pytest.fixture
def prompts_file(data_dir: LocalPath) -> Iterator[tuple[LocalPath, list[str]]]:
    texts = [f"client question {i}" for i in range(5)]
    path = write_jsonl(data_dir / f"client-{uuid.uuid4().hex[:8]}.jsonl", [user_prompt(t) for t in texts])
    yield path, texts
    path.unlink(missing_ok=True)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["filepath", "bytes"])
def test_the_module_functions_submit_wait_and_read_a_job_from_the_environments_server(
    served: ServeProcess,
    monkeypatch: pytest.MonkeyPatch,
    prompts_file: tuple[LocalPath, list[str]],
    kind: str,
) -> None:
    monkeypatch.setenv("BATCHINFER_URL", served.url)
    path, texts = prompts_file
    source: LocalPath | bytes = path if kind == "filepath" else path.read_bytes()
    submitted = submit_job("fake", source, options={"max_tokens": 16, "temperature": 0})
    assert submitted.status is JobStatus.validating
    done = wait_for_job(submitted.job_id, timeout_s=120, poll_s=0.2)
    assert done.status is JobStatus.completed, done
    assert done.metadata["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert _answers(done) == [f"echo: {t}" for t in texts]
    again = job_status(submitted.job_id)
    assert (again.job_id, again.status, again.success_file_path) == (
        done.job_id,
        done.status,
        done.success_file_path,
    )


@pytest.mark.e2e
def test_the_async_client_runs_jobs_concurrently_to_completion(
    served: ServeProcess, prompts_file: tuple[LocalPath, list[str]]
) -> None:
    path, texts = prompts_file

    async def scenario() -> list[BatchInference]:
        async with AsyncBatchInferClient(served.url) as client:
            jobs = await asyncio.gather(
                *(client.submit_job("fake", path, options=Options(max_tokens=16)) for _ in range(2))
            )
            return await asyncio.gather(
                *(client.wait_for_job(j.job_id, timeout_s=120, poll_s=0.2) for j in jobs)
            )

    done = asyncio.run(scenario())
    assert len({job.job_id for job in done}) == 2
    for job in done:
        assert job.status is JobStatus.completed, job
        assert _answers(job) == [f"echo: {t}" for t in texts]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("submit", "field", "code", "says"),
    [
        (
            lambda url: submit_job("fake", b"[]", num_generations=0, base_url=url),
            "num_generations",
            None,
            "greater than or equal to 1",
        ),
        (
            lambda url: submit_job("fake", b"[]", options={"top_p": 2}, base_url=url),
            "options.top_p",
            None,
            "less than or equal to 1",
        ),
        (lambda url: submit_job("nope", b"[]", base_url=url), "model", "unknown_model", "fake"),
        (
            lambda url: submit_job("fake", "/no/such/file.jsonl", base_url=url),
            "prompt_file_path",
            None,
            "/no/such/file.jsonl",
        ),
        (lambda url: job_status(str(uuid.uuid4()), base_url=url), "job_id", "job_not_found", "No job"),
        (lambda url: job_status("not-a-uuid", base_url=url), "job_id", "invalid_job_id", "not a job id"),
    ],
    ids=["zero-generations", "top-p-too-big", "unknown-model", "missing-file", "unknown-job", "not-a-uuid"],
)
def test_a_refused_call_raises_naming_the_field_with_the_servers_message(
    served: ServeProcess, submit: Callable[[str], Any], field: str, code: str | None, says: str
) -> None:
    with pytest.raises(BatchInferClientError) as caught:
        submit(served.url)
    error = caught.value
    assert error.status_code is not None and 400 <= error.status_code < 500
    assert error.field is not None and error.field.startswith(field)
    assert code is None or error.code == code
    assert says in error.message and error.field in error.message


@pytest.mark.e2e
def test_cancelling_a_running_job_ends_it_failed(
    served: ServeProcess, data_dir: LocalPath, slow_openai: FakeOpenAIServer
) -> None:
    path = write_jsonl(data_dir / "client-cancel.jsonl", [user_prompt(f"cancel {i}") for i in range(800)])
    with BatchInferClient(served.url) as client:
        job = client.submit_job("fake-slow", path, options={"max_tokens": 8})
        cancelled = client.cancel_job(job.job_id)
        assert cancelled.job_id == job.job_id
        done = client.wait_for_job(job.job_id, timeout_s=120, poll_s=0.2)
        assert done.status is JobStatus.failed, done
        assert done.metadata["error"]["code"] == "cancelled"
        with pytest.raises(BatchInferClientError) as again:
            client.cancel_job(job.job_id)  # it has ended: nothing left to cancel
    assert (again.value.status_code, again.value.field) == (409, "job_id")


@pytest.mark.e2e
def test_list_jobs_finds_a_submitted_job_and_pages(
    served: ServeProcess, prompts_file: tuple[LocalPath, list[str]]
) -> None:
    path, _ = prompts_file
    with BatchInferClient(served.url) as client:
        job = client.submit_job("fake", path, options={"max_tokens": 8})
        client.wait_for_job(job.job_id, timeout_s=120, poll_s=0.2)
        page = list_jobs(model="fake", limit=100, base_url=served.url)
        assert job.job_id in {j.job_id for j in page.data}
        assert all(j.metadata.get("model") == "fake" for j in page.data)
        first = client.list_jobs(limit=1)
        assert (len(first.data), first.limit, first.offset) == (1, 1, 0)
        assert first.has_more == (first.total > 1)
        completed = client.list_jobs(status=JobStatus.completed, limit=100)
        assert all(j.status is JobStatus.completed for j in completed.data)


@pytest.mark.e2e
def test_a_cancel_of_an_unknown_job_is_a_404_naming_the_job(served: ServeProcess) -> None:
    with pytest.raises(BatchInferClientError) as refused:
        cancel_job(str(uuid.uuid4()), base_url=served.url)
    assert (refused.value.status_code, refused.value.field) == (404, "job_id")
