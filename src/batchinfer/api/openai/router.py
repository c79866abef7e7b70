"""The /v1 routes, and ``mount_openai_api``, which adds them to the adapter app.

Handlers read their bodies themselves (JSON, multipart) rather than through FastAPI's models, so that
every refusal has OpenAI's error shape and status, and so that the app starts even where
python-multipart (needed only to read an upload) is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchinfer.api.deps import BackendDep, PrincipalDep
from batchinfer.api.openai.batches import BatchService
from batchinfer.api.openai.errors import (
    OpenAIError,
    from_batchinfer_error,
    openai_error_response,
)
from batchinfer.api.openai.files import PURPOSES, Clock, FileStore
from batchinfer.api.openai.records import StoredFile
from batchinfer.api.openai.schemas import Batch, ExpiresAfter, FileDeleted, FileObject, Page
from batchinfer.api.openai.store import Store, adopt_json_records
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, FileTooLargeError
from batchinfer.settings import Settings

PREFIX = "/v1"
_FORM_SLACK = 64 * 1024  # multipart boundaries and the purpose field around the file's bytes
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def _service(request: Request, principal: PrincipalDep) -> BatchService:
    """The /v1 service as the request's key may use it: its files and batches only (an admin's: all)."""
    service: BatchService = request.app.state.openai_batches
    return service.for_principal(principal)


ServiceDep = Annotated[BatchService, Depends(_service)]
router = APIRouter(prefix=PREFIX, tags=["OpenAI-compatible (extension)"])


@router.post("/files", summary="Upload a file (multipart: file, purpose, optional expires_after)")
async def upload_file(request: Request, service: ServiceDep) -> FileObject:
    limit = service.settings.limits.max_prompt_file_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + _FORM_SLACK:
        raise _too_large(limit)
    try:
        form = await request.form(max_files=1, max_fields=8)
    except AssertionError as exc:  # Starlette's way of saying python-multipart is missing
        raise OpenAIError(500, f"File uploads are unavailable on this server: {exc}") from None
    except Exception as exc:  # a malformed multipart body
        raise OpenAIError(400, f"Send multipart/form-data with 'file' and 'purpose': {exc}") from None
    try:
        upload, purpose = _upload_parts(form)
        expiry = _expires_after(form)
        stored = await anyio.to_thread.run_sync(_store, service, upload, purpose, limit, expiry)
    finally:
        await form.close()
    return stored.public()


def _upload_parts(form: FormData) -> tuple[UploadFile, str]:
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise OpenAIError(400, "Missing the 'file' part (the file's bytes).", param="file")
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise OpenAIError(
            400, f"'purpose' is {purpose!r}; use one of {', '.join(sorted(PURPOSES))}.", param="purpose"
        )
    return upload, purpose


def _expires_after(form: FormData) -> int | None:
    """``expires_after[anchor]`` and ``expires_after[seconds]``, as the SDK sends them: the file's
    life in seconds after it is made (None: it lasts until deleted)."""
    parts = {key: form.get(f"expires_after[{key}]") for key in ("anchor", "seconds")}
    if all(value is None for value in parts.values()):
        return None
    try:
        return ExpiresAfter.model_validate(parts).seconds
    except ValidationError as exc:
        first = exc.errors()[0]
        param = "expires_after." + ".".join(str(p) for p in first["loc"])
        raise OpenAIError(
            400, f"Invalid '{param}': {first['msg']}.", param=param, code=ErrorCode.invalid_value
        ) from None


def _store(
    service: BatchService, upload: UploadFile, purpose: str, limit: int, expiry: int | None
) -> StoredFile:
    try:
        chunks = iter(lambda: upload.file.read(1 << 20), b"")
        return service.upload(upload.filename or "upload.jsonl", purpose, chunks, limit, expiry)
    except FileTooLargeError:
        raise _too_large(limit) from None


@router.get("/files", summary="List files, newest first")
async def list_files(
    service: ServiceDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> Page[FileObject]:
    return await service.files_page(purpose, after, limit, order == "asc")


@router.get("/files/{file_id}", summary="Retrieve a file's File object")
async def retrieve_file(service: ServiceDep, file_id: str) -> FileObject:
    return (await service.file(file_id)).public()


@router.get("/files/{file_id}/content", summary="A file's bytes")
async def file_content(service: ServiceDep, file_id: str) -> Response:
    stored = await service.file(file_id)
    return FileResponse(service.files.path(stored.id), media_type="application/octet-stream")


@router.delete("/files/{file_id}", summary="Delete a file")
async def delete_file(service: ServiceDep, file_id: str) -> FileDeleted:
    await service.delete_file(file_id)
    return FileDeleted(id=file_id)


@router.post("/batches", summary="Create a batch: a job of the batch-inference flow")
async def create_batch(request: Request, service: ServiceDep, backend: BackendDep) -> Batch:
    try:
        payload = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise OpenAIError(400, "The body is not JSON; send one JSON object.") from None
    return await service.create(backend, payload)


@router.get("/batches", summary="List batches, newest first")
async def list_batches(
    service: ServiceDep,
    backend: BackendDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[Batch]:
    return await service.list_batches(backend, after, limit)


@router.get("/batches/{batch_id}", summary="Retrieve a batch")
async def retrieve_batch(service: ServiceDep, backend: BackendDep, batch_id: str) -> Batch:
    return await service.retrieve(backend, batch_id)


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(service: ServiceDep, backend: BackendDep, batch_id: str) -> Batch:
    return await service.cancel(backend, batch_id)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The file is over the limit of {limit} bytes (BATCHINFER_MAX_PROMPT_FILE_BYTES).",
        param="file",
        code=ErrorCode.file_too_large,
    )


def mount_openai_api(
    app: FastAPI,
    settings: Settings,
    catalog: ModelCatalog,
    clock: Clock = time.time,
) -> None:
    """Serve /v1/files and /v1/batches on ``app``, answering errors under /v1 in OpenAI's shape.
    Call it last in ``create_app``: it wraps the app's own error handlers for /v1 paths.
    ``clock`` tells the files when they expire."""
    store = Store(settings.home / "openai.sqlite3")
    adopt_json_records(store, settings.home / "files", settings.home / "batches")
    files = FileStore(settings.home / "files", store, clock)
    app.state.openai_batches = BatchService(settings, catalog, files, store)
    app.include_router(router)

    async def on_openai_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenAIError)
        return openai_error_response(exc)

    app.add_exception_handler(OpenAIError, on_openai_error)
    for kind, convert in _V1_CONVERSIONS.items():
        previous = app.exception_handlers.get(kind)
        if previous is not None:
            app.add_exception_handler(kind, _for_v1(convert, previous))


def _for_v1(convert: Callable[[Any], OpenAIError], previous: Handler) -> Handler:
    """``previous`` outside /v1; OpenAI's error shape under it."""

    async def handler(request: Request, exc: Any) -> Response:
        if request.url.path.startswith(PREFIX + "/"):
            return openai_error_response(convert(exc))
        answer = previous(request, exc)
        return answer if isinstance(answer, Response) else await answer

    return handler


def _from_validation(exc: RequestValidationError) -> OpenAIError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = str(first["loc"][-1]) if first["loc"] else None
    return OpenAIError(400, f"{param or 'request'}: {first['msg']}.", param=param)


def _from_http(exc: StarletteHTTPException) -> OpenAIError:
    return OpenAIError(exc.status_code, str(exc.detail))


_V1_CONVERSIONS: dict[type[Exception], Callable[[Any], OpenAIError]] = {
    BatchInferError: from_batchinfer_error,
    RequestValidationError: _from_validation,
    StarletteHTTPException: _from_http,
}
