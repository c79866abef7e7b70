"""Checks that commands make before they start anything: a port that is free, a Prefect API that
answers. Each failure is one line that names the port or URL and what to do: a ``ConfigError`` for
something given wrong, a ``ServiceUnavailableError`` for a server that is not there."""

from __future__ import annotations

import contextlib
import socket

import httpx

from batchinfer.errors import ConfigError, ServiceUnavailableError

DEFAULT_PREFECT_PORT = 4200
PREFECT_TIMEOUT_S = 5.0  # per attempt; a server that takes longer to answer /health is not usable


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as Prefect and uvicorn bind: SO_REUSEADDR,
    so a port whose old connections linger in TIME_WAIT counts as free)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ConfigError(f"Cannot resolve the host {host!r}; give an IP address or a known name.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_free_port(host: str, port: int, flag: str) -> None:
    if not port_free(host, port):
        raise ConfigError(
            f"Port {port} on {host} is already in use; stop whatever listens there (`lsof -i :{port}` "
            f"shows it), or choose another port with {flag}."
        )


def prefect_port(requested: int | None, host: str = "127.0.0.1") -> int:
    """The port for ``serve``'s own Prefect server: ``requested`` if free (else a refusal), or, when
    none was asked for, 4200 if free, else any free port. Never one that another server holds."""
    if requested is not None:
        if not port_free(host, requested):
            raise ConfigError(
                f"Port {requested} (--prefect-port) is already in use, and serve only ever uses a Prefect "
                "server it started itself. Stop what holds it, choose another --prefect-port, or set "
                f"PREFECT_API_URL=http://127.0.0.1:{requested}/api to use that server on purpose."
            )
        return requested
    if port_free(host, DEFAULT_PREFECT_PORT):
        return DEFAULT_PREFECT_PORT
    return free_port(host)


def check_prefect_api(url: str, hint: str) -> None:
    """Refuse, naming ``url``, unless a Prefect API answers its ``/health`` there; ``hint`` says
    where the URL came from and how to change it."""
    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=PREFECT_TIMEOUT_S)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise ServiceUnavailableError(f"cannot reach the Prefect API at {url} ({reason}); {hint}") from None
    if response.status_code != 200:
        raise ServiceUnavailableError(
            f"{url} answered {response.status_code} to /health, so it is not a Prefect API (its URL "
            f"ends in /api); {hint}"
        )


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the listening socket of ``port`` (the proof that the server on
    that port is the one we started, not another that answers there too)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        connections = psutil.Process(pid).net_connections(kind="tcp")
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)
    return False
