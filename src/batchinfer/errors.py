"""The one error tree of batchinfer, written down once.

Three levels, each with its own home:

* ``RequestError`` and its subclasses: a bad request. The adapter answers a 4xx naming the field and
  creates no job. ``http_status`` is the only place a status code is chosen; ``api/app.py`` maps the
  tree to HTTP in one handler (``api/openai/errors.py`` renders the same tree in OpenAI's shape).
* ``JobError``: the prompt file as a whole is unusable, or the job cannot go on. The job ends
  ``failed`` with ``code`` and ``message`` in its metadata (and, for a file error, the error file).
* A line error is a record, not an exception (``records.ErrorRecord``): one bad input line or one
  failed inference. It goes to the error file; the other lines run.

    BatchInferError                 error                 500
    ├── RequestError                invalid_request       422  (field, location)
    │   ├── UnknownModelError       unknown_model         422
    │   ├── PromptFileError         invalid_prompt_file_path 422
    │   │   └── FileTooLargeError   file_too_large        413
    │   ├── LimitExceededError      limit_exceeded        422
    │   ├── PromptTableError        unknown_template_field 422 (and no_prompt_column, template_needs_table)
    │   ├── UnauthorizedError       unauthorized          401
    │   ├── JobNotFoundError        job_not_found         404
    │   ├── JobNotResumableError    job_not_resumable     409
    │   ├── JobNotRetryableError    job_not_retryable     409
    │   └── JobNotCancellableError  job_not_cancellable   409
    ├── ServiceUnavailableError     service_unavailable   503
    ├── JobError                    job_failed            (fails the job; code as raised)
    ├── ConfigError                 config_error          (the CLI: one line, before anything starts)
    ├── EngineError                 engine_error          (a model that cannot be built or loaded)
    ├── InferenceError              inference_error       (one request, for good: a line record)
    │   └── engines.messages.UnsupportedAttachment  unsupported_attachment
    ├── api.openai.errors.OpenAIError  (its code)     (its status: a /v1 refusal in OpenAI's shape)
    └── client.BatchInferClientError  client_error    (the caller's side of a refused call)
        └── client.JobWaitTimeout   wait_timeout

Signals that never leave the pair of modules that raise and catch them, and are not errors of ours
to report: ``runtime.deadline.DeadlinePassed`` (the window to ``JobRun``, which turns it into a
``deadline_exceeded`` ``JobError``), ``engines.http_transports.RetryableError`` and
``engines.openai_compat._Failed`` (a request to its error record), ``pipeline.parsing._LineRejected``
(a line to its error record). Every code a client can see is in ``error_codes.ERROR_CODES``.

Every message says what was wrong *and* how to fix it.
"""

from __future__ import annotations

from batchinfer.error_codes import ErrorCode


class BatchInferError(Exception):
    """Base of every error batchinfer raises on purpose."""

    code: str = "error"
    http_status: int = 500  # what the adapter answers; each subclass that a client causes says its own

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RequestError(BatchInferError):
    """A request that cannot become a job. ``field`` is the dotted location of the culprit."""

    code = ErrorCode.invalid_request
    http_status = 422

    def __init__(self, message: str, *, field: str, code: str | None = None, location: str = "body") -> None:
        super().__init__(message, code=code)
        self.field = field
        self.location = location  # "body", "query" or "header", as in FastAPI's validation errors


class UnknownModelError(RequestError):
    code = ErrorCode.unknown_model

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(
            f"Unknown model {model!r}. Known models: {', '.join(sorted(known)) or '(none)'}. "
            "Add it to the models file (BATCHINFER_MODELS) or use one of the known ids.",
            field="model",
        )


class PromptFileError(RequestError):
    """The prompt file location is wrong: missing, unreadable, not allowed, or malformed."""

    code = ErrorCode.invalid_prompt_file_path


class LimitExceededError(RequestError):
    """A request past a configured limit. The message names the limit and its variable."""

    code = ErrorCode.limit_exceeded


class PromptTableError(RequestError):
    """A table prompt file that the request's template or the table's columns cannot make prompts
    of (a template naming a column the table lacks; neither a ``messages`` nor a ``prompt`` column;
    a template for a JSONL file). At run time (a remote file) the job fails with the same code."""

    code = ErrorCode.unknown_template_field


class FileTooLargeError(PromptFileError):
    """The prompt file is over ``max_prompt_file_bytes``: 413 at submit; at run the job fails
    with this code (the flow keeps ``code`` when it turns any of these into a ``JobError``)."""

    code = ErrorCode.file_too_large
    http_status = 413


class UnauthorizedError(RequestError):
    """No or a wrong bearer token. The message never says which of the two, nor echoes it."""

    code = ErrorCode.unauthorized
    http_status = 401

    def __init__(self) -> None:
        super().__init__(
            "Missing, invalid or revoked key; send 'Authorization: Bearer <key>' (or 'x-api-key: "
            "<key>') with a key from `batchinfer keys create`, or the server's BATCHINFER_API_TOKEN.",
            field="authorization",
            location="header",
        )


class JobNotFoundError(RequestError):
    code = ErrorCode.job_not_found
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"No job with id {job_id!r}; use the job_id that submit_job returned.",
            field="job_id",
            location="query",
        )


class JobNotResumableError(RequestError):
    """A resume of a job that is completed, still running, or has no runner to go back to."""

    code = ErrorCode.job_not_resumable
    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message, field="job_id", location="query")


class JobNotRetryableError(RequestError):
    """A retry_failed of a job that is still running, ran in the foreground, or has no failed line
    a retry would run."""

    code = ErrorCode.job_not_retryable
    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message, field="job_id", location="body")


class JobNotCancellableError(RequestError):
    """A cancel of a job that has already ended."""

    code = ErrorCode.job_not_cancellable
    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message, field="job_id", location="query")


class ServiceUnavailableError(BatchInferError):
    """The Prefect API is unreachable or not ready; the client may retry."""

    code = ErrorCode.service_unavailable
    http_status = 503


class JobError(BatchInferError):
    """The job cannot run at all; raised inside the flow, it ends the job ``failed``."""

    code = ErrorCode.job_failed


class ConfigError(BatchInferError):
    """The environment a command starts in is unusable (a folder it cannot create, a profiles file it
    cannot read, a Prefect API that does not answer); the command stops before it starts anything."""

    code = ErrorCode.config_error


class EngineError(BatchInferError):
    """An engine could not be built or loaded (bad config, missing model file)."""

    code = ErrorCode.engine_error


class InferenceError(BatchInferError):
    """One request failed for good (after retries). Becomes that line's error record."""

    code = ErrorCode.inference_error


# -- how to go on after a job stopped, said by every message that reports it --------------------


def resume_hint(job_id: str) -> str:
    return (
        "Results of finished chunks are kept; resume the job with "
        f"`batchinfer resume {job_id}` or POST /batch_inference/resume_job?job_id={job_id}."
    )


def rerun_hint(output_dir: str) -> str:
    """How to finish a foreground job (``batchinfer run``) that stopped: it has no runner to resume it."""
    return (
        "Results of finished lines are kept; to finish the rest, run the same `batchinfer run` command "
        f"again with --output-dir {output_dir}: the lines already answered are not sent again."
    )
