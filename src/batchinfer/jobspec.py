"""A job's vocabulary that every layer shares: the flow's parameters and the names of its RUNNING
phases (the flow sets them; ``control.states`` maps them onto the statuses)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from batchinfer.contract import ErrorShare, Options, Path
from batchinfer.endpoints import Endpoint

PHASE_VALIDATING = "Validating"
PHASE_INFERRING = "Inferring"
PHASE_GATHERING = "Gathering"


class LineChecks(StrEnum):
    """How a job checks its lines before any is sent."""

    seed = "seed"  # each line parsed on its own; a bad one goes to the error file (the seed API's)
    openai = "openai"  # OpenAI's Batch API: its checks on every line; any invalid line fails the job
    openai_lenient = "openai_lenient"  # OpenAI's checks, each invalid line to the error file (/v1, opt-in)


class JobParameters(BaseModel):
    """The flow's parameters: small by design (Prefect caps them at 512 KiB); never the prompts."""

    model: str
    prompt_file: Path
    options: Options = Field(default_factory=Options)
    num_generations: int = Field(default=1, ge=1)
    output_dir: str | None = Field(
        default=None, description="The job's folder: a local path, or an fsspec URL (s3://...) on a store."
    )
    output_url: str | None = Field(
        default=None,
        description="A store (fsspec URL) that holds the job's folder as <output_url>/<job id> "
        "(BATCHINFER_OUTPUT_URL, set by the server that submits it); ignored with output_dir.",
    )
    expires_at: datetime | None = Field(
        default=None, description="When it passes, the job stops and fails `expired`, keeping its work."
    )
    prompt_template: str | None = Field(
        default=None, description="A table's prompts, built from each row's columns: {column}."
    )
    system_prompt: str | None = Field(default=None, description="A system message before each row's.")
    max_error_rate: ErrorShare | None = Field(
        default=None, description="Fail `error_rate_exceeded` past this share of failures."
    )
    endpoint: Endpoint | None = Field(
        default=None,
        description="The endpoint every line must name (an OpenAI batch's); None: the first line's.",
    )
    line_checks: LineChecks = Field(
        default=LineChecks.seed,
        description="seed: each bad line to the error file; openai: OpenAI's batch checks, any invalid "
        "line fails the job before a request is sent; openai_lenient: OpenAI's checks, per line.",
    )
