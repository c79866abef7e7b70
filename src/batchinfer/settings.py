"""Typed settings, in sections (jobs, server, scale-out, limits, security). Read from the environment
(``BATCHINFER_*``, one flat namespace whatever the section) only when ``Settings()`` is built, which
the CLI, the adapter factory and the flow do explicitly; nothing reads them at import time."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "BATCHINFER_"
MiB = 1 << 20
GiB = 1 << 30
# Schemes a `uri` prompt file may use. Not `memory`, `data`, `ftp`, ...: each scheme is a way in.
DEFAULT_URI_SCHEMES = ("file", "http", "https", "s3", "gs", "gcs", "az", "abfs")


def env_name(field: str) -> str:
    """The environment variable that sets the Settings field ``field`` (errors name it)."""
    return f"{ENV_PREFIX}{field.upper()}"


@dataclass(frozen=True)
class Limits:
    """The limits that the pure modules (validation, parsing) enforce, without reading the
    environment themselves. ``Settings.limits()`` builds one; the defaults are the Settings'."""

    max_prompt_file_bytes: int = GiB
    max_line_bytes: int = MiB
    max_lines: int = 1_000_000
    max_num_generations: int = 16
    max_max_tokens: int = 32768


# Prefect's name for its database URL (an older alias, PREFECT_API_DATABASE_CONNECTION_URL, reaches
# it too: Prefect reports a setting under this name however it was given).
PREFECT_DATABASE_URL = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
_NOTHING_SET: Mapping[str, str] = MappingProxyType({})
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # A fresh SQLite database takes 15-25 s to migrate here; Prefect's default waits less.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Prefect records task runs one insert at a time by default; with SQLite that falls
    # behind by about a minute per 1,000 task runs and holds the write lock meanwhile.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # A chunk waiting for a model's concurrency slots (model_limits) is told to retry after
    # up to 30 s by default; slots free up within seconds, so ask again sooner.
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
}


def _empty_is_none(value: Any) -> Any:
    # `BATCHINFER_API_TOKEN=` (empty) must not turn auth on with an empty, guessable token.
    return None if isinstance(value, str) and not value.strip() else value


def _default_home() -> Path:
    return Path.home() / ".batchinfer"


class ChunkedModel(Protocol):
    """A model's config as far as chunking goes (every ``engines.configs`` model is one)."""

    @property
    def default_chunk_size(self) -> int: ...


class _Section(BaseSettings):
    """A group of settings, each read from ``BATCHINFER_<NAME>`` as if the groups were one flat list
    (the variables do not change with the group a setting sits in)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


class JobSettings(_Section):
    """How one job runs: its chunks, threads, defaults, deadline and when it stops early."""

    chunk_size: int | None = Field(
        default=None,
        ge=1,
        description="Prompts per chunk task. Default: what the model's engine wants (100 for local "
        "engines; 8 per in-flight slot for HTTP models: 512 at max_concurrency 64, or at auto with "
        "its default ceiling of 64).",
    )
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
    share_model_limits: bool = Field(
        default=True,
        description="Hold each HTTP model's `max_concurrency` across all jobs and processes with a "
        "Prefect global concurrency limit (`batchinfer-model-<id>`); off: per job process only.",
    )
    deduplicate: bool = Field(
        default=True,
        description="Lines whose requests are identical and deterministic (temperature 0, or a seed) "
        "are sent once, and each gets the answer (marked duplicate_of); false: every line is sent.",
    )
    result_cache_max_bytes: int = Field(
        default=GiB,
        ge=1,
        description="Size cap of the result cache of models with `cache: true` "
        "($BATCHINFER_HOME/result-cache.sqlite3); past it, the answers used least recently go.",
    )
    fail_fast_after: int = Field(
        default=20,
        ge=0,
        description="A job stops (auth_failed, model_not_found, quota_exhausted, "
        "certificate_untrusted) once this many of its first requests failed with 401/403, 404, "
        "insufficient_quota or an untrusted certificate and none succeeded; 0: never.",
    )
    job_timeout_s: float = Field(
        default=24 * 3600,
        gt=0,
        description="Total deadline of one run of a job, in seconds: past it the job submits no more "
        "chunks and fails `deadline_exceeded`, keeping finished chunks for a resume.",
    )

    def chunk_size_for(self, config: ChunkedModel) -> int:
        """The chunk size a job of ``config`` runs with: this setting when given, else the model's."""
        return self.chunk_size or config.default_chunk_size


class ServerSettings(_Section):
    """``serve`` and ``run``: the runner, the local Prefect server, /v1's options, notifications."""

    max_concurrent_jobs: int = Field(
        default=4, ge=1, description="Flow runs the `serve` runner executes at once."
    )
    runner_poll_seconds: float = Field(
        default=0.5, gt=0, description="How often the `serve` runner looks for new jobs."
    )
    fork_flow_runs: bool = Field(
        default=False,
        description="Opt-in: start each of the `serve` runner's flow runs by forking a process that has "
        "already imported Prefect and the flow (about 1 s sooner), on the Prefect releases it was "
        "written for (3.7 to 3.9); off: Prefect's own way, public API only.",
    )
    local_server_idle_s: float = Field(
        default=1800,
        ge=0,
        description="`batchinfer run` without PREFECT_API_URL keeps a local Prefect server warm for "
        "later runs: it stops after this many seconds without a job (`batchinfer server stop` stops "
        "it now); 0: a temporary server for each run, stopped with it.",
    )
    # The OpenAI-compatible API (/v1): OpenAI's semantics unless an operator opts into an extension.
    openai_any_completion_window: bool = Field(
        default=False,
        description="Extension: /v1/batches takes completion windows other than OpenAI's '24h' "
        "('90m', '30s', '2d'); off: any other is a 400, as at OpenAI.",
    )
    openai_invalid_lines: Literal["fail_batch", "error_file"] = Field(
        default="fail_batch",
        description="What a /v1 batch does with an invalid input line unless its create says "
        "(`invalid_lines`, an extension): fail_batch, OpenAI's (the batch fails while validating, "
        "each line in its errors); error_file (each goes to the error file, the rest run).",
    )
    webhook_url: SecretStr | None = Field(
        default=None,
        description="When set, `serve` makes the Prefect server POST each finished job's id and state "
        "to this URL (a Prefect automation named batchinfer-job-finished; see notifications.py).",
    )
    webhook_token: SecretStr | None = Field(
        default=None,
        description="Sent with each webhook call as `Authorization: Bearer <token>`.",
    )

    _empty_webhook_is_none = field_validator("webhook_url", "webhook_token", mode="before")(_empty_is_none)


class ScaleOutSettings(_Section):
    """Beyond one machine: a work pool's workers, a store for job files, a Dask cluster for chunks."""

    work_pool: str | None = Field(
        default=None,
        description="`serve` hands its jobs to the workers of this Prefect work pool (a process pool "
        "is made if there is none) instead of running them itself; its workers run on any machine that "
        "reaches the Prefect API (`prefect worker start --pool NAME`). Pair it with BATCHINFER_OUTPUT_URL.",
    )
    output_url: str | None = Field(
        default=None,
        description="A store (fsspec URL: s3://bucket/prefix, gs://, az://, file:///mnt/shared) that holds "
        "each job's files as <url>/<job_id>, so that any machine that can read it answers for the job "
        "(the server that submits a job sets it; a job's own output_url or --output-dir wins). Unset: "
        "the disk of the machine that runs the job.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Dask scheduler (`tcp://host:8786`) that runs every job's chunk tasks, through "
        "prefect-dask's DaskTaskRunner. Unset: chunk tasks run on threads of the job's process. "
        "Requires BATCHINFER_SHARED_STORAGE.",
    )
    shared_storage: str | None = Field(
        default=None,
        description="fsspec URL (`s3://bucket/batchinfer`, `file:///mnt/shared/batchinfer`) that "
        "the job process and every Dask worker can read and write: chunk inputs and results live "
        "under `<url>/<job_id>/chunks/`. Required when BATCHINFER_DASK_ADDRESS is set.",
    )


class LimitSettings(_Section):
    """The sizes a job may have. Past one, the error names the limit and the variable that raises it."""

    max_prompt_file_bytes: int = Field(
        default=Limits.max_prompt_file_bytes,
        ge=1,
        description="Largest prompt file, in bytes: 413 at submit (raw_bytes, local files), "
        "job failed `file_too_large` at run (remote files).",
    )
    max_line_bytes: int = Field(
        default=Limits.max_line_bytes,
        ge=1,
        description="Longest line, in bytes (without its newline); a longer one becomes that line's "
        "`line_too_long` error and is never held in memory whole.",
    )
    max_lines: int = Field(
        default=Limits.max_lines,
        ge=1,
        description="Most physical lines in a prompt file; more: job failed `too_many_lines`.",
    )
    max_num_generations: int = Field(
        default=Limits.max_num_generations, ge=1, description="Largest num_generations (and `n`)."
    )
    max_max_tokens: int = Field(
        default=Limits.max_max_tokens, ge=1, description="Largest options.max_tokens."
    )

    def frozen(self) -> Limits:
        """These limits for the pure modules (validation, parsing), which read no settings."""
        return Limits(**self.model_dump())


class SecuritySettings(_Section):
    """Who may call the adapter, and where a job may read its prompts from."""

    api_token: SecretStr | None = Field(
        default=None,
        description="When set, every adapter endpoint but /healthz requires "
        "`Authorization: Bearer <token>`. Required to serve on a non-loopback address.",
    )
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=(
            "Directories a `filepath` or `file://` prompt file may live under, separated by "
            f"'{os.pathsep}'. Empty means: the data dir, the working directory and the temp dir."
        ),
    )
    allowed_uri_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_URI_SCHEMES),
        description="URI schemes a `uri` prompt file may use, separated by ','.",
    )
    allow_private_uris: bool = Field(
        default=False,
        description="Allow http(s) prompt-file URIs whose host is loopback, private, link-local or "
        "reserved. Off by default, so a job cannot be used to reach the server's own network.",
    )

    _empty_token_is_none = field_validator("api_token", mode="before")(_empty_is_none)

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p]
        return value

    @field_validator("allowed_uri_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip().lower() for s in value.split(",") if s.strip()]
        return value


SECTIONS: dict[str, type[_Section]] = {
    "jobs": JobSettings,
    "server": ServerSettings,
    "scale_out": ScaleOutSettings,
    "limits": LimitSettings,
    "security": SecuritySettings,
}


class _OwnFieldsEnv(EnvSettingsSource):
    """The environment for ``Settings``' own fields only: each section reads its settings itself,
    so a variable such as ``BATCHINFER_SERVER`` (a URL, say) is not taken for a section's JSON."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in SECTIONS:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(_Section):
    """Every setting, in sections; ``Settings(max_lines=10)`` takes the flat names, as the
    environment does, and puts each into its section."""

    home: Path = Field(
        default_factory=_default_home,
        description="Data dir: job files, staged uploads, model cache, the local Prefect database.",
    )
    models: Path | None = Field(
        default=None, description="Models file (YAML). The embedded default model is always there."
    )
    jobs: JobSettings = Field(default_factory=JobSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    scale_out: ScaleOutSettings = Field(default_factory=ScaleOutSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _OwnFieldsEnv(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _flat_names_into_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, section in SECTIONS.items():
            given = {field: data.pop(field) for field in section.model_fields if field in data}
            if given and name in data:
                raise ValueError(f"give {', '.join(given)} inside {name}, or {name} not at all")
            if given:
                data[name] = section(**given)  # the section's other settings from the environment
        return data

    def roots(self) -> list[Path]:
        """The allowed roots, resolved (symlinks followed) so that containment checks are honest."""
        roots = self.security.allowed_roots or [self.home, Path.cwd(), Path(tempfile.gettempdir())]
        return [Path(r).expanduser().resolve() for r in roots]

    def input_roots(self) -> list[Path]:
        """Where a job may read its prompt file: the allowed roots, plus the staged uploads."""
        return [*self.roots(), self.uploads_dir.resolve()]

    def prefect_home(self, user: Mapping[str, str] = _NOTHING_SET) -> Path:
        """The Prefect home that applies: the user's ``PREFECT_HOME``, else ``<data dir>/prefect``."""
        given = user.get("PREFECT_HOME")
        return Path(given).expanduser() if given else self.home / "prefect"

    def prefect_env(self, user: Mapping[str, str] = _NOTHING_SET) -> dict[str, str]:
        """Defaults for Prefect's environment, for every Prefect this process or its children
        start (``serve``'s server, ``run``'s temporary one): state in the data dir, no telemetry.

        ``user`` is what the user set for Prefect, in any of Prefect's sources, as Prefect reports
        it (see ``cli.prefect_env``): those names are left out, and the database goes into whichever
        Prefect home applies, so the two never disagree."""
        prefect_home = self.prefect_home(user)
        defaults = {**_PREFECT_DEFAULTS, "PREFECT_HOME": str(prefect_home)}
        if not user.get(PREFECT_DATABASE_URL):
            defaults[PREFECT_DATABASE_URL] = f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
        return {name: value for name, value in defaults.items() if not user.get(name)}

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def keys_path(self) -> Path:
        """The server's API keys, stored hashed (``control.keys``)."""
        return self.home / "keys.sqlite3"

    @property
    def result_cache_path(self) -> Path:
        """The answers of models with ``cache: true`` (``pipeline.result_cache``)."""
        return self.home / "result-cache.sqlite3"


def setting_field(name: str) -> FieldInfo:
    """The field behind ``BATCHINFER_<NAME>``, in whichever section it sits (``--help`` describes it)."""
    models: tuple[type[_Section], ...] = (Settings, *SECTIONS.values())
    for model in models:
        if name in model.model_fields and name not in SECTIONS:
            return model.model_fields[name]
    raise KeyError(name)
