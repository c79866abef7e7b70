"""Typed settings. Read from the environment (``BATCHINFER_*``) only when ``Settings()`` is built,
which the CLI, the adapter factory and the flow do explicitly; nothing reads them at import time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".batchinfer"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHINFER_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home,
        description="Data dir: job files, staged uploads, model cache, the local Prefect database.",
    )
    models: Path | None = Field(
        default=None, description="Models file (YAML). The embedded default model is always there."
    )
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=(
            "Directories a `filepath` or `file://` prompt file may live under, separated by "
            f"'{os.pathsep}'. Empty means: the data dir, the working directory and the temp dir."
        ),
    )
    chunk_size: int = Field(default=100, ge=1, description="Prompts per chunk task.")
    max_parallel_chunks: int | None = Field(
        default=None,
        ge=1,
        description="Chunk tasks run at once in one job; default: what the engine asks for.",
    )
    threads: int = Field(
        default=1,
        ge=1,
        description="CPU threads for local engines (torch) unless a model sets its own.",
    )
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when a job omits it.")

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p]
        return value

    def roots(self) -> list[Path]:
        """The allowed roots, resolved (symlinks followed) so that containment checks are honest."""
        roots = self.allowed_roots or [self.home, Path.cwd(), Path(tempfile.gettempdir())]
        return [Path(r).expanduser().resolve() for r in roots]

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"
