"""The HTTP transports ``OpenAIEngine`` can post through (its ``http_client`` setting).

A transport does one POST and hands back status, headers and body; it turns its library's timeouts
and connection failures into ``RetryableError``. Everything else (the semaphore, retries, backoff,
``Retry-After``, error records) belongs to the engine, so both transports behave the same.
Build a transport on the event loop that will use it, and close it there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import aiohttp

from batchinfer.engines.configs import HttpClient
from batchinfer.error_codes import ErrorCode

if TYPE_CHECKING:
    import httpx


class RetryableError(Exception):
    """One attempt failed in a way worth retrying; ``code`` names it if retries run out.
    ``refused``: no connection could be made at all (nobody listening), as opposed to one that
    broke during the request; the replica set takes a refusing server out of rotation at once."""

    def __init__(
        self, code: str, reason: str, retry_after: float | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(reason)
        self.code, self.reason, self.retry_after, self.refused = code, reason, retry_after, refused


class Transport(Protocol):
    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Status, headers and body of one POST; ``RetryableError`` on timeout or connection error."""
        ...

    async def aclose(self) -> None: ...


def timed_out(timeout_s: float) -> RetryableError:
    return RetryableError(ErrorCode.timeout, f"no answer within timeout_s={timeout_s}")


def connection_failed(exc: BaseException, *, refused: bool) -> RetryableError:
    return RetryableError(ErrorCode.connection_error, f"{type(exc).__name__}: {exc}", refused=refused)


class AiohttpTransport:
    """``aiohttp.ClientSession``: at most ``max_connections`` sockets, ``timeout_s`` per request in total."""

    def __init__(self, max_connections: int, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with self._session.post(url, data=data, headers=headers) as response:
                return response.status, response.headers, await response.read()
        except TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
            raise timed_out(self._timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise connection_failed(exc, refused=isinstance(exc, aiohttp.ClientConnectorError)) from exc

    async def aclose(self) -> None:
        await self._session.close()


class HttpxTransport:
    """``httpx.AsyncClient``: a pool of ``max_connections``, ``timeout_s`` for each phase."""

    def __init__(self, max_connections: int, timeout_s: float) -> None:
        import httpx  # here, so only those who pick httpx import it

        self._httpx = httpx
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,  # like aiohttp's default: no proxies or .netrc from the environment
        )

    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        httpx = self._httpx
        try:
            response = await self._client.post(url, content=data, headers=headers)
        except httpx.TimeoutException as exc:  # before RequestError: it is one
            raise timed_out(self._timeout_s) from exc
        except httpx.RequestError as exc:  # TransportError, and DecodingError like aiohttp's
            raise connection_failed(exc, refused=isinstance(exc, httpx.ConnectError)) from exc
        return response.status_code, response.headers, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(client: HttpClient, max_connections: int, timeout_s: float) -> Transport:
    """The transport for ``client``; call it on the event loop that will use it."""
    if client == "httpx":
        return HttpxTransport(max_connections, timeout_s)
    if client == "aiohttp":
        return AiohttpTransport(max_connections, timeout_s)
    from batchinfer.engines.native_http import NativeTransport  # it imports this module's errors

    return NativeTransport(max_connections, timeout_s)
