"""A catalogue of bad inputs, against the real `batchinfer serve` (Prefect server, runner, adapter).

Each is answered at one of the three levels of the error tree, never by a 500, a hang or a
traceback:

* **request**: a 4xx whose ``detail[0].loc`` names the field, and no job;
* **line**: that line's record in the error file, with its line number and code; the job completes;
* **file**: the job ends ``failed`` with a code in ``metadata.error``.

The server runs with the default limits (1 MiB lines, 1,000,000 lines, 1 GiB files, 16 generations,
32,768 max_tokens) and without ``BATCHINFER_ALLOW_PRIVATE_URIS``.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchinfer.settings import GiB, MiB
from batchinfer.testing.served import ServeProcess, read_jsonl, user_prompt

pytestmark = pytest.mark.e2e

GOOD = json.dumps(user_prompt("fine")).encode()
SUBMIT = "/batch_inference/submit_job"
STATUS = "/batch_inference/job_status"


def _body(path: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "fake",
        "prompt_file_path": path or {"type": "raw_bytes", "value": GOOD.decode()},
    }
    return {**body, **fields}


def _file(data_dir: Path, name: str, content: bytes) -> dict[str, str]:
    path = data_dir / "bad-inputs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return {"type": "filepath", "value": str(path)}


# ---- level 1: the request ---------------------------------------------------------------------

Send = Callable[[httpx.Client, Path], httpx.Response]


@dataclass(frozen=True)
class Refusal:
    send: Send
    status: int
    loc: tuple[str, ...]  # what detail[0].loc must start with
    says: str = ""  # a phrase the message must contain, where one matters


def submit(build: Callable[[Path], Any]) -> Send:
    return lambda client, data_dir: client.post(SUBMIT, json=build(data_dir))


def raw(content: bytes, content_type: str = "application/json") -> Send:
    return lambda client, data_dir: client.post(
        SUBMIT, content=content, headers={"content-type": content_type}
    )


def status_of(job_id: str | None) -> Send:
    params = {} if job_id is None else {"job_id": job_id}
    return lambda client, data_dir: client.get(STATUS, params=params)


def uri(value: str) -> Send:
    return submit(lambda d: _body({"type": "uri", "value": value}))


def filepath(value: Callable[[Path], str]) -> Send:
    return submit(lambda d: _body({"type": "filepath", "value": value(d)}))


def _symlink_out(data_dir: Path) -> str:
    link = data_dir / "bad-inputs" / "hosts-link.jsonl"
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/hosts")
    return str(link)


def _over_the_size_limit(data_dir: Path) -> str:
    path = data_dir / "bad-inputs" / "huge.jsonl"
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as handle:  # sparse: 1 GiB on paper, nothing on disk; only stat() looks
        handle.truncate(GiB + 1)
    return str(path)


VALUE = ("body", "prompt_file_path", "value")
TYPE = ("body", "prompt_file_path", "type")
GZIP_B64 = base64.b64encode(gzip.compress(GOOD + b"\n")).decode()

REQUESTS: dict[str, Refusal] = {
    # the body as a whole
    "an empty body": Refusal(raw(b""), 422, ("body",)),
    "truncated JSON": Refusal(raw(b'{"model": "fake",'), 422, ("body",)),
    "a JSON list, not an object": Refusal(raw(b"[1, 2]"), 422, ("body",)),
    "a wrong content-type": Refusal(raw(json.dumps(_body()).encode(), "text/plain"), 422, ("body",)),
    "a body that is not UTF-8": Refusal(raw(b'{"model": "caf\xe9"}'), 422, ("body",)),
    "deeply nested JSON": Refusal(
        raw(b'{"options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 422, ("body",)
    ),
    "an unknown top-level field": Refusal(
        submit(lambda d: _body(priority="high")), 422, ("body", "priority")
    ),
    # model
    "a missing model": Refusal(
        submit(lambda d: {"prompt_file_path": _body()["prompt_file_path"]}), 422, ("body", "model")
    ),
    "an empty model": Refusal(submit(lambda d: _body(model="")), 422, ("body", "model")),
    "a number as the model": Refusal(submit(lambda d: _body(model=123)), 422, ("body", "model")),
    "an unknown model": Refusal(submit(lambda d: _body(model="gpt-9")), 422, ("body", "model"), "fake"),
    # options and num_generations, limits included
    "huge num_generations": Refusal(
        submit(lambda d: _body(num_generations=10**9)),
        422,
        ("body", "num_generations"),
        "BATCHINFER_MAX_NUM_GENERATIONS",
    ),
    "num_generations one over the limit": Refusal(
        submit(lambda d: _body(num_generations=17)), 422, ("body", "num_generations"), "limit of 16"
    ),
    "num_generations as a string": Refusal(
        submit(lambda d: _body(num_generations="two")), 422, ("body", "num_generations")
    ),
    "negative max_tokens": Refusal(
        submit(lambda d: _body(options={"max_tokens": -5})), 422, ("body", "options", "max_tokens")
    ),
    "max_tokens over the limit": Refusal(
        submit(lambda d: _body(options={"max_tokens": 10**6})),
        422,
        ("body", "options", "max_tokens"),
        "BATCHINFER_MAX_MAX_TOKENS",
    ),
    "options not an object": Refusal(submit(lambda d: _body(options="fast")), 422, ("body", "options")),
    "top_p 0": Refusal(submit(lambda d: _body(options={"top_p": 0})), 422, ("body", "options", "top_p")),
    "temperature 'hot'": Refusal(
        submit(lambda d: _body(options={"temperature": "hot"})), 422, ("body", "options", "temperature")
    ),
    "an unknown option": Refusal(
        submit(lambda d: _body(options={"beam": 4})), 422, ("body", "options", "beam")
    ),
    # prompt_file_path: shape
    "prompt_file_path missing type": Refusal(
        submit(lambda d: _body(prompt_file_path={"value": "/x.jsonl"})), 422, TYPE
    ),
    "a type not in the enum": Refusal(submit(lambda d: _body({"type": "ftp", "value": "x"})), 422, TYPE),
    "a number as the path value": Refusal(
        submit(lambda d: _body({"type": "filepath", "value": 5})), 422, VALUE
    ),
    "a URI given as type filepath": Refusal(filepath(lambda d: "file:///etc/hosts"), 422, TYPE),
    # filepath: where it may lead
    "a relative path": Refusal(filepath(lambda d: "prompts.jsonl"), 422, VALUE, "relative"),
    "../ path traversal": Refusal(
        filepath(lambda d: f"{d}/../../../../etc/passwd"), 422, VALUE, "allowed roots"
    ),
    "a symlink out of the allowed roots": Refusal(filepath(_symlink_out), 422, VALUE, "allowed roots"),
    "a missing file": Refusal(filepath(lambda d: f"{d}/no-such-file.jsonl"), 422, VALUE),
    "a file over the size limit": Refusal(
        filepath(_over_the_size_limit), 413, VALUE, "BATCHINFER_MAX_PROMPT_FILE_BYTES"
    ),
    # uri: schemes and hosts
    "file:///etc/shadow": Refusal(uri("file:///etc/shadow"), 422, VALUE, "allowed roots"),
    "a file URI with a remote host": Refusal(uri("file://evil.example/etc/passwd"), 422, VALUE),
    "ftp://": Refusal(uri("ftp://example.com/p.jsonl"), 422, VALUE, "BATCHINFER_ALLOWED_URI_SCHEMES"),
    "gopher://": Refusal(uri("gopher://example.com/1"), 422, VALUE, "not supported"),
    "data:": Refusal(uri('data:application/json,[{"role":"user","text":"hi"}]'), 422, VALUE, "not supported"),
    "memory://": Refusal(uri("memory://p.jsonl"), 422, VALUE, "not supported"),
    "http to 127.0.0.1": Refusal(
        uri("http://127.0.0.1:8000/p.jsonl"), 422, VALUE, "BATCHINFER_ALLOW_PRIVATE_URIS"
    ),
    "http to 10.0.0.1": Refusal(uri("http://10.0.0.1/p.jsonl"), 422, VALUE, "private"),
    "http to the cloud metadata address": Refusal(
        uri("http://169.254.169.254/latest/"), 422, VALUE, "link-local"
    ),
    "http to localhost by name": Refusal(uri("https://localhost/p.jsonl"), 422, VALUE, "loopback"),
    "http to loopback as a decimal number": Refusal(uri("http://2130706433/p.jsonl"), 422, VALUE, "loopback"),
    "http to IPv6 loopback": Refusal(uri("http://[::1]/p.jsonl"), 422, VALUE, "loopback"),
    # raw_bytes
    "raw_bytes neither base64 nor JSONL": Refusal(
        submit(lambda d: _body({"type": "raw_bytes", "value": "hello, world"})), 422, VALUE
    ),
    "raw_bytes empty": Refusal(submit(lambda d: _body({"type": "raw_bytes", "value": ""})), 422, VALUE),
    "gzip content as base64": Refusal(
        submit(lambda d: _body({"type": "raw_bytes", "value": GZIP_B64})), 422, VALUE, "decompress first"
    ),
    # job_status
    "a job_id that is not a UUID": Refusal(status_of("not-a-uuid"), 422, ("query", "job_id")),
    "a job_id that looks like SQL": Refusal(
        status_of("'; drop table flow_run; --"), 422, ("query", "job_id")
    ),
    "a job_id that does not exist": Refusal(status_of(str(uuid.uuid4())), 404, ("query", "job_id")),
    "no job_id at all": Refusal(status_of(None), 422, ("query", "job_id")),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_a_bad_request_is_a_clear_4xx_naming_the_field_and_never_a_traceback(
    case: str, served: ServeProcess, data_dir: Path
) -> None:
    refusal = REQUESTS[case]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        response = refusal.send(client, data_dir)
    assert response.status_code == refusal.status, response.text
    assert "Traceback" not in response.text
    detail = response.json()["detail"]
    assert tuple(detail[0]["loc"][: len(refusal.loc)]) == refusal.loc, detail
    assert detail[0]["msg"]
    assert refusal.says in detail[0]["msg"], detail[0]["msg"]


# ---- level 2: one line ------------------------------------------------------------------------

MESSAGES_OK = [{"role": "user", "text": "ok"}]


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def _batch(**body: Any) -> bytes:
    return _j({"custom_id": "b", "body": {"messages": MESSAGES_OK, **body}})


# case -> (the line's bytes, the error code). Lines are written in this order after the
# accepted lines below, so each case's line number is known.
BAD_LINES: dict[str, tuple[bytes, str]] = {
    "invalid UTF-8": (b'[{"role": "user", "text": "caf\xe9"}]', "invalid_utf8"),
    "trailing garbage after the JSON": (GOOD + b" and then some", "invalid_json"),
    "a 50 MB single line": (b'[{"role": "user", "text": "' + b"a" * (50 * MiB) + b'"}]', "line_too_long"),
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    "a NUL byte": (b"\x00", "invalid_json"),
    "a number where the text belongs": (_j([{"role": "user", "text": 5}]), "invalid_message"),
    "a number where the role belongs": (_j([{"role": 5, "text": "x"}]), "unknown_role"),
    "a line that is a JSON string": (_j("What is the capital of France?"), "not_a_list"),
    "a line that is a number": (b"42", "not_a_list"),
    "a line that is null": (b"null", "not_a_list"),
    "an object that is neither messages nor a batch line": (_j({"prompt": "hi"}), "not_a_list"),
    "an empty message list": (b"[]", "empty_messages"),
    "a message that is a string": (_j(["hi"]), "invalid_message"),
    "a message with role null": (_j([{"role": None, "text": "x"}]), "missing_role"),
    "a message with an unknown role": (_j([{"role": "wizard", "text": "x"}]), "unknown_role"),
    "a message without text": (_j([{"role": "user"}]), "missing_text"),
    "an attachment with an unknown data_type": (
        _j(
            [
                {
                    "role": "user",
                    "text": "x",
                    "attachments": [{"attachment_type": "image", "data_type": "carrier_pigeon", "data": "x"}],
                }
            ]
        ),
        "invalid_attachment",
    ),
    "attachments that are not a list": (
        _j([{"role": "user", "text": "x", "attachments": "cat.png"}]),
        "invalid_attachment",
    ),
    "a batch line for an endpoint no batch runs": (
        _j({"url": "/v1/images/generations", "body": {"messages": MESSAGES_OK}}),
        "unsupported_endpoint",
    ),
    "a batch line for another endpoint than the job's": (
        _j({"url": "/v1/embeddings", "body": {"input": "x"}}),
        "mismatched_endpoint",
    ),
    "a batch line over the num_generations limit": (_batch(n=1000), "limit_exceeded"),
    "a batch line over the max_tokens limit": (_batch(max_tokens=10**7), "limit_exceeded"),
    "a batch line with negative max_tokens": (_batch(max_tokens=-1), "invalid_parameter"),
    "a batch line with a numeric custom_id": (
        _j({"custom_id": 7, "body": {"messages": MESSAGES_OK}}),
        "invalid_custom_id",
    ),
}
# Accepted oddities, all on lines 1-4: a BOM, CRLF line ends, a blank and a whitespace-only line.
ACCEPTED_HEAD = b"\xef\xbb\xbf" + GOOD + b"\r\n" + b"\r\n" + b"  \t \n" + GOOD + b"\r\n"
FIRST_BAD_LINE = 5
LINE_OF = {case: FIRST_BAD_LINE + i for i, case in enumerate(BAD_LINES)}
LAST_LINE = FIRST_BAD_LINE + len(BAD_LINES)  # a good line without a final newline


@pytest.fixture(scope="module")
def bad_lines_job(served: ServeProcess, e2e_root: Path) -> dict[str, Any]:
    """One job over a file of every bad line at once: one job's worth of waiting for all of them."""
    content = ACCEPTED_HEAD + b"".join(line + b"\n" for line, _ in BAD_LINES.values()) + GOOD
    path = _file(e2e_root / "data", "bad-lines.jsonl", content)
    return served.wait(served.submit_ok(_body(path))["job_id"])


def _errors_by_line(job: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {record["line"]: record for record in read_jsonl(job["error_file_path"]["value"])}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_line_becomes_its_own_error_record_with_line_number_and_code(
    case: str, bad_lines_job: dict[str, Any]
) -> None:
    record = _errors_by_line(bad_lines_job)[LINE_OF[case]]
    assert record["error"]["code"] == BAD_LINES[case][1], record
    assert record["error"]["message"]
    assert "Traceback" not in record["error"]["message"]


def test_a_file_of_bad_lines_still_completes_with_every_line_in_exactly_one_file(
    bad_lines_job: dict[str, Any],
) -> None:
    job = bad_lines_job
    assert job["status"] == "completed", job
    success = read_jsonl(job["success_file_path"]["value"])
    # The BOM line and the CRLF lines parse; the blank ones are skipped but keep the numbering.
    assert [r["line"] for r in success] == [1, 4, LAST_LINE]
    assert all(r["generations"][0]["text"] == "echo: fine" for r in success)
    assert sorted(_errors_by_line(job)) == sorted(LINE_OF.values())
    assert job["metadata"]["blank_lines_skipped"] == 2
    assert job["metadata"]["request_counts"] == {
        "total": 3 + len(BAD_LINES),
        "completed": 3,
        "failed": len(BAD_LINES),
    }


def test_a_too_long_line_names_the_limit_and_its_setting(bad_lines_job: dict[str, Any]) -> None:
    message = _errors_by_line(bad_lines_job)[LINE_OF["a 50 MB single line"]]["error"]["message"]
    assert "1,048,576 bytes" in message and "BATCHINFER_MAX_LINE_BYTES" in message


# ---- level 3: the file ------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    path: Callable[[Path], dict[str, str]]  # the prompt_file_path, built from the data dir
    code: str
    says: str = ""


BAD_FILES: dict[str, BadFile] = {
    "more lines than the limit": BadFile(
        lambda d: _file(d, "too-many-lines.jsonl", b"[]\n" * 1_000_001),
        "too_many_lines",
        "1,000,001 lines, over the limit of 1,000,000 (BATCHINFER_MAX_LINES)",
    ),
    "UTF-16 text": BadFile(
        lambda d: _file(d, "utf16.jsonl", (GOOD.decode() + "\n").encode("utf-16")), "not_utf8"
    ),
    "a gzip file given by path": BadFile(
        lambda d: _file(d, "prompts.jsonl.gz", gzip.compress(GOOD + b"\n" + GOOD + b"\n")), "not_utf8"
    ),
    "nothing but one 50 MB line": BadFile(
        lambda d: _file(d, "one-huge-line.jsonl", b"[" + b" " * (50 * MiB) + b"]\n"), "no_valid_lines"
    ),
    # No s3fs is installed: fsspec says so at once, with no network involved.
    "a remote file that cannot be downloaded": BadFile(
        lambda d: {"type": "uri", "value": "s3://no-such-bucket/prompts.jsonl"},
        "invalid_prompt_file_path",
        "Could not download",
    ),
}


@pytest.fixture(scope="module")
def bad_file_jobs(served: ServeProcess, e2e_root: Path) -> dict[str, dict[str, Any]]:
    """All the bad files' jobs, submitted at once so that they run side by side; then each, done."""
    job_ids = {
        case: served.submit_ok(_body(bad.path(e2e_root / "data")))["job_id"]
        for case, bad in BAD_FILES.items()
    }
    return {case: served.wait(job_id) for case, job_id in job_ids.items()}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_an_unusable_file_fails_the_job_with_a_clear_code_and_message(
    case: str, bad_file_jobs: dict[str, dict[str, Any]]
) -> None:
    bad, job = BAD_FILES[case], bad_file_jobs[case]
    assert job["status"] == "failed", job
    error = job["metadata"]["error"]
    assert error["code"] == bad.code, error
    assert error["message"] and "Traceback" not in error["message"]
    assert bad.says in error["message"], error["message"]
