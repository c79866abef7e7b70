"""A job's vocabulary that every layer shares: the flow's parameters and the names of its RUNNING
phases (the flow sets them; ``control.states`` maps them onto the statuses)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from batchinfer.contract import ErrorShare, Options, Path
from batchinfer.endpoints import Endpoint

PHASE_VALIDATING = "Validating"
PHASE_INFERRING = "Inferring"
PHASE_GATHERING = "Gathering"


class JobParameters(BaseModel):
    """The flow's parameters: small by design (Prefect caps them at 512 KiB); never the prompts."""

    model: str
    prompt_file: Path
    options: Options = Field(default_factory=Options)
    num_generations: int = Field(default=1, ge=1)
    output_dir: str | None = None
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
