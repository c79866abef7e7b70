"""Every error ``code`` a client can see, in one table: where it shows, its HTTP status where it has
one, and what it means with how to fix it. ``docs/errors.md`` is checked against this table, and
this table against the codes the source raises (``tests/test_error_codes.py``), so a new code
cannot ship undocumented.

Levels: ``request`` (a 4xx/5xx answer, no job), ``job`` (``metadata.error.code`` of a failed job;
whole-file ones also as the error file's ``"line": null`` record), ``line`` (one record of the error
file), ``batch`` (an entry of a /v1 batch's ``errors.data``: an input line that fails OpenAI's checks),
``client`` (raised by ``batchinfer.client`` on the caller's side).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Level = Literal["request", "job", "line", "batch", "client"]


class ErrorCode(NamedTuple):
    code: str
    level: Level
    http_status: int | None
    meaning: str


ERROR_CODES: tuple[ErrorCode, ...] = (
    # -- a bad request: no job --------------------------------------------------------------------
    ErrorCode("invalid_request", "request", 422, "A field of the request is wrong; the message names it."),
    ErrorCode(
        "json_invalid",
        "request",
        422,
        "The body is not JSON (too deeply nested, not UTF-8): send one UTF-8 JSON object.",
    ),
    ErrorCode(
        "unknown_model",
        "request",
        422,
        "No such model id: use one the message lists, or add it to the models file.",
    ),
    ErrorCode(
        "invalid_prompt_file_path",
        "request",
        422,
        "The prompt file is missing, unreadable or not allowed where it is: fix the path or "
        "BATCHINFER_ALLOWED_ROOTS.",
    ),
    ErrorCode(
        "scheme_not_allowed",
        "request",
        422,
        "A uri scheme not in BATCHINFER_URI_SCHEMES: use file, http(s) or an fsspec store.",
    ),
    ErrorCode(
        "private_address",
        "request",
        422,
        "An http(s) prompt file on a loopback or private address: set BATCHINFER_ALLOW_PRIVATE_URIS to "
        "allow it.",
    ),
    ErrorCode(
        "compressed_content",
        "request",
        422,
        "raw_bytes holds a compressed file: send the JSONL itself, or base64 of it.",
    ),
    ErrorCode(
        "output_overwrites_input",
        "request",
        422,
        "output_dir would overwrite the prompt file: pick another directory.",
    ),
    ErrorCode(
        "limit_exceeded",
        "request",
        422,
        "Past a configured limit (the message names it and its variable); a line past one is a line error.",
    ),
    ErrorCode(
        "file_too_large",
        "request",
        413,
        "The prompt file is over BATCHINFER_MAX_PROMPT_FILE_BYTES (a remote one fails the job with this "
        "code).",
    ),
    ErrorCode(
        "invalid_job_id", "request", 422, "job_id is not a UUID or batch id: use the id submit_job returned."
    ),
    ErrorCode(
        "unauthorized",
        "request",
        401,
        "Missing, wrong or revoked key: send a key from batchinfer keys create (Authorization: Bearer, or "
        "x-api-key), or the server's BATCHINFER_API_TOKEN.",
    ),
    ErrorCode(
        "unknown_template_field",
        "request",
        422,
        "prompt_template names a column the table lacks (the message lists its columns); a remote "
        "table fails the job with this code.",
    ),
    ErrorCode(
        "no_prompt_column",
        "request",
        422,
        "The table has neither a messages nor a prompt column: rename one, or give a prompt_template "
        "(a remote table fails the job with this code).",
    ),
    ErrorCode(
        "template_needs_table",
        "request",
        422,
        "prompt_template or system_prompt with a JSONL prompt file: they build prompts from a "
        "table's columns (a remote file fails the job with this code).",
    ),
    ErrorCode("job_not_found", "request", 404, "No job with that id."),
    ErrorCode(
        "job_not_resumable",
        "request",
        409,
        "Completed, still running, or run in the foreground: the message says which.",
    ),
    ErrorCode(
        "job_not_retryable",
        "request",
        409,
        "Still running, run in the foreground, or no failed line a retry would run: the message says which.",
    ),
    ErrorCode("job_not_cancellable", "request", 409, "The job has already ended."),
    ErrorCode("service_unavailable", "request", 503, "The Prefect API is down or not ready: retry."),
    ErrorCode(
        "quota_exceeded",
        "request",
        429,
        "The key's quota (enqueued requests or tokens, running jobs) would be passed: the message says "
        "which and how much is in use; wait for a job to end, submit less, or ask for a larger quota.",
    ),
    ErrorCode(
        "key_exists", "request", 409, "batchinfer keys create: a key of that name exists; pick another."
    ),
    ErrorCode("not_found", "request", 404, "/v1: no such file or batch (or an expired file)."),
    ErrorCode(
        "invalid_file_purpose",
        "request",
        400,
        "/v1: a batch's input file must be uploaded with purpose batch.",
    ),
    ErrorCode(
        "invalid_value",
        "request",
        400,
        "/v1: a value OpenAI does not take (endpoint, completion_window, expires_after): the message "
        "lists the supported ones.",
    ),
    ErrorCode(
        "unknown_parameter",
        "request",
        400,
        "/v1: a create parameter OpenAI does not take: remove it (the extensions are idempotency_key "
        "and invalid_lines).",
    ),
    ErrorCode("object_above_max_properties", "request", 400, "/v1: metadata has more than 16 pairs."),
    ErrorCode(
        "string_above_max_length",
        "request",
        400,
        "/v1: a metadata key over 64 characters, or a value over 512.",
    ),
    ErrorCode("invalid_type", "request", 400, "/v1: a metadata value that is not a string."),
    ErrorCode(
        "idempotency_conflict",
        "request",
        409,
        "/v1: the idempotency_key made a batch with other parameters: send those, or use a new key.",
    ),
    # -- a job that failed --------------------------------------------------------------------------
    ErrorCode("job_failed", "job", None, "The job failed; the message says why."),
    ErrorCode("empty_file", "job", None, "The prompt file has no lines."),
    ErrorCode("no_valid_lines", "job", None, "No line is a valid prompt: the error file lists why for each."),
    ErrorCode("not_utf8", "job", None, "The file is not UTF-8 text (compressed or binary?)."),
    ErrorCode(
        "too_many_lines",
        "job",
        None,
        "More lines than BATCHINFER_MAX_LINES: split the file or raise the limit.",
    ),
    ErrorCode(
        "cancelled",
        "job",
        None,
        "Cancelled (also each line it cut short): finished lines are kept; resume runs the rest.",
    ),
    ErrorCode(
        "expired",
        "job",
        None,
        "The completion window (expires_at) passed (also each line it cut short); resume runs the rest.",
    ),
    ErrorCode(
        "deadline_exceeded",
        "job",
        None,
        "Past BATCHINFER_JOB_TIMEOUT_S: finished chunks are kept for a resume.",
    ),
    ErrorCode(
        "model_unreachable",
        "job",
        None,
        "Every line failed to connect to the model server: start it, check base_url, resume.",
    ),
    ErrorCode(
        "auth_failed",
        "job",
        None,
        "Stopped early: its first requests all got 401/403 (also each line it cut short): set a valid "
        "key in the variable the model's api_key_env names, then resume.",
    ),
    ErrorCode(
        "model_not_found",
        "job",
        None,
        "Stopped early: its first requests all got 404 (also each line it cut short): fix the model's "
        "model name or base_url, then resume.",
    ),
    ErrorCode(
        "quota_exhausted",
        "job",
        None,
        "Stopped early: the provider's quota is used up (429 insufficient_quota; also each line so "
        "answered or cut short): add credit, then resume.",
    ),
    ErrorCode(
        "certificate_untrusted",
        "job",
        None,
        "Stopped early: its first requests all found the model server's TLS certificate untrusted (also "
        "each line it cut short): set SSL_CERT_FILE or the model's ca_bundle to the CA that signed it, "
        "then resume.",
    ),
    ErrorCode(
        "error_rate_exceeded",
        "job",
        None,
        "More than max_error_rate of its requests failed (also each line it cut short): the error file "
        "says why for each; fix the cause and resume, or raise max_error_rate.",
    ),
    ErrorCode(
        "invalid_table",
        "job",
        None,
        "The Parquet or CSV file cannot be read (corrupt, or a CSV column whose type changes midway).",
    ),
    ErrorCode(
        "invalid_batch_file",
        "job",
        None,
        "/v1: lines of the batch's input file are invalid, so nothing was sent; the batch's errors list "
        "each one: fix them and create the batch again.",
    ),
    ErrorCode("interrupted", "job", None, "A previous serve stopped while the job ran: resume it."),
    ErrorCode("crashed", "job", None, "The process running the job died: resume it."),
    ErrorCode(
        "duplicate_line", "job", None, "A line came back twice from the chunks (a bug): re-run the job."
    ),
    ErrorCode("lost_lines", "job", None, "Chunk results miss lines: re-run the job to redo them."),
    ErrorCode(
        "scaleout_error",
        "job",
        None,
        "Dask misconfigured or unreachable: check BATCHINFER_DASK_ADDRESS and BATCHINFER_SHARED_STORAGE.",
    ),
    ErrorCode(
        "engine_error",
        "job",
        None,
        "The model could not be built or loaded (bad models file entry, missing weights).",
    ),
    ErrorCode(
        "config_error",
        "job",
        None,
        "The environment is unusable (a folder, a Prefect profile, a Prefect API): at the CLI, one line "
        "before anything starts.",
    ),
    # -- one line of the error file -----------------------------------------------------------------
    ErrorCode("invalid_json", "line", None, "The line is not valid JSON."),
    ErrorCode("invalid_utf8", "line", None, "The line is not UTF-8."),
    ErrorCode(
        "line_too_long",
        "line",
        None,
        "Longer than BATCHINFER_MAX_LINE_BYTES: shorten it (attachments by path or uri).",
    ),
    ErrorCode("not_a_list", "line", None, "Not a list of messages (nor a batch line)."),
    ErrorCode("empty_messages", "line", None, "The message list is empty."),
    ErrorCode("invalid_message", "line", None, "A message is not an object, or a field of it is wrong."),
    ErrorCode("missing_role", "line", None, "A message has no role."),
    ErrorCode(
        "unknown_role", "line", None, "A role other than system, developer, user, assistant, tool, ipython."
    ),
    ErrorCode("missing_text", "line", None, "A message has no text (and no attachments, no tool calls)."),
    ErrorCode(
        "invalid_attachment",
        "line",
        None,
        "An attachment lacks attachment_type, data_type or data, or has a wrong one.",
    ),
    ErrorCode("invalid_custom_id", "line", None, "custom_id is not a string."),
    ErrorCode(
        "missing_prompt",
        "line",
        None,
        "A table row's prompt (messages, prompt, or a column its template uses) is null.",
    ),
    ErrorCode(
        "invalid_prompt",
        "line",
        None,
        "A table row's prompt is not a non-empty string, its messages not JSON, or the template "
        "cannot be filled from it.",
    ),
    ErrorCode(
        "invalid_body",
        "line",
        None,
        "A batch line's body lacks its endpoint's prompt (messages, prompt, input).",
    ),
    ErrorCode(
        "unsupported_endpoint",
        "line",
        400,
        "An endpoint a batch cannot run, or one the model's engine does not serve (/v1: at create, 400).",
    ),
    ErrorCode("mismatched_endpoint", "line", None, "Another endpoint than the job's: a job runs one."),
    ErrorCode("unsupported_method", "line", None, "A batch line's method is not POST."),
    ErrorCode(
        "invalid_parameter",
        "line",
        None,
        "A sampling field is malformed (temperature -1, top_logprobs 50, a bad schema).",
    ),
    ErrorCode(
        "unsupported_parameter",
        "line",
        None,
        "A field the engine cannot honour (named, with the engine), or stream: true.",
    ),
    ErrorCode(
        "unsupported_attachment",
        "line",
        None,
        "Media the engine cannot take (video, audio; images on text-only engines).",
    ),
    ErrorCode("unreadable_attachment", "line", None, "An attachment file cannot be read: fix its path."),
    ErrorCode(
        "context_length_exceeded",
        "line",
        None,
        "Prompt plus max_tokens is over the model's context: shorten it or lower max_tokens.",
    ),
    ErrorCode(
        "chat_template_error",
        "line",
        None,
        "The model's chat template refused the conversation (roles out of order?).",
    ),
    ErrorCode("invalid_request", "line", None, "vLLM refused the prompt (its message follows)."),
    ErrorCode(
        "http_<status>",
        "line",
        None,
        "The model server answered this status for good (after retries for 408, 429, 5xx); its message "
        "follows.",
    ),
    ErrorCode(
        "timeout",
        "line",
        None,
        "No answer within timeout_s after every retry: raise timeout_s or check the server.",
    ),
    ErrorCode("connection_error", "line", None, "The model server could not be reached after every retry."),
    ErrorCode(
        "certificate_untrusted",
        "line",
        None,
        "The model server's TLS certificate failed verification (not retried): set SSL_CERT_FILE (or "
        "SSL_CERT_DIR) to its CA's bundle, or the model's ca_bundle.",
    ),
    ErrorCode(
        "bad_response",
        "line",
        None,
        "A 200 that is not the endpoint's answer: check base_url points at an OpenAI-compatible /v1.",
    ),
    ErrorCode(
        "batch_expired",
        "line",
        None,
        "/v1 error file: the request was not run before the completion window passed.",
    ),
    ErrorCode("inference_error", "line", None, "One request failed for good in an engine."),
    # -- an invalid input line of a /v1 batch: Batch.errors.data ------------------------------------
    ErrorCode("invalid_json_line", "batch", None, "The line is not JSON (or not UTF-8)."),
    ErrorCode(
        "missing_required_parameter",
        "batch",
        None,
        "The line is not an object, or lacks custom_id, method, url or body (param names it).",
    ),
    ErrorCode(
        "invalid_request",
        "batch",
        None,
        "A field of the line is wrong (custom_id not a string, method not POST, body not an object), "
        "or its body lacks model or its endpoint's prompt field; line null: input_file_id names no file.",
    ),
    ErrorCode("invalid_url", "batch", None, "The line's url is not the batch's endpoint."),
    ErrorCode("streaming_unsupported", "batch", None, "body.stream is set: remove it."),
    ErrorCode(
        "model_not_found", "batch", None, "body.model is not served here: use a model id the message lists."
    ),
    ErrorCode(
        "model_mismatch", "batch", None, "body.model is another than the batch's: a batch runs one model."
    ),
    ErrorCode("duplicate_custom_id", "batch", None, "An earlier line has this custom_id: make each unique."),
    ErrorCode(
        "line_too_long",
        "batch",
        None,
        "Longer than BATCHINFER_MAX_LINE_BYTES: shorten it, or raise the limit.",
    ),
    # -- raised by batchinfer.client on the caller's side -------------------------------------------
    ErrorCode(
        "client_error",
        "client",
        None,
        "The server refused the call: status_code, field and the server's code tell why.",
    ),
    ErrorCode(
        "unreachable",
        "client",
        None,
        "Nothing answers at BATCHINFER_URL: start batchinfer serve, or fix the URL.",
    ),
    ErrorCode(
        "invalid_response",
        "client",
        None,
        "The server's answer is not what the API promises (a proxy in between?).",
    ),
    ErrorCode("wait_timeout", "client", None, "wait_for_job gave up before the job ended: wait longer."),
    ErrorCode("no_results", "client", None, "read_results of a job that has not ended: wait for it first."),
)


def codes() -> set[str]:
    return {entry.code for entry in ERROR_CODES}
