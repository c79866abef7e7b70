"""The HTTP adapter: the seed contract over FastAPI. Handlers are thin; errors map to HTTP here only.

Every 4xx has FastAPI's own shape, ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``,
so a client parses our refusals and FastAPI's the same way.

With ``BATCHINFER_API_TOKEN`` set, every path but ``/healthz`` (docs and OpenAPI document included)
requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchinfer import __version__
from batchinfer.api.openai import BATCH_ID_PREFIX, mount_openai_api
from batchinfer.api.submission import prepare_job
from batchinfer.contract import (
    BatchInference,
    JobPage,
    JobStatus,
    MediaAttachment,
    Message,
    SubmitJobRequest,
)
from batchinfer.control.backend import JobBackend
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.errors import BatchInferError, RequestError, UnauthorizedError
from batchinfer.settings import Settings

logger = logging.getLogger(__name__)
BackendFactory = Callable[[], AbstractAsyncContextManager[JobBackend]]
OPEN_PATHS = frozenset({"/healthz"})  # a load balancer's health check carries no token


def _error_response(exc: BatchInferError) -> JSONResponse:
    if isinstance(exc, RequestError):
        loc = [exc.location, *(exc.field.split(".") if exc.field else [])]
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthorizedError) else None
        return JSONResponse(
            status_code=exc.http_status,
            content={"detail": [{"loc": loc, "msg": exc.message, "type": exc.code}]},
            headers=headers,
        )
    status = getattr(exc, "http_status", 500)
    return JSONResponse(status_code=status, content={"detail": exc.message, "type": exc.code})


def _publish_seed_schemas(schema: dict[str, Any]) -> None:
    """Add the seed's schemas that no route references (Message and its parts), so that the
    document carries every schema of the contract under the contract's names."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Message, MediaAttachment):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, model_schema)


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time (no timing side channel)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


# The seed's job_id query parameter, shared by every route that takes one.
JobIdQuery = Annotated[str, Query(description="Unique identifier for the batch inference job.")]


def backend(request: Request) -> JobBackend:
    """The app's job backend (a FastAPI dependency; module-level so annotations resolve)."""
    return request.app.state.backend


def _job_uuid(job_id: str) -> UUID:
    try:
        return UUID(job_id.removeprefix(BATCH_ID_PREFIX))  # an OpenAI batch id names its job too
    except ValueError:
        raise RequestError(
            f"{job_id!r} is not a job id (a UUID such as submit_job returns).",
            field="job_id",
            location="query",
            code="invalid_job_id",
        ) from None


def create_app(settings: Settings, catalog: ModelCatalog, backend_factory: BackendFactory) -> FastAPI:
    """The adapter app. ``backend_factory`` is entered for the app's lifetime (inject any backend)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with backend_factory() as backend:
            app.state.backend = backend
            yield

    app = FastAPI(
        title="Batch Inference API",
        version=__version__,
        description="batchinfer: the seed Batch Inference API, run as Prefect flows.",
        lifespan=lifespan,
    )

    if settings.api_token is not None:
        token = settings.api_token.get_secret_value()

        # A middleware, not a route dependency: it also guards the routes FastAPI adds itself
        # (/docs, /openapi.json) and any route added later, and leaves the OpenAPI document as is.
        @app.middleware("http")
        async def _require_token(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if request.url.path in OPEN_PATHS or bearer_token_matches(
                request.headers.get("authorization"), token
            ):
                return await call_next(request)
            return _error_response(UnauthorizedError())

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body that json.loads raises on with something other than a decode error
        # (nested too deeply: RecursionError; not UTF-8: UnicodeDecodeError) with a bare 400 string.
        # Give it the same shape and status as any other malformed body.
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError | ValueError):
            return _error_response(
                RequestError(
                    "The body cannot be read as JSON (nested too deeply, or not UTF-8); "
                    "send one JSON object in UTF-8.",
                    field="",
                    code="json_invalid",
                )
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(BatchInferError)
    async def _on_batchinfer_error(request: Request, exc: BatchInferError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a traceback on the wire; the log has it.
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            status_code=500,
            content={"detail": "Internal error; see the server log.", "type": "internal"},
        )

    @app.post(
        "/batch_inference/submit_job",
        response_model=BatchInference,
        # A Path that is not there yet is left out, not null: the seed's Path is an object, never null.
        response_model_exclude_none=True,
        summary="Submit a batch inference job",
        description="This endpoint allows clients to submit a batch inference job using a model "
        "and a prompt file.",
    )
    async def submit_job(
        body: SubmitJobRequest, jobs: Annotated[JobBackend, Depends(backend)]
    ) -> BatchInference:
        # Staging raw_bytes and checking files touches the disk: keep it off the event loop.
        params = await anyio.to_thread.run_sync(prepare_job, body, settings, catalog)
        return await jobs.submit(params)

    @app.get(
        "/batch_inference/job_status",
        response_model=BatchInference,
        response_model_exclude_none=True,
        summary="Get status for an already submitted job",
        description="Retrieve the status and details of a previously submitted batch inference job "
        "using its unique job ID.",
    )
    async def job_status(
        jobs: Annotated[JobBackend, Depends(backend)],
        job_id: JobIdQuery,
    ) -> BatchInference:
        return await jobs.status(_job_uuid(job_id))

    @app.post(
        "/batch_inference/resume_job",
        response_model=BatchInference,
        response_model_exclude_none=True,
        summary="Resume a failed, crashed or cancelled job (extension)",
        description="Runs the job again under the same job ID, as the Prefect UI's Retry does. "
        "Chunks that finished before are reused, not sent to the model again. 404 for an unknown "
        "job; 409 for a job that completed or is still running.",
    )
    async def resume_job(
        jobs: Annotated[JobBackend, Depends(backend)],
        job_id: JobIdQuery,
    ) -> BatchInference:
        return await jobs.resume(_job_uuid(job_id))

    @app.post(
        "/batch_inference/cancel_job",
        response_model=BatchInference,
        response_model_exclude_none=True,
        summary="Cancel a job (extension)",
        description="A job that has not started is cancelled at once. A running job stops within "
        "seconds: requests in flight are abandoned, every line already answered is kept, and the "
        "output files are written (the lines cut short go to the error file as `cancelled`). "
        "The job then reads `failed` with `metadata.error.code` `cancelled`; resume_job runs the "
        "cancelled lines. 404 for an unknown job; 409 for a job that has already ended.",
    )
    async def cancel_job(
        jobs: Annotated[JobBackend, Depends(backend)],
        job_id: JobIdQuery,
    ) -> BatchInference:
        return await jobs.cancel(_job_uuid(job_id))

    @app.get(
        "/batch_inference/jobs",
        response_model=JobPage,
        response_model_exclude_none=True,
        summary="List jobs, newest first (extension)",
        description="Paged with `limit` and `offset`; filtered by `status` and `model`.",
    )
    async def list_jobs(
        jobs: Annotated[JobBackend, Depends(backend)],
        status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
        model: Annotated[str | None, Query(description="Only jobs of this model id.")] = None,
        limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 20,
        offset: Annotated[int, Query(ge=0, description="Jobs to skip (for the next page).")] = 0,
    ) -> JobPage:
        return await jobs.list_jobs(status, model, limit, offset)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _publish_seed_schemas(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/models", summary="List the model ids a job may name (extension)")
    async def models() -> dict[str, list[dict[str, str]]]:
        return {"models": [{"id": m.id, "engine": m.engine} for m in catalog.models]}

    mount_openai_api(app, settings, catalog)  # /v1/files, /v1/batches: last, it wraps the handlers
    return app
