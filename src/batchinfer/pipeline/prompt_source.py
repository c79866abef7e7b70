"""Resolving the contract's ``Path`` (filepath, uri, raw_bytes) to a local prompt file.

Submit time (``check_and_stage``) catches everything that can be known without reading the whole
file and answers with a ``PromptFileError`` naming the field; run time (``fetch``) checks the same
rules again (the file, the settings, or what a host name resolves to may have changed) and brings a
remote file next to the job.

``SourceRules`` are the security boundary for prompt files: local files only under the allowed roots
(resolved, so neither ``..`` nor a symlink leads out), URI schemes only from an allowlist, http(s)
only to public addresses unless allowed (a job must not become a way into the server's own network),
and a size cap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path as LocalPath
from urllib.parse import ParseResult, unquote, urljoin, urlparse

import httpx

from batchinfer.contract import Path, PathType
from batchinfer.engines.http_transports import certificate_error
from batchinfer.engines.network import Network
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, FileTooLargeError, PromptFileError
from batchinfer.pipeline.jobfiles import atomic_write
from batchinfer.settings import DEFAULT_URI_SCHEMES, Limits, Settings, env_name

FIELD = "prompt_file_path"
VALUE_FIELD = f"{FIELD}.value"
HTTP_SCHEMES = frozenset({"http", "https"})
_GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"  # as pipeline.tables reads it; base64 of a Parquet file is raw_bytes too
_BLOCK = 1 << 20
_MAX_REDIRECTS = 5
_HTTP_TIMEOUT_S = 30.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SourceRules:
    """What a prompt file location may be. Built from ``Settings`` wherever a check runs."""

    schemes: frozenset[str] = frozenset(DEFAULT_URI_SCHEMES)
    allow_private: bool = False
    max_bytes: int = Limits.max_prompt_file_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceRules:
        return cls(
            schemes=frozenset(settings.security.allowed_uri_schemes),
            allow_private=settings.security.allow_private_uris,
            max_bytes=settings.limits.max_prompt_file_bytes,
        )


# ---- local files ------------------------------------------------------------------------------


def check_local_file(
    path_text: str, roots: list[LocalPath], field: str = VALUE_FIELD, *, max_bytes: int | None = None
) -> LocalPath:
    """The resolved path if it is an existing, readable file under one of ``roots`` (and, with
    ``max_bytes``, no larger than that)."""
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
    if max_bytes is not None and (size := resolved.stat().st_size) > max_bytes:
        raise FileTooLargeError(_too_large(repr(path_text), size, max_bytes), field=field)
    return resolved


def _too_large(what: str, size: int | None, limit: int) -> str:
    got = f" ({size:,} bytes)" if size is not None else ""
    return (
        f"{what} is larger{got} than the limit of {limit:,} bytes "
        f"({env_name('max_prompt_file_bytes')}); split it into smaller files or raise the limit."
    )


# ---- raw_bytes --------------------------------------------------------------------------------


def decode_raw_bytes(value: str, max_bytes: int = Limits.max_prompt_file_bytes) -> bytes:
    """JSONL text as-is, or base64 of it (or of a Parquet table). JSONL starts with '[' or '{',
    which base64 never does."""
    # Bound the work before decoding: base64 is 4/3 of its content, and text is >= 1 byte a char.
    if len(value) > max_bytes * 4 // 3 + 4:
        raise FileTooLargeError(_too_large("raw_bytes", None, max_bytes), field=VALUE_FIELD)
    stripped = value.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise PromptFileError("raw_bytes is empty; give the JSONL content.", field=VALUE_FIELD)
    if stripped[0] in "[{":
        content = value.encode("utf-8")
    elif value.startswith("\x1f\x8b"):  # gzip bytes pasted into the JSON string as code points
        raise _compressed()
    else:
        try:
            content = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise PromptFileError(
                "raw_bytes is neither JSONL text (starting with '[' or '{') nor valid base64.",
                field=VALUE_FIELD,
            ) from None
        if content.startswith(_GZIP_MAGIC):
            raise _compressed()
    if len(content) > max_bytes:
        raise FileTooLargeError(_too_large("raw_bytes", len(content), max_bytes), field=VALUE_FIELD)
    return content


def _compressed() -> PromptFileError:
    return PromptFileError(
        "raw_bytes is compressed content (gzip): decompress first, then send the JSONL text or its base64.",
        field=VALUE_FIELD,
        code=ErrorCode.compressed_content,
    )


def stage_bytes(content: bytes, uploads_dir: LocalPath) -> LocalPath:
    """Store uploaded content by its hash (idempotent), so flow parameters carry a path, not data."""
    digest = hashlib.sha256(content).hexdigest()
    suffix = ".parquet" if content.startswith(PARQUET_MAGIC) else ".jsonl"  # a name that says what
    target = uploads_dir / f"{digest}{suffix}"
    if not target.exists():
        with atomic_write(target, "wb") as handle:
            handle.write(content)
    return target


# ---- URIs -------------------------------------------------------------------------------------


def display_uri(uri: str) -> str:
    """``uri`` without credentials or query (a presigned URL's signature), for messages that end
    up in job metadata and logs."""
    parsed = urlparse(uri)
    netloc = parsed.netloc.rpartition("@")[2]
    return parsed._replace(netloc=netloc, query="", fragment="").geturl()


def check_uri(uri: str, rules: SourceRules) -> ParseResult:
    """The parsed URI if its scheme is allowed (and an http(s) host is public, unless allowed)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if not scheme or len(scheme) == 1:  # "C:\..." parses with scheme "c"
        raise PromptFileError(
            f"{uri!r} is not a URI but type is 'uri'; use type 'filepath' or a "
            "scheme such as file://, https://, s3://.",
            field=f"{FIELD}.type",
        )
    if scheme not in rules.schemes:
        raise PromptFileError(
            f"URI scheme {scheme!r} is not supported; use one of "
            f"{', '.join(sorted(rules.schemes))} (the allowlist {env_name('allowed_uri_schemes')}).",
            field=VALUE_FIELD,
            code=ErrorCode.scheme_not_allowed,
        )
    if scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise PromptFileError(
            f"{uri!r} names host {parsed.netloc!r}; a file:// URI must be local (file:///path).",
            field=VALUE_FIELD,
        )
    if scheme in HTTP_SCHEMES:
        check_public_host(parsed, rules)
    return parsed


def check_public_host(parsed: ParseResult, rules: SourceRules) -> None:
    """Refuse an http(s) host that is, or resolves to, a loopback, private, link-local or reserved
    address, unless ``rules.allow_private``. A host that does not resolve passes: there is nothing
    to reach, and the download says so."""
    if rules.allow_private:
        return
    shown = display_uri(parsed.geturl())
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:  # a port that is not a number or out of range
        raise PromptFileError(f"{shown!r} has an invalid port.", field=VALUE_FIELD) from None
    if not host:
        raise PromptFileError(f"{shown!r} has no host.", field=VALUE_FIELD)
    for address in _resolve(host, port or 443):
        if not _is_public(address):
            raise PromptFileError(
                f"{shown!r} points to {address}, a {_kind(address)} address, which jobs may not "
                f"reach; use a public host, or set {env_name('allow_private_uris')}=true if this "
                "server should read prompt files from its own network.",
                field=VALUE_FIELD,
                code=ErrorCode.private_address,
            )


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:  # an IP literal (any form inet_aton knows, e.g. "2130706433") needs no DNS
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _unmapped(address: IPAddress) -> IPAddress:
    # "::ffff:127.0.0.1" is 127.0.0.1; Python 3.11 does not classify the mapped form as loopback.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_public(address: IPAddress) -> bool:
    address = _unmapped(address)
    return address.is_global and not address.is_multicast


def _kind(address: IPAddress) -> str:
    address = _unmapped(address)
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "reserved"


# ---- submit and run ---------------------------------------------------------------------------


def check_and_stage(
    path: Path, roots: list[LocalPath], uploads_dir: LocalPath, rules: SourceRules | None = None
) -> Path:
    """Submit-time check. Returns the Path the job will read: raw_bytes becomes a staged filepath."""
    rules = rules or SourceRules()
    if path.type is PathType.raw_bytes:
        staged = stage_bytes(decode_raw_bytes(path.value, rules.max_bytes), uploads_dir)
        return Path(type=PathType.filepath, value=str(staged))
    if path.type is PathType.filepath:
        if "://" in path.value:
            raise PromptFileError(
                f"{path.value!r} is a URI but type is 'filepath'; set type to 'uri'.",
                field=f"{FIELD}.type",
            )
        checked = check_local_file(path.value, roots, max_bytes=rules.max_bytes)
        return Path(type=PathType.filepath, value=str(checked))
    parsed = check_uri(path.value, rules)
    if parsed.scheme.lower() == "file":
        check_local_file(unquote(parsed.path), roots, max_bytes=rules.max_bytes)
    return path


def fetch(
    path: Path, roots: list[LocalPath], staged_input: LocalPath, rules: SourceRules | None = None
) -> LocalPath:
    """Run time: the local file to validate. Local paths are re-checked (the file may have gone)."""
    rules = rules or SourceRules()
    if path.type is PathType.raw_bytes:
        return stage_bytes(decode_raw_bytes(path.value, rules.max_bytes), staged_input.parent)
    if path.type is PathType.filepath:
        return check_local_file(path.value, roots, max_bytes=rules.max_bytes)
    parsed = check_uri(path.value, rules)
    if parsed.scheme.lower() == "file":
        return check_local_file(unquote(parsed.path), roots, max_bytes=rules.max_bytes)
    try:
        if parsed.scheme.lower() in HTTP_SCHEMES:
            _download_http(path.value, staged_input, rules)
        else:
            _download_fsspec(path.value, staged_input, rules.max_bytes)
    except BatchInferError:
        raise
    except Exception as exc:  # any backend error: the message tells the user what failed
        raise PromptFileError(_download_failed(path.value, exc), field=VALUE_FIELD) from exc
    return staged_input


def _download_fsspec(uri: str, target: LocalPath, max_bytes: int) -> None:
    import fsspec  # only when a remote file is used: fsspec brings its protocol backends

    with fsspec.open(uri, "rb") as remote:
        _write_bounded(iter(lambda: remote.read(_BLOCK), b""), target, max_bytes, uri)


def _download_http(uri: str, target: LocalPath, rules: SourceRules) -> None:
    """GET, following redirects by hand so that every hop passes ``check_public_host``: a public
    URL must not redirect a job into the server's own network."""
    url = uri
    network = Network.from_environment()  # the proxy and CA the model clients use, no .netrc
    for _ in range(_MAX_REDIRECTS + 1):
        with _http_client(url, network) as client, client.stream("GET", url) as response:
            if response.is_redirect and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                if urlparse(url).scheme.lower() not in HTTP_SCHEMES:
                    raise PromptFileError(
                        f"{display_uri(uri)!r} redirects to a non-http(s) URL; give the final URL.",
                        field=VALUE_FIELD,
                    )
                check_public_host(urlparse(url), rules)
                continue
            if response.status_code >= 400:  # not httpx's message: it repeats the full URL
                raise PromptFileError(
                    f"Could not download {display_uri(uri)!r}: HTTP {response.status_code} "
                    f"{response.reason_phrase}.",
                    field=VALUE_FIELD,
                )
            _write_bounded(response.iter_bytes(_BLOCK), target, rules.max_bytes, uri)
            return
    raise PromptFileError(
        f"{display_uri(uri)!r} redirects more than {_MAX_REDIRECTS} times; give the final URL.",
        field=VALUE_FIELD,
    )


def _download_failed(uri: str, exc: Exception) -> str:
    failed = f"Could not download {display_uri(uri)!r}"
    if (untrusted := certificate_error(exc)) is not None:
        return (
            f"{failed}: its server's certificate is not trusted ({untrusted.verify_message}); set "
            "SSL_CERT_FILE (or SSL_CERT_DIR) to the CA that signed it, as for a model server."
        )
    return f"{failed}: {type(exc).__name__}: {exc}"


def _http_client(url: str, network: Network) -> httpx.Client:
    """A client for ``url`` through the proxy the environment gives it (httpx takes one per client),
    trusting OpenSSL's store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``); trust_env off: no .netrc."""
    try:
        proxy = network.proxy_for(url)
    except ValueError as exc:  # a socks proxy, say
        raise PromptFileError(
            f"The environment (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY) gives {exc} for "
            f"{display_uri(url)!r}; set an http:// proxy, or add the host to NO_PROXY.",
            field=VALUE_FIELD,
        ) from None
    return httpx.Client(
        timeout=_HTTP_TIMEOUT_S,
        follow_redirects=False,
        trust_env=False,
        verify=network.tls,
        proxy=None if proxy is None else httpx.Proxy(proxy.url, headers=proxy.headers),
    )


def _write_bounded(blocks: Iterable[bytes], target: LocalPath, max_bytes: int, uri: str) -> None:
    """Copy ``blocks`` into ``target`` (atomically), stopping as soon as ``max_bytes`` is passed,
    so that a huge remote file costs at most the limit in disk and time."""
    written = 0
    with atomic_write(target, "wb") as local:
        for block in blocks:
            written += len(block)
            if written > max_bytes:
                raise FileTooLargeError(
                    _too_large(repr(display_uri(uri)), None, max_bytes), field=VALUE_FIELD
                )
            local.write(block)


def local_input(prompt_file: Path) -> LocalPath | None:
    """Where a prompt file is on this machine's disk (a path, a ``file://`` URI); None if remote."""
    if prompt_file.type is PathType.filepath:
        return LocalPath(prompt_file.value)
    parsed = urlparse(prompt_file.value)
    return LocalPath(unquote(parsed.path)) if parsed.scheme.lower() == "file" else None
