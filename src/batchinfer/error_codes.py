"""Every error ``code`` a client can see, in one typed vocabulary: ``ErrorCode``, a ``StrEnum`` whose
members carry where each shows (``Use``: its level, its HTTP status where it answers one, what it
means and how to fix it). Code raises members, never string literals (``tests/test_error_codes.py``
looks for literals), and ``docs/errors.md`` is generated from the members (``markdown``; CI fails
when the page is stale: ``make docs`` writes it).

Levels: ``request`` (a 4xx/5xx answer, no job), ``job`` (``metadata.error.code`` of a failed job;
whole-file ones also as the error file's ``"line": null`` record), ``line`` (one record of the error
file), ``batch`` (an entry of a /v1 batch's ``errors.data``: an input line that fails OpenAI's
checks), ``client`` (raised by ``batchinfer.client`` on the caller's side). A code may show at more
than one level (``model_not_found``: a job stopped early, and a /v1 line naming a model not served).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Level(StrEnum):
    request = "request"
    job = "job"
    line = "line"
    batch = "batch"
    client = "client"


REQUEST, JOB, LINE, BATCH, CLIENT = Level.request, Level.job, Level.line, Level.batch, Level.client


@dataclass(frozen=True)
class Use:
    """Where a code shows: its level, the HTTP status it answers there (None: none), its meaning."""

    level: Level
    http_status: int | None
    meaning: str


class ErrorCode(StrEnum):
    """Every code a client can see. A member is its own code string: ``ErrorCode.timeout == "timeout"``."""

    uses: tuple[Use, ...]

    def __new__(cls, code: str, *uses: Use) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.uses = uses
        return member

    invalid_request = (
        "invalid_request",
        Use(REQUEST, 422, "A field of the request is wrong; the message names it."),
        Use(LINE, None, "vLLM refused the prompt (its message follows)."),
        Use(
            BATCH,
            None,
            "A field of the line is wrong (custom_id not a string, method not POST, body not an object), "
            "or its body lacks model or its endpoint's prompt field; line null: input_file_id names no "
            "file.",
        ),
    )
    json_invalid = (
        "json_invalid",
        Use(REQUEST, 422, "The body is not JSON (too deeply nested, not UTF-8): send one UTF-8 JSON object."),
    )
    unknown_model = (
        "unknown_model",
        Use(REQUEST, 422, "No such model id: use one the message lists, or add it to the models file."),
    )
    invalid_prompt_file_path = (
        "invalid_prompt_file_path",
        Use(
            REQUEST,
            422,
            "The prompt file is missing, unreadable or not allowed where it is: fix the path or "
            "BATCHINFER_ALLOWED_ROOTS.",
        ),
    )
    scheme_not_allowed = (
        "scheme_not_allowed",
        Use(
            REQUEST, 422, "A uri scheme not in BATCHINFER_URI_SCHEMES: use file, http(s) or an fsspec store."
        ),
    )
    private_address = (
        "private_address",
        Use(
            REQUEST,
            422,
            "An http(s) prompt file on a loopback or private address: set BATCHINFER_ALLOW_PRIVATE_URIS "
            "to allow it.",
        ),
    )
    compressed_content = (
        "compressed_content",
        Use(REQUEST, 422, "raw_bytes holds a compressed file: send the JSONL itself, or base64 of it."),
    )
    output_overwrites_input = (
        "output_overwrites_input",
        Use(REQUEST, 422, "output_dir would overwrite the prompt file: pick another directory."),
    )
    limit_exceeded = (
        "limit_exceeded",
        Use(
            REQUEST,
            422,
            "Past a configured limit (the message names it and its variable); a line past one is a line "
            "error.",
        ),
    )
    file_too_large = (
        "file_too_large",
        Use(
            REQUEST,
            413,
            "The prompt file is over BATCHINFER_MAX_PROMPT_FILE_BYTES (a remote one fails the job with "
            "this code).",
        ),
    )
    invalid_job_id = (
        "invalid_job_id",
        Use(REQUEST, 422, "job_id is not a UUID or batch id: use the id submit_job returned."),
    )
    unauthorized = (
        "unauthorized",
        Use(
            REQUEST,
            401,
            "Missing, wrong or revoked key: send a key from batchinfer keys create (Authorization: "
            "Bearer, or x-api-key), or the server's BATCHINFER_API_TOKEN.",
        ),
    )
    unknown_template_field = (
        "unknown_template_field",
        Use(
            REQUEST,
            422,
            "prompt_template names a column the table lacks (the message lists its columns); a remote "
            "table fails the job with this code.",
        ),
    )
    no_prompt_column = (
        "no_prompt_column",
        Use(
            REQUEST,
            422,
            "The table has neither a messages nor a prompt column: rename one, or give a prompt_template "
            "(a remote table fails the job with this code).",
        ),
    )
    template_needs_table = (
        "template_needs_table",
        Use(
            REQUEST,
            422,
            "prompt_template or system_prompt with a JSONL prompt file: they build prompts from a table's"
            " columns (a remote file fails the job with this code).",
        ),
    )
    job_not_found = "job_not_found", Use(REQUEST, 404, "No job with that id.")
    job_not_resumable = (
        "job_not_resumable",
        Use(REQUEST, 409, "Completed, still running, or run in the foreground: the message says which."),
    )
    job_not_retryable = (
        "job_not_retryable",
        Use(
            REQUEST,
            409,
            "Still running, run in the foreground, or no failed line a retry would run: the message says "
            "which.",
        ),
    )
    job_not_cancellable = "job_not_cancellable", Use(REQUEST, 409, "The job has already ended.")
    service_unavailable = (
        "service_unavailable",
        Use(REQUEST, 503, "The Prefect API is down or not ready: retry."),
    )
    quota_exceeded = (
        "quota_exceeded",
        Use(
            REQUEST,
            429,
            "The key's quota (enqueued requests or tokens, running jobs) would be passed: the message "
            "says which and how much is in use; wait for a job to end, submit less, or ask for a larger "
            "quota.",
        ),
    )
    key_exists = (
        "key_exists",
        Use(REQUEST, 409, "batchinfer keys create: a key of that name exists; pick another."),
    )
    not_found = "not_found", Use(REQUEST, 404, "/v1: no such file or batch (or an expired file).")
    invalid_file_purpose = (
        "invalid_file_purpose",
        Use(REQUEST, 400, "/v1: a batch's input file must be uploaded with purpose batch."),
    )
    invalid_value = (
        "invalid_value",
        Use(
            REQUEST,
            400,
            "/v1: a value OpenAI does not take (endpoint, completion_window, expires_after): the message "
            "lists the supported ones.",
        ),
    )
    unknown_parameter = (
        "unknown_parameter",
        Use(
            REQUEST,
            400,
            "/v1: a create parameter OpenAI does not take: remove it (the extensions are idempotency_key "
            "and invalid_lines).",
        ),
    )
    object_above_max_properties = (
        "object_above_max_properties",
        Use(REQUEST, 400, "/v1: metadata has more than 16 pairs."),
    )
    string_above_max_length = (
        "string_above_max_length",
        Use(REQUEST, 400, "/v1: a metadata key over 64 characters, or a value over 512."),
    )
    invalid_type = "invalid_type", Use(REQUEST, 400, "/v1: a metadata value that is not a string.")
    idempotency_conflict = (
        "idempotency_conflict",
        Use(
            REQUEST,
            409,
            "/v1: the idempotency_key made a batch with other parameters: send those, or use a new key.",
        ),
    )
    job_failed = "job_failed", Use(JOB, None, "The job failed; the message says why.")
    empty_file = "empty_file", Use(JOB, None, "The prompt file has no lines.")
    no_valid_lines = (
        "no_valid_lines",
        Use(JOB, None, "No line is a valid prompt: the error file lists why for each."),
    )
    not_utf8 = "not_utf8", Use(JOB, None, "The file is not UTF-8 text (compressed or binary?).")
    too_many_lines = (
        "too_many_lines",
        Use(JOB, None, "More lines than BATCHINFER_MAX_LINES: split the file or raise the limit."),
    )
    cancelled = (
        "cancelled",
        Use(
            JOB,
            None,
            "Cancelled (also each line it cut short): finished lines are kept; resume runs the rest.",
        ),
    )
    expired = (
        "expired",
        Use(
            JOB,
            None,
            "The completion window (expires_at) passed (also each line it cut short); resume runs the rest.",
        ),
    )
    deadline_exceeded = (
        "deadline_exceeded",
        Use(JOB, None, "Past BATCHINFER_JOB_TIMEOUT_S: finished chunks are kept for a resume."),
    )
    model_unreachable = (
        "model_unreachable",
        Use(JOB, None, "Every line failed to connect to the model server: start it, check base_url, resume."),
    )
    auth_failed = (
        "auth_failed",
        Use(
            JOB,
            None,
            "Stopped early: its first requests all got 401/403 (also each line it cut short): set a valid"
            " key in the variable the model's api_key_env names, then resume.",
        ),
    )
    model_not_found = (
        "model_not_found",
        Use(
            JOB,
            None,
            "Stopped early: its first requests all got 404 (also each line it cut short): fix the model's"
            " model name or base_url, then resume.",
        ),
        Use(BATCH, None, "body.model is not served here: use a model id the message lists."),
    )
    quota_exhausted = (
        "quota_exhausted",
        Use(
            JOB,
            None,
            "Stopped early: the provider's quota is used up (429 insufficient_quota; also each line so "
            "answered or cut short): add credit, then resume.",
        ),
    )
    certificate_untrusted = (
        "certificate_untrusted",
        Use(
            JOB,
            None,
            "Stopped early: its first requests all found the model server's TLS certificate untrusted (also "
            "each line it cut short): set SSL_CERT_FILE or the model's ca_bundle to the CA that signed it, "
            "then resume.",
        ),
        Use(
            LINE,
            None,
            "The model server's TLS certificate failed verification (not retried): set SSL_CERT_FILE (or "
            "SSL_CERT_DIR) to its CA's bundle, or the model's ca_bundle.",
        ),
    )
    error_rate_exceeded = (
        "error_rate_exceeded",
        Use(
            JOB,
            None,
            "More than max_error_rate of its requests failed (also each line it cut short): the error "
            "file says why for each; fix the cause and resume, or raise max_error_rate.",
        ),
    )
    invalid_table = (
        "invalid_table",
        Use(
            JOB,
            None,
            "The Parquet or CSV file cannot be read (corrupt, or a CSV column whose type changes midway).",
        ),
    )
    invalid_batch_file = (
        "invalid_batch_file",
        Use(
            JOB,
            None,
            "/v1: lines of the batch's input file are invalid, so nothing was sent; the batch's errors "
            "list each one: fix them and create the batch again.",
        ),
    )
    interrupted = "interrupted", Use(JOB, None, "A previous serve stopped while the job ran: resume it.")
    crashed = "crashed", Use(JOB, None, "The process running the job died: resume it.")
    duplicate_line = (
        "duplicate_line",
        Use(JOB, None, "A line came back twice from the chunks (a bug): re-run the job."),
    )
    lost_lines = "lost_lines", Use(JOB, None, "Chunk results miss lines: re-run the job to redo them.")
    scaleout_error = (
        "scaleout_error",
        Use(
            JOB,
            None,
            "Dask misconfigured or unreachable: check BATCHINFER_DASK_ADDRESS and BATCHINFER_SHARED_STORAGE.",
        ),
    )
    engine_error = (
        "engine_error",
        Use(JOB, None, "The model could not be built or loaded (bad models file entry, missing weights)."),
    )
    config_error = (
        "config_error",
        Use(
            JOB,
            None,
            "The environment is unusable (a folder, Prefect's settings, a Prefect API): at the CLI, one "
            "line before anything starts.",
        ),
    )
    invalid_json = "invalid_json", Use(LINE, None, "The line is not valid JSON.")
    invalid_utf8 = "invalid_utf8", Use(LINE, None, "The line is not UTF-8.")
    line_too_long = (
        "line_too_long",
        Use(LINE, None, "Longer than BATCHINFER_MAX_LINE_BYTES: shorten it (attachments by path or uri)."),
        Use(BATCH, None, "Longer than BATCHINFER_MAX_LINE_BYTES: shorten it, or raise the limit."),
    )
    not_a_list = "not_a_list", Use(LINE, None, "Not a list of messages (nor a batch line).")
    empty_messages = "empty_messages", Use(LINE, None, "The message list is empty.")
    invalid_message = (
        "invalid_message",
        Use(LINE, None, "A message is not an object, or a field of it is wrong."),
    )
    missing_role = "missing_role", Use(LINE, None, "A message has no role.")
    unknown_role = (
        "unknown_role",
        Use(LINE, None, "A role other than system, developer, user, assistant, tool, ipython."),
    )
    missing_text = (
        "missing_text",
        Use(LINE, None, "A message has no text (and no attachments, no tool calls)."),
    )
    invalid_attachment = (
        "invalid_attachment",
        Use(LINE, None, "An attachment lacks attachment_type, data_type or data, or has a wrong one."),
    )
    invalid_custom_id = "invalid_custom_id", Use(LINE, None, "custom_id is not a string.")
    missing_prompt = (
        "missing_prompt",
        Use(LINE, None, "A table row's prompt (messages, prompt, or a column its template uses) is null."),
    )
    invalid_prompt = (
        "invalid_prompt",
        Use(
            LINE,
            None,
            "A table row's prompt is not a non-empty string, its messages not JSON, or the template "
            "cannot be filled from it.",
        ),
    )
    invalid_body = (
        "invalid_body",
        Use(LINE, None, "A batch line's body lacks its endpoint's prompt (messages, prompt, input)."),
    )
    unsupported_endpoint = (
        "unsupported_endpoint",
        Use(
            LINE,
            400,
            "An endpoint a batch cannot run, or one the model's engine does not serve (/v1: at create, 400).",
        ),
    )
    mismatched_endpoint = (
        "mismatched_endpoint",
        Use(LINE, None, "Another endpoint than the job's: a job runs one."),
    )
    unsupported_method = "unsupported_method", Use(LINE, None, "A batch line's method is not POST.")
    invalid_parameter = (
        "invalid_parameter",
        Use(LINE, None, "A sampling field is malformed (temperature -1, top_logprobs 50, a bad schema)."),
    )
    unsupported_parameter = (
        "unsupported_parameter",
        Use(LINE, None, "A field the engine cannot honour (named, with the engine), or stream: true."),
    )
    unsupported_attachment = (
        "unsupported_attachment",
        Use(LINE, None, "Media the engine cannot take (video, audio; images on text-only engines)."),
    )
    unreadable_attachment = (
        "unreadable_attachment",
        Use(LINE, None, "An attachment file cannot be read: fix its path."),
    )
    context_length_exceeded = (
        "context_length_exceeded",
        Use(
            LINE, None, "Prompt plus max_tokens is over the model's context: shorten it or lower max_tokens."
        ),
    )
    chat_template_error = (
        "chat_template_error",
        Use(LINE, None, "The model's chat template refused the conversation (roles out of order?)."),
    )
    http_status_answer = (
        "http_<status>",
        Use(
            LINE,
            None,
            "The model server answered this status for good (after retries for 408, 429, 5xx); its "
            "message follows.",
        ),
    )
    timeout = (
        "timeout",
        Use(LINE, None, "No answer within timeout_s after every retry: raise timeout_s or check the server."),
    )
    connection_error = (
        "connection_error",
        Use(LINE, None, "The model server could not be reached after every retry."),
    )
    bad_response = (
        "bad_response",
        Use(
            LINE,
            None,
            "A 200 that is not the endpoint's answer: check base_url points at an OpenAI-compatible /v1.",
        ),
    )
    batch_expired = (
        "batch_expired",
        Use(LINE, None, "/v1 error file: the request was not run before the completion window passed."),
    )
    inference_error = "inference_error", Use(LINE, None, "One request failed for good in an engine.")
    invalid_json_line = "invalid_json_line", Use(BATCH, None, "The line is not JSON (or not UTF-8).")
    missing_required_parameter = (
        "missing_required_parameter",
        Use(
            BATCH,
            None,
            "The line is not an object, or lacks custom_id, method, url or body (param names it).",
        ),
    )
    invalid_url = "invalid_url", Use(BATCH, None, "The line's url is not the batch's endpoint.")
    streaming_unsupported = "streaming_unsupported", Use(BATCH, None, "body.stream is set: remove it.")
    model_mismatch = (
        "model_mismatch",
        Use(BATCH, None, "body.model is another than the batch's: a batch runs one model."),
    )
    duplicate_custom_id = (
        "duplicate_custom_id",
        Use(BATCH, None, "An earlier line has this custom_id: make each unique."),
    )
    client_error = (
        "client_error",
        Use(CLIENT, None, "The server refused the call: status_code, field and the server's code tell why."),
    )
    unreachable = (
        "unreachable",
        Use(CLIENT, None, "Nothing answers at BATCHINFER_URL: start batchinfer serve, or fix the URL."),
    )
    invalid_response = (
        "invalid_response",
        Use(CLIENT, None, "The server's answer is not what the API promises (a proxy in between?)."),
    )
    wait_timeout = (
        "wait_timeout",
        Use(CLIENT, None, "wait_for_job gave up before the job ended: wait longer."),
    )
    no_results = (
        "no_results",
        Use(CLIENT, None, "read_results of a job that has not ended: wait for it first."),
    )


def http(status: int) -> str:
    """The code of a model server's refusal that no retry fixed: ``http_<status>``."""
    return f"http_{status}"


class Row(NamedTuple):
    """One (code, level) of the vocabulary, as docs/errors.md lists it."""

    code: str
    level: Level
    http_status: int | None
    meaning: str


ERROR_CODES: tuple[Row, ...] = tuple(
    Row(str(code), use.level, use.http_status, use.meaning) for code in ErrorCode for use in code.uses
)


def codes() -> set[str]:
    return {str(code) for code in ErrorCode}


# -- docs/errors.md, generated from the members ---------------------------------------------------

_PAGE = """# Error codes

Every `code` a client can see, by where it shows. Three levels (the error tree is drawn in
[`src/batchinfer/errors.py`](../src/batchinfer/errors.py)): a bad request is a 4xx and no job; a
prompt file that is unusable as a whole fails the job; a line that cannot be run, or a request that
fails for good, is that line's record in the error file while the other lines run. Every message
names the field and says how to fix it.

This page is generated from `ErrorCode` in
[`src/batchinfer/error_codes.py`](../src/batchinfer/error_codes.py) (`make docs`); a test fails when
it is stale, and another when the source raises a code as a string instead of a member.
"""
SECTIONS: dict[Level, tuple[str, str]] = {
    Level.request: ("A bad request: an answer, and no job", ""),
    Level.job: ("A job that failed: `metadata.error.code`", ""),
    Level.line: ("One line of the error file: `error.code`", ""),
    Level.batch: (
        "An invalid input line of a /v1 batch: `errors.data[].code`",
        "While a /v1 batch is `validating`, every input line is checked as OpenAI checks it\n"
        "([openai-batches.md](openai-batches.md)); each invalid line is one entry of the batch's\n"
        "`errors.data`, with its `line` and the `param` at fault, and the batch fails before any request is\n"
        "sent. With `invalid_lines: error_file` each is instead that line's record in the error file.\n\n",
    ),
    Level.client: ("Raised by the Python client", ""),
}


def markdown() -> str:
    """docs/errors.md: the page, a table per level, each code in the order the enum defines it."""
    parts = [_PAGE]
    for level, (heading, intro) in SECTIONS.items():
        rows = [
            f"| `{row.code}` | {row.http_status or ''} | {row.meaning} |"
            for row in ERROR_CODES
            if row.level is level
        ]
        table = "\n".join(["| code | HTTP | meaning and fix |", "|---|---|---|", *rows])
        parts.append(f"\n## {heading}\n\n{intro}{table}\n")
    return "".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
