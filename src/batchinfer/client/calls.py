"""The calls both clients make, built and read without sending them (sans-I/O): where the server is,
what each call sends, and how each answer is read."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel

from batchinfer import __version__
from batchinfer.client.errors import BatchInferClientError, JobWaitTimeout
from batchinfer.contract import BatchInference, JobStatus, Options, Path, PathType
from batchinfer.error_codes import ErrorCode

URL_ENV = "BATCHINFER_URL"
TOKEN_ENV = "BATCHINFER_API_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"  # `batchinfer serve`'s default --host and --port
DEFAULT_TIMEOUT_S = 30.0  # per HTTP request; waiting for a job has its own timeout_s
DEFAULT_POLL_S = 1.0
TERMINAL = frozenset({JobStatus.completed, JobStatus.failed})

SUBMIT_PATH = "/batch_inference/submit_job"
STATUS_PATH = "/batch_inference/job_status"
CANCEL_PATH = "/batch_inference/cancel_job"
JOBS_PATH = "/batch_inference/jobs"
RESULTS_PATH = "/batch_inference/job_results"
RETRY_PATH = "/batch_inference/retry_failed"
RESULTS_STATUS_HEADER = "X-Batchinfer-Job-Status"  # the job's status when its results were read

# What ``prompt_file`` may be: see ``prompt_path``.
PromptFile: TypeAlias = Path | str | os.PathLike[str] | bytes | bytearray
OptionsLike: TypeAlias = Options | Mapping[str, Any]

# A scheme followed by "//": s3://, https://, file:// ... Requiring "//" keeps a file name with a
# colon in it ("notes:v2.jsonl") a file name, and a scheme of 2+ letters keeps "C://" a drive.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# ---- requests, built and read the same way by both clients ------------------------------------


def prompt_path(prompt_file: PromptFile) -> Path:
    """The contract's ``Path`` for ``prompt_file``:

    * a ``batchinfer.contract.Path``: as is;
    * ``bytes``: the content itself, ``raw_bytes`` as base64 (safe for any bytes; the server tells
      base64 from JSONL text because JSONL starts with ``[`` or ``{``, which base64 never does);
    * a ``str`` with a scheme (``s3://``, ``https://``, ``file://`` ...): a ``uri``;
    * any other ``str`` or ``os.PathLike``: a ``filepath``, made absolute here, because the server
      refuses relative paths (it has its own working directory).
    """
    if isinstance(prompt_file, Path):
        return prompt_file
    if isinstance(prompt_file, bytes | bytearray):
        return Path(type=PathType.raw_bytes, value=base64.b64encode(prompt_file).decode("ascii"))
    if isinstance(prompt_file, str) and _URI.match(prompt_file):
        return Path(type=PathType.uri, value=prompt_file)
    if isinstance(prompt_file, str | os.PathLike):
        local = os.fsdecode(os.fspath(prompt_file))
        if not local:
            raise ValueError("prompt_file is an empty string; give a file path, a URI or bytes.")
        return Path(type=PathType.filepath, value=os.path.abspath(os.path.expanduser(local)))
    raise TypeError(
        "prompt_file must be a batchinfer.contract.Path, a local path (str or os.PathLike), a URI "
        f"string (s3://, https://, file:// ...) or bytes; got {type(prompt_file).__name__}."
    )


def options_json(options: OptionsLike | None) -> dict[str, Any] | None:
    """Options as sent. A dict goes as is: the server validates it, so every refusal has one shape."""
    if options is None:
        return None
    if isinstance(options, Options):
        return options.model_dump(mode="json", exclude_none=True)
    return dict(options)


@dataclass(frozen=True)
class Call:
    """One HTTP call, described without sending it (both clients send the same calls)."""

    method: str
    path: str
    params: dict[str, str | int] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def submit_call(
    model: str,
    prompt_file: PromptFile,
    options: OptionsLike | None,
    num_generations: int,
    extensions: Mapping[str, str | float | None] | None = None,
) -> Call:
    body: dict[str, Any] = {
        "model": model,
        "prompt_file_path": prompt_path(prompt_file).model_dump(mode="json"),
        "num_generations": num_generations,
    }
    body.update({key: value for key, value in (extensions or {}).items() if value is not None})
    if (sent := options_json(options)) is not None:
        body["options"] = sent
    return Call("POST", SUBMIT_PATH, body=body)


def extensions(
    prompt_template: str | None, system_prompt: str | None, max_error_rate: float | None
) -> dict[str, str | float | None]:
    """The request's fields beyond the contract's; those left None are not sent."""
    return {
        "prompt_template": prompt_template,
        "system_prompt": system_prompt,
        "max_error_rate": max_error_rate,
    }


def list_call(status: JobStatus | str | None, model: str | None, limit: int, offset: int) -> Call:
    params: dict[str, str | int] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status.value if isinstance(status, JobStatus) else status
    if model is not None:
        params["model"] = model
    return Call("GET", JOBS_PATH, params=params)


@dataclass(frozen=True)
class ResultsSoFar:
    """What ``job_results`` read: the records finished so far after ``after_line``, in input order
    (success and error records, as in the two output files), and the job's status when they were
    read. Once that status is ``completed`` or ``failed``, no more records will come."""

    records: list[dict[str, Any]]
    status: JobStatus

    @property
    def last_line(self) -> int | None:
        """The last input line among the records (the ``after_line`` to ask for next)."""
        lines = [record["line"] for record in self.records if record.get("line") is not None]
        return lines[-1] if lines else None


def retry_call(job_id: str, every_error: bool) -> Call:
    return Call("POST", RETRY_PATH, body={"job_id": job_id, "all": every_error})


def results_call(job_id: str, after_line: int) -> Call:
    return Call("GET", RESULTS_PATH, {"job_id": job_id, "after_line": after_line})


def parse_results(response: httpx.Response) -> ResultsSoFar:
    """The NDJSON records and the status header of ``job_results``, or the server's refusal."""

    def parse(response: httpx.Response) -> ResultsSoFar:
        records = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return ResultsSoFar(records=records, status=JobStatus(response.headers[RESULTS_STATUS_HEADER]))

    return parsed(response, parse, f"NDJSON records and a {RESULTS_STATUS_HEADER} header")


def read(response: httpx.Response, model: type[M]) -> M:
    """The answer as ``model``, or the server's refusal as ``BatchInferClientError``."""
    return parsed(response, lambda answer: model.model_validate(answer.json()), f"a {model.__name__}")


def parsed(response: httpx.Response, parse: Callable[[httpx.Response], T], shape: str) -> T:
    if response.is_error:
        raise BatchInferClientError.from_response(response)
    try:
        return parse(response)
    except (ValueError, KeyError) as exc:  # not this shape: another server, or another version
        raise BatchInferClientError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"with a body that is not {shape}: {exc}",
            status_code=response.status_code,
            detail=response.text[:500],
            code=ErrorCode.invalid_response,
        ) from None


def connection(base_url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """Base URL and headers, from the arguments, else from the environment (read now, per client)."""
    url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    headers = {"User-Agent": f"batchinfer-client/{__version__}"}
    if token:  # an empty token means none, as the server reads BATCHINFER_API_TOKEN
        headers["Authorization"] = f"Bearer {token}"
    return url, headers


@dataclass
class Wait:
    """How long ``wait_for_job`` sleeps between polls, and when it gives up."""

    timeout_s: float | None
    poll_s: float
    started: float = field(default_factory=time.monotonic)

    def pause_after(self, job: BatchInference) -> float:
        """Seconds to sleep before the next poll; raises ``JobWaitTimeout`` when no time is left."""
        if self.timeout_s is None:
            return self.poll_s
        left = self.started + self.timeout_s - time.monotonic()
        if left <= 0:
            raise JobWaitTimeout(job, self.timeout_s)
        return min(self.poll_s, left)


def unreachable(base_url: str, exc: httpx.TransportError) -> BatchInferClientError:
    return BatchInferClientError(
        f"Cannot reach batchinfer at {base_url} ({type(exc).__name__}: {exc}); is `batchinfer serve` "
        f"running there? Point the client at it with base_url or {URL_ENV}.",
        code=ErrorCode.unreachable,
    )
