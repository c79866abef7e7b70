"""What the routes depend on, as ``Annotated`` aliases (FastAPI's full-stack template's style): the
app's job backend as the request's principal may see it, settings and model catalog (set on
``app.state`` by ``create_app``), and the seed's ``job_id`` query parameter parsed into the job's UUID."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Query, Request

from batchinfer.api.openai.ids import BATCH_ID_PREFIX
from batchinfer.control.backend import JobBackend
from batchinfer.control.keys import Principal
from batchinfer.control.ownership import OwnedJobs
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import RequestError
from batchinfer.settings import Settings


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal  # set by create_app's middleware
    return principal


def _backend(request: Request, principal: Annotated[Principal, Depends(_principal)]) -> JobBackend:
    """The jobs this request's key may see: every route's one way to them (``control.ownership``)."""
    return OwnedJobs(request.app.state.backend, principal, request.app.state.quotas)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _catalog(request: Request) -> ModelCatalog:
    catalog: ModelCatalog = request.app.state.catalog
    return catalog


def job_uuid(job_id: str, location: str = "query") -> UUID:
    """The job a ``job_id`` names: a job id, or an OpenAI batch id (``batch_<job id>``)."""
    try:
        return UUID(job_id.removeprefix(BATCH_ID_PREFIX))  # an OpenAI batch id names its job too
    except ValueError:
        raise RequestError(
            f"{job_id!r} is not a job id (a UUID such as submit_job returns).",
            field="job_id",
            location=location,
            code=ErrorCode.invalid_job_id,
        ) from None


def _job_uuid(
    job_id: Annotated[str, Query(description="Unique identifier for the batch inference job.")],
) -> UUID:
    return job_uuid(job_id)


PrincipalDep = Annotated[Principal, Depends(_principal)]
BackendDep = Annotated[JobBackend, Depends(_backend)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CatalogDep = Annotated[ModelCatalog, Depends(_catalog)]
JobIdDep = Annotated[UUID, Depends(_job_uuid)]  # the seed's job_id query parameter, as the job's id
