"""The HTTP transports ``OpenAIEngine`` can post through (its ``http_client`` setting).

A transport does one POST and hands back status, headers and body; it turns its library's timeouts
and connection failures into ``RetryableError``, and a server certificate it could not trust into
``UntrustedCertificate``. Everything else (the semaphore, retries, backoff, ``Retry-After``, error
records) belongs to the engine, so every transport behaves the same. Each takes its proxy and TLS
settings from the model's ``network.Network`` (one seam: the same proxy for the same URL, the same
certificates trusted, whichever library sends). Build a transport on the event loop that will use
it, and close it there.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from batchinfer.engines.configs import HttpClient
from batchinfer.engines.network import Network
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
        """Status, headers and body of one POST; ``RetryableError`` on timeout or connection error,
        ``UntrustedCertificate`` when the server's certificate failed verification."""
        ...

    async def aclose(self) -> None: ...


def timed_out(timeout_s: float) -> RetryableError:
    return RetryableError(ErrorCode.timeout, f"no answer within timeout_s={timeout_s}")


class UntrustedCertificate(Exception):
    """The server's TLS certificate failed verification: no retry fixes that, only trusting its CA
    (or sending to the right host). ``reason`` is OpenSSL's, e.g. unable to get local issuer
    certificate."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def connection_failed(exc: BaseException, *, refused: bool) -> RetryableError | UntrustedCertificate:
    """What a failed connection means to the engine: worth retrying, unless the certificate was
    not trusted (found however deep the library wrapped OpenSSL's error)."""
    untrusted = certificate_error(exc)
    if untrusted is not None:
        return UntrustedCertificate(untrusted.verify_message or str(untrusted))
    return RetryableError(ErrorCode.connection_error, f"{type(exc).__name__}: {exc}", refused=refused)


def certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """OpenSSL's verification error behind ``exc``, however deep a library wrapped it, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):  # before: it is one too
            exc = exc.certificate_error  # OpenSSL's own, with its verify_message
        elif isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        else:
            exc = exc.__cause__ or exc.__context__
    return None


class AiohttpTransport:
    """``aiohttp.ClientSession``: at most ``max_connections`` sockets, ``timeout_s`` per request in
    total; the proxy of each URL passed to each request (``trust_env`` would read the environment a
    second way, and miss the model's own settings)."""

    def __init__(self, max_connections: int, timeout_s: float, network: Network) -> None:
        self._timeout_s = timeout_s
        self._network = network
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=network.tls),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers, via = self._via(url, headers)
        try:
            async with self._session.post(url, data=data, headers=headers, **via) as response:
                return response.status, response.headers, await response.read()
        except TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
            raise timed_out(self._timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise connection_failed(exc, refused=isinstance(exc, aiohttp.ClientConnectorError)) from exc

    def _via(self, url: str, headers: Mapping[str, str]) -> tuple[Mapping[str, str], dict[str, Any]]:
        """The request's headers and its proxy arguments. aiohttp sends ``proxy_headers`` with a
        CONNECT only: a plain request, which the proxy reads itself, carries the credentials in
        its own headers (and a tunnelled one must not, or the model server would read them)."""
        proxy = self._network.proxy_for(url)
        if proxy is None:
            return headers, {}
        if url.startswith("https:"):
            return headers, {"proxy": proxy.url, "proxy_headers": proxy.headers}
        return {**headers, **proxy.headers}, {"proxy": proxy.url}

    async def aclose(self) -> None:
        await self._session.close()


@dataclass(eq=False)
class _HttpxRoute:
    """One URL's ``httpx.AsyncClient`` and its requests in flight; a retired one is closed once
    they are done (closing a client under a TLS handshake raises what httpx does not map)."""

    client: httpx.AsyncClient
    in_flight: int = 0
    retired: bool = False


class HttpxTransport:
    """``httpx.AsyncClient``: a pool of ``max_connections``, ``timeout_s`` for each phase. One
    client per URL the model posts to (a handful: its replicas' endpoints), made at its first
    request with that URL's proxy (httpx takes one per client); none reads the environment itself.

    A URL whose certificate was not trusted gets a fresh client, the old one closed once its
    requests are done: httpcore keeps a CONNECT tunnel whose TLS failed in its pool as a busy
    connection (encode/httpcore#1023), so each such failure would hold a slot for good, and the
    model's other requests would wait for one until they time out."""

    def __init__(self, max_connections: int, timeout_s: float, network: Network) -> None:
        import httpx  # here, so only those who pick httpx import it

        self._httpx = httpx
        self._timeout_s = timeout_s
        self._network = network
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._routes: dict[str, _HttpxRoute] = {}

    def _route_for(self, url: str) -> _HttpxRoute:
        route = self._routes.get(url)
        if route is None:
            httpx = self._httpx
            proxy = self._network.proxy_for(url)
            route = self._routes[url] = _HttpxRoute(
                httpx.AsyncClient(
                    limits=self._limits,
                    timeout=httpx.Timeout(self._timeout_s),
                    verify=self._network.tls,
                    proxy=None if proxy is None else httpx.Proxy(proxy.url, headers=proxy.headers),
                    trust_env=False,  # the network settings are the model's (network.py), read once
                )
            )
        return route

    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        httpx = self._httpx
        route = self._route_for(url)
        route.in_flight += 1
        try:
            response = await route.client.post(url, content=data, headers=headers)
        except httpx.TimeoutException as exc:  # before RequestError: it is one
            raise timed_out(self._timeout_s) from exc
        except httpx.RequestError as exc:  # TransportError, and DecodingError like aiohttp's
            failure = connection_failed(exc, refused=isinstance(exc, httpx.ConnectError))
            if isinstance(failure, UntrustedCertificate) and not route.retired:
                route.retired = True  # see the class docstring
                del self._routes[url]
            raise failure from exc
        finally:
            route.in_flight -= 1
            if route.retired and not route.in_flight:
                await route.client.aclose()
        return response.status_code, response.headers, response.content

    async def aclose(self) -> None:
        for route in self._routes.values():
            await route.client.aclose()


def make_transport(client: HttpClient, max_connections: int, timeout_s: float, network: Network) -> Transport:
    """The transport for ``client``; call it on the event loop that will use it."""
    if client == "httpx":
        return HttpxTransport(max_connections, timeout_s, network)
    if client == "aiohttp":
        return AiohttpTransport(max_connections, timeout_s, network)
    from batchinfer.engines.native_http import NativeTransport  # it imports this module's errors

    return NativeTransport(max_connections, timeout_s, network)
