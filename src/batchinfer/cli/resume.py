"""``batchinfer resume JOB_ID``, ``cancel JOB_ID`` and ``retry JOB_ID [--all]``: what ``POST
/batch_inference/resume_job``, ``cancel_job`` and ``retry_failed`` do, from a shell.

They talk to the Prefect API directly (the runner and the job do the rest), so they work while the
adapter is down too. Each prints the job's ``BatchInference``; exit 0 when done, 1 when refused.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Literal
from uuid import UUID

import httpx

from batchinfer.cli.prefect_env import apply_prefect_env
from batchinfer.cli.preflight import check_prefect_api
from batchinfer.contract import BatchInference
from batchinfer.errors import BatchInferError
from batchinfer.settings import Settings

# Where `batchinfer serve` runs its Prefect server unless told otherwise (`--prefect-port`).
DEFAULT_PREFECT_API_URL = "http://127.0.0.1:4200/api"


def prefect_api_url(flag: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """``--prefect-api-url``, else ``PREFECT_API_URL``, else the local server of ``batchinfer serve``.

    Never Prefect's ephemeral server: that would start a second server on serve's database."""
    return flag or environ.get("PREFECT_API_URL") or DEFAULT_PREFECT_API_URL


JobAction = Literal["resume", "cancel", "retry", "retry-all"]


def job_action_from_cli(action: JobAction, job_id: str, flag: str | None, settings: Settings) -> int:
    """``flag``: ``--prefect-api-url`` (see ``prefect_api_url``). ``retry-all``: ``retry --all``."""
    try:
        parsed = UUID(job_id)
    except ValueError:
        print(f"error: {job_id!r} is not a job id (a UUID such as submit_job returns).", file=sys.stderr)
        return 2
    apply_prefect_env(settings)  # a PREFECT_API_URL from any of Prefect's sources counts too
    api_url = prefect_api_url(flag)
    check_prefect_api(api_url, _WHERE_IS_SERVE)  # at once: Prefect's client would retry for long
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            job = asyncio.run(_act(action, parsed, settings))
    except BatchInferError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:  # connection refused, DNS, timeouts: the server is not there
        print(_unreachable(api_url, exc), file=sys.stderr)
        return 1
    print(job.model_dump_json(indent=2))
    return 0


_WHERE_IS_SERVE = (
    "is `batchinfer serve` running? Point at its server with --prefect-api-url or PREFECT_API_URL."
)


def _unreachable(api_url: str, exc: Exception) -> str:
    return f"error: cannot reach the Prefect API at {api_url} ({exc}); {_WHERE_IS_SERVE}"


async def _act(action: JobAction, job_id: UUID, settings: Settings) -> BatchInference:
    from batchinfer.control.backend import PrefectJobBackend

    async with PrefectJobBackend(settings.jobs_dir) as jobs:
        if action == "resume":
            return await jobs.resume(job_id)
        if action == "cancel":
            return await jobs.cancel(job_id)
        return await jobs.retry_failed(job_id, every_error=action == "retry-all")
