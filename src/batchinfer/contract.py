"""The wire contract: pydantic models for every schema in ``contract/batch_inference_api.yaml``
(the seed's own, vendored).

Names and fields follow the seed exactly so that the adapter's OpenAPI document carries the seed's
schemas under the seed's names. Extensions are compatible: extra optional fields only.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# A share of a job's requests, from 0 to 1: the ``max_error_rate`` of a request, a job or a model.
ErrorShare = Annotated[float, Field(ge=0, le=1)]


class MediaAttachmentType(str, Enum):
    """Type of media attachment."""

    image = "image"
    video = "video"
    audio = "audio"
    text = "text"


class MediaAttachmentDataType(str, Enum):
    """Data type of the media attachment."""

    raw_bytes = "raw_bytes"
    filepath = "filepath"
    uri = "uri"


class MediaAttachment(BaseModel):
    attachment_type: MediaAttachmentType | None = None
    data_type: MediaAttachmentDataType | None = None
    data: str | None = None


class Message(BaseModel):
    """One chat message. Unknown fields are kept, so a line round-trips unchanged."""

    model_config = ConfigDict(extra="allow")

    role: str | None = None
    text: str | None = None
    attachments: list[MediaAttachment] | None = None
    eot: bool | None = Field(default=None, description="End of transmission flag.")
    tool_call: bool | None = Field(
        default=None, description="Indicates if it's a tool call - builtin, custom, or ipython."
    )
    is_complete: bool | None = Field(
        default=None, description="For streaming, indicates if the message is complete."
    )
    is_header_complete: bool | None = Field(
        default=None,
        description="For streaming, indicates if the header of the message is complete.",
    )
    metadata: dict[str, Any] | None = Field(default=None, description="Additional metadata as JSON.")


class PathType(str, Enum):
    """Data Type of the path."""

    raw_bytes = "raw_bytes"
    filepath = "filepath"
    uri = "uri"


class Path(BaseModel):
    """A file location: a local path, a URI, or the content itself (``raw_bytes``)."""

    value: str = Field(description="The path value.")
    type: PathType = Field(description="Data Type of the path.")


class Options(BaseModel):
    """Sampling options. Every field is optional; the server's defaults apply when left out."""

    model_config = ConfigDict(extra="forbid")

    logprobs: bool | None = Field(default=None, description="Return the log-probability of each token.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate, >= 1.")
    temperature: float | None = Field(default=None, ge=0, description="Sampling temperature, >= 0.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus mass, in (0, 1].")


class SubmitJobRequest(BaseModel):
    """Body of ``POST /batch_inference/submit_job``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="The model identifier to be used for inference.")
    prompt_file_path: Path = Field(
        description="Path to a JSONL file where each line is a JSON-encoded list of messages."
    )
    options: Options | None = None
    num_generations: int | None = Field(default=None, ge=1, description="Number of generations to produce.")
    # Extensions (compatible: optional): prompts built from a table prompt file's columns.
    prompt_template: str | None = Field(
        default=None,
        description="Extension, for a Parquet or CSV prompt file: each row's prompt, built from its "
        'columns, str.format-style with named fields ("Summarise in one line: {abstract}").',
    )
    system_prompt: str | None = Field(
        default=None,
        description="Extension, for a Parquet or CSV prompt file: a system message sent before each "
        "row's prompt.",
    )
    max_error_rate: ErrorShare | None = Field(
        default=None,
        description="Extension: the job stops and fails `error_rate_exceeded` once more than this share "
        "of its requests failed (judged after 100 requests, or at the end). Default: the model's "
        "`max_error_rate` in the models file, else none.",
    )
    output_url: str | None = Field(
        default=None,
        description="Extension: a store (an fsspec URL: s3://bucket/prefix, gs://, az://, file://) that "
        "holds the job's files as <output_url>/<job_id>, readable from any machine that can read it. "
        "Default: the server's BATCHINFER_OUTPUT_URL, else the server's disk.",
    )


class JobStatus(str, Enum):
    """Current status of the job."""

    validating = "validating"
    running = "running"
    completed = "completed"
    failed = "failed"


class BatchInference(BaseModel):
    job_id: str = Field(description="ID provided by the API for the job.")
    created: datetime = Field(description="Timestamp when the job was created.")
    status: JobStatus = Field(description="Current status of the job.")
    input_file_path: Path | None = None
    success_file_path: Path | None = None
    error_file_path: Path | None = None
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Additional metadata related to the job."
    )


# -- Extensions (not in the seed; compatible additions) -------------------------------------------


class JobPage(BaseModel):
    """One page of ``GET /batch_inference/jobs``, newest first."""

    data: list[BatchInference] = Field(description="The jobs on this page.")
    total: int = Field(description="Jobs matching the filters, on all pages.")
    limit: int = Field(description="Page size asked for.")
    offset: int = Field(description="How many matching jobs come before this page.")
    has_more: bool = Field(description="Whether a page follows (ask again with offset + limit).")


class RetryFailedRequest(BaseModel):
    """The body of ``POST /batch_inference/retry_failed``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    job_id: str = Field(
        description="The job whose failed lines run again (it must have ended); an OpenAI batch's id "
        "names its job too."
    )
    every_error: bool = Field(
        default=False,
        alias="all",
        description="Every line whose inference failed, not only the retryable ones (timeouts, 408, "
        "429, 5xx, connection errors). Lines the prompt file got wrong are never retried.",
    )
