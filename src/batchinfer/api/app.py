"""The HTTP adapter: the seed contract over FastAPI. Handlers are thin; errors map to HTTP here only.

Every 4xx has FastAPI's own shape, ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``,
so a client parses our refusals and FastAPI's the same way.

Who makes each request is decided here too, by a middleware (so that it also guards the routes
FastAPI adds itself, /docs and /openapi.json, and any added later). A key is accepted as
``Authorization: Bearer <key>`` and as ``x-api-key: <key>``: one that ``batchinfer keys create`` made
(``control.keys``; looked up at each request, so a revoked key is refused at once), or
``BATCHINFER_API_TOKEN``, an admin key. With neither keys nor a token the server is open. Every
route reaches jobs and files as ``request.state.principal`` (``control.ownership``, ``api.openai``).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchinfer import __version__
from batchinfer.api import routes
from batchinfer.api.openai.files import Clock
from batchinfer.api.openai.router import mount_openai_api
from batchinfer.contract import (
    MediaAttachment,
    Message,
)
from batchinfer.control.backend import JobBackend
from batchinfer.control.keys import OPEN, KeyStore, Principal
from batchinfer.control.ownership import QuotaBook
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, RequestError, UnauthorizedError
from batchinfer.settings import Settings

logger = logging.getLogger(__name__)
BackendFactory = Callable[[], AbstractAsyncContextManager[JobBackend]]
OPEN_PATHS = frozenset({"/healthz"})  # a load balancer's health check carries no key
# BATCHINFER_API_TOKEN is the server's own admin credential: what it makes belongs to no key
# (admins see it; other keys do not), and it has no quota.
TOKEN_PRINCIPAL = Principal(owner=None, admin=True)


def _error_response(exc: BatchInferError) -> JSONResponse:
    if isinstance(exc, RequestError):
        loc = [exc.location, *(exc.field.split(".") if exc.field else [])]
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthorizedError) else None
        return JSONResponse(
            status_code=exc.http_status,
            content={"detail": [{"loc": loc, "msg": exc.message, "type": exc.code}]},
            headers=headers,
        )
    return JSONResponse(status_code=exc.http_status, content={"detail": exc.message, "type": exc.code})


def _publish_seed_schemas(schema: dict[str, Any]) -> None:
    """Add the seed's schemas that no route references (Message and its parts), so that the
    document carries every schema of the contract under the contract's names."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Message, MediaAttachment):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, model_schema)


def given_key(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``x-api-key: <key>``."""
    scheme, _, bearer = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip()
    return request.headers.get("x-api-key") or None


def principal_of(key: str | None, token: str | None, keys: KeyStore) -> Principal | None:
    """Whom ``key`` names: the token's admin (compared in constant time), a key's owner, or
    nobody (None: no key, an unknown one, a revoked one)."""
    if key is None:
        return None
    if token is not None and hmac.compare_digest(key.encode(), token.encode()):
        return TOKEN_PRINCIPAL
    record = keys.authenticate(key)
    return None if record is None else Principal(owner=record.name, admin=record.admin, quota=record.quota)


def create_app(
    settings: Settings, catalog: ModelCatalog, backend_factory: BackendFactory, clock: Clock = time.time
) -> FastAPI:
    """The adapter app. ``backend_factory`` is entered for the app's lifetime (inject any backend);
    ``clock`` is what /v1 files expire by."""

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
    app.state.settings, app.state.catalog = settings, catalog
    keys = KeyStore(settings.keys_path)
    app.state.quotas = QuotaBook(keys, settings.jobs.default_max_tokens)
    token = settings.security.api_token
    _require_keys(app, token.get_secret_value() if token else None, keys)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(BatchInferError, _on_batchinfer_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.include_router(routes.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # /v1/files, /v1/batches: last, it wraps the handlers.
    mount_openai_api(app, settings, catalog, clock=clock)
    return app


def _require_keys(app: FastAPI, token: str | None, keys: KeyStore) -> None:
    """Every path but ``OPEN_PATHS`` needs a valid key once there is a token or any key."""

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.principal = OPEN
        if request.url.path not in OPEN_PATHS:
            found, guarded = await anyio.to_thread.run_sync(_look_up, given_key(request), token, keys)
            if found is None and guarded:
                return _error_response(UnauthorizedError())
            request.state.principal = found or OPEN
        return await call_next(request)


def _look_up(key: str | None, token: str | None, keys: KeyStore) -> tuple[Principal | None, bool]:
    """The key's principal, and whether the server asks for one at all."""
    found = principal_of(key, token, keys)
    return found, found is not None or token is not None or keys.any_keys()


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    # FastAPI answers a body that json.loads raises on with something other than a decode error
    # (nested too deeply: RecursionError; not UTF-8: UnicodeDecodeError) with a bare 400 string.
    # Give it the same shape and status as any other malformed body.
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError | ValueError):
        return _error_response(
            RequestError(
                "The body cannot be read as JSON (nested too deeply, or not UTF-8); "
                "send one JSON object in UTF-8.",
                field="",
                code=ErrorCode.json_invalid,
            )
        )
    return await http_exception_handler(request, exc)


async def _on_batchinfer_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchInferError)
    return _error_response(exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Never a traceback on the wire; the log has it.
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        status_code=500, content={"detail": "Internal error; see the server log.", "type": "internal"}
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _publish_seed_schemas(schema)
        app.openapi_schema = schema
    return app.openapi_schema
