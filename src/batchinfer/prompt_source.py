"""Resolving the contract's ``Path`` (filepath, uri, raw_bytes) to a local prompt file.

Submit time (``check_and_stage``) catches everything that can be known without reading the whole
file and answers with a ``PromptFileError`` naming the field; run time (``fetch``) brings a remote
file next to the job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
from pathlib import Path as LocalPath
from urllib.parse import unquote, urlparse

from batchinfer.contract import Path, PathType
from batchinfer.errors import PromptFileError
from batchinfer.jobfiles import atomic_write

REMOTE_SCHEMES = frozenset({"http", "https", "s3", "gs", "gcs", "az", "abfs", "memory"})
FIELD = "prompt_file_path"


def check_local_file(path_text: str, roots: list[LocalPath], field: str = f"{FIELD}.value") -> LocalPath:
    """The resolved path if it is an existing, readable file under one of ``roots``."""
    if not path_text:
        raise PromptFileError("The file path is empty; give an absolute path.", field=field)
    path = LocalPath(path_text).expanduser()
    if not path.is_absolute():
        raise PromptFileError(
            f"{path_text!r} is relative; give an absolute path (the server's working directory "
            "is not yours).",
            field=field,
        )
    resolved = path.resolve()  # follows symlinks, so a link cannot lead out of the roots
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PromptFileError(
            f"{path_text!r} is outside the allowed roots ({', '.join(map(str, roots))}); move the "
            "file under one of them or add its directory to BATCHINFER_ALLOWED_ROOTS.",
            field=field,
        )
    if not resolved.exists():
        raise PromptFileError(f"No file at {path_text!r}; check the path.", field=field)
    if not resolved.is_file():
        raise PromptFileError(f"{path_text!r} is not a regular file.", field=field)
    if not os.access(resolved, os.R_OK):
        raise PromptFileError(
            f"{path_text!r} is not readable by the server; fix its permissions.", field=field
        )
    return resolved


def decode_raw_bytes(value: str) -> bytes:
    """JSONL text as-is, or base64 of it. JSONL starts with '[' or '{', which base64 never does."""
    stripped = value.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise PromptFileError("raw_bytes is empty; give the JSONL content.", field=f"{FIELD}.value")
    if stripped[0] in "[{":
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PromptFileError(
            "raw_bytes is neither JSONL text (starting with '[' or '{') nor valid base64.",
            field=f"{FIELD}.value",
        ) from None


def stage_bytes(content: bytes, uploads_dir: LocalPath) -> LocalPath:
    """Store uploaded content by its hash (idempotent), so flow parameters carry a path, not data."""
    digest = hashlib.sha256(content).hexdigest()
    target = uploads_dir / f"{digest}.jsonl"
    if not target.exists():
        with atomic_write(target, "wb") as handle:
            handle.write(content)
    return target


def check_and_stage(path: Path, roots: list[LocalPath], uploads_dir: LocalPath) -> Path:
    """Submit-time check. Returns the Path the job will read: raw_bytes becomes a staged filepath."""
    if path.type is PathType.raw_bytes:
        staged = stage_bytes(decode_raw_bytes(path.value), uploads_dir)
        return Path(type=PathType.filepath, value=str(staged))
    if path.type is PathType.filepath:
        if "://" in path.value:
            raise PromptFileError(
                f"{path.value!r} is a URI but type is 'filepath'; set type to 'uri'.",
                field=f"{FIELD}.type",
            )
        return Path(type=PathType.filepath, value=str(check_local_file(path.value, roots)))
    parsed = urlparse(path.value)
    if not parsed.scheme or len(parsed.scheme) == 1:  # "C:\..." parses with scheme "c"
        raise PromptFileError(
            f"{path.value!r} is not a URI but type is 'uri'; use type 'filepath' or a "
            "scheme such as file://, https://, s3://.",
            field=f"{FIELD}.type",
        )
    if parsed.scheme == "file":
        check_local_file(unquote(parsed.path), roots)
        return path
    if parsed.scheme not in REMOTE_SCHEMES:
        raise PromptFileError(
            f"URI scheme {parsed.scheme!r} is not supported; use one of "
            f"file, {', '.join(sorted(REMOTE_SCHEMES))}.",
            field=f"{FIELD}.value",
        )
    return path


def fetch(path: Path, roots: list[LocalPath], staged_input: LocalPath) -> LocalPath:
    """Run time: the local file to validate. Local paths are re-checked (the file may have gone)."""
    if path.type is PathType.raw_bytes:
        return stage_bytes(decode_raw_bytes(path.value), staged_input.parent)
    if path.type is PathType.filepath:
        return check_local_file(path.value, roots)
    parsed = urlparse(path.value)
    if parsed.scheme == "file":
        return check_local_file(unquote(parsed.path), roots)
    import fsspec  # only when a remote file is used: fsspec brings its protocol backends

    try:
        with fsspec.open(path.value, "rb") as remote, atomic_write(staged_input, "wb") as local:
            shutil.copyfileobj(remote, local)
    except PromptFileError:
        raise
    except Exception as exc:  # any backend error: the message tells the user what failed
        raise PromptFileError(
            f"Could not download {path.value!r}: {type(exc).__name__}: {exc}",
            field=f"{FIELD}.value",
        ) from exc
    return staged_input
