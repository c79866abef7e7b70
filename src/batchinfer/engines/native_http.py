"""batchinfer's own HTTP/1.1 client: the ``native`` transport, ``OpenAIEngine``'s default.

Why a client of our own: at thousands of requests a second on a few cores, each request's Python
work in the job's process is what bounds the job, and aiohttp's ``ClientSession`` spends most of
its per-request time on what a batch job never uses (cookies, redirects, tracing, a timeout
object and a multidict of headers per request). This one writes a request in one call and parses
the answer with ``httptools`` (llhttp, the C parser uvicorn serves with): about a third of
aiohttp's CPU per request (``bench/``, docs/performance.md).

What it does: HTTP/1.1 keep-alive over at most ``max_connections`` sockets, TLS for ``https``
URLs, answers of a ``Content-Length``, chunked or gzip/deflate encoded; a kept-alive socket the
server closed while idle is replaced once, at once, as aiohttp and httpx do. Proxies and trusted
certificates as the model's ``network.Network`` says: an ``https`` origin behind a proxy is reached
through a ``CONNECT`` tunnel with TLS started inside it, a plain one with absolute-form requests to
the proxy. All of that is decided when a socket opens (rare: they are kept alive) or once per URL
(the request's head), so a request costs what it did without a proxy. What it does not: redirects
(an OpenAI API answers rather than redirects; a 3xx is an error record, as with httpx), a body
delimited by the server closing the socket (a lost connection instead).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import zlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import httptools

from batchinfer import __version__
from batchinfer.engines.http_transports import connection_failed, timed_out
from batchinfer.engines.network import Network, Proxy

USER_AGENT = f"batchinfer/{__version__} (native HTTP/1.1)"


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    host_header: str  # what ``Host:`` says: the URL's host and its port when not the default

    @property
    def authority(self) -> str:
        """``host:port``, as a ``CONNECT`` names the origin."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _split(url: str) -> tuple[_Origin, str]:
    """The origin a URL's requests go to and the request target (path and query)."""
    parts = httptools.parse_url(url.encode())
    scheme = (parts.schema or b"").decode()
    if scheme not in ("http", "https") or not parts.host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.host.decode()
    port = parts.port or (443 if scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    host_header = shown if parts.port is None else f"{shown}:{port}"
    target = (parts.path or b"/").decode() + (f"?{parts.query.decode()}" if parts.query else "")
    return _Origin(scheme, host, port, host_header), target


class _Target(NamedTuple):
    """Where a URL's requests go, worked out once per URL: the origin (whose sockets they share),
    the proxy on the way, and the start of each request's head."""

    origin: _Origin
    proxy: Proxy | None
    head: str  # request line, Host, User-Agent (and Proxy-Authorization for a forwarded request)

    @classmethod
    def of(cls, url: str, proxy: Proxy | None) -> _Target:
        origin, path = _split(url)
        forwarded = proxy is not None and origin.scheme == "http"  # not tunnelled: the proxy reads it
        target = f"http://{origin.host_header}{path}" if forwarded else path  # absolute-form to a proxy
        head = f"POST {target} HTTP/1.1\r\nHost: {origin.host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
        if forwarded and proxy is not None and proxy.authorization is not None:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        return cls(origin, proxy, head)


class _Headers(Mapping[str, str]):
    """An answer's headers, by name in any case; built into a dict only when first read."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    @functools.cached_property
    def _by_name(self) -> dict[str, str]:
        return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self._raw}

    def __getitem__(self, name: str) -> str:
        return self._by_name[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


class _Connection(asyncio.Protocol):
    """One socket, one request at a time: ``send`` writes a request, its future gets the answer."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[tuple[int, _Headers, bytes]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._encoding = b""
        self.heard = False  # some of an answer arrived on this request (a failure is not a stale socket)
        self.reusable = False  # the last answer was whole and the server keeps the socket open
        self.deadline = 0.0  # the loop time by which the request in flight must be answered

    @property
    def closed(self) -> bool:
        """Closed by us, or by the server (its close or a lost connection closes the transport)."""
        return self._transport is None or self._transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[tuple[int, _Headers, bytes]]:
        assert self._transport is not None
        self.heard = self.reusable = False
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def expire(self) -> None:
        """The request in flight ran out of time: it fails, and the socket, mid-answer, goes."""
        self._fail(TimeoutError())
        self.close()

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.heard = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"the server sent a malformed HTTP answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the server closed the connection before answering"))

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers, self._body, self._encoding = [], [], b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if name.lower() == b"content-encoding":
            self._encoding = value.strip().lower()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        self.reusable = self._parser.should_keep_alive()
        if answer is None or answer.done():  # an answer nobody asked for: the socket is not ours to reuse
            self.reusable = False
            return
        try:
            body = _decoded(b"".join(self._body), self._encoding)
        except zlib.error as exc:
            answer.set_exception(
                ConnectionError(f"the server's {self._encoding.decode()} body is corrupt ({exc})")
            )
            return
        answer.set_result((self._parser.get_status_code(), _Headers(self._headers), body))

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)


def _decoded(body: bytes, encoding: bytes) -> bytes:
    """The body as the server meant it: we ask for no encoding, but a server may use one anyway."""
    if encoding in (b"", b"identity"):
        return body
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return zlib.decompress(body)
    raise zlib.error(f"unsupported Content-Encoding {encoding.decode()!r}")


class _ConnectFailed(Exception):
    """No connection could be made (wraps the OSError; tells it from one lost mid-request)."""


class _TunnelHandshake(asyncio.Protocol):
    """The proxy's answer to our ``CONNECT``: its head, up to the blank line, and nothing after
    (the server speaks first only once TLS has started inside the tunnel)."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._received = b""

    def data_received(self, data: bytes) -> None:
        self._received += data
        if b"\r\n\r\n" in self._received and not self.answer.done():
            self.answer.set_result(self._received)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("the proxy closed the connection"))


class NativeTransport:
    """Sockets kept alive per origin, one per request in flight; ``timeout_s`` per request in total
    (connecting, sending, and the whole answer). It opens as many sockets as requests are in flight
    at once: the engine's replica slots keep that within ``max_connections`` (no second semaphore
    on the hot path).

    Deadlines are kept by one sweeper for every request in flight, not a timer each (a request's
    own ``asyncio.timeout`` cost the loop more than parsing its answer): a request that runs out
    of time fails within a tenth of ``timeout_s`` (at most 1 s) after its deadline."""

    def __init__(self, max_connections: int, timeout_s: float, network: Network) -> None:
        del max_connections  # bounded by the caller, see above
        self._timeout_s = timeout_s
        self._network = network
        self._targets: dict[str, _Target] = {}  # by URL: a model posts to a handful
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target.of(url, self._network.proxy_for(url))
        request = _request_bytes(target.head, data, headers)
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            return await self._exchange(target, request, deadline)
        except TimeoutError as exc:  # before OSError: it is one
            raise timed_out(self._timeout_s) from exc
        except _ConnectFailed as exc:
            raise connection_failed(exc.__cause__ or exc, refused=True) from exc
        except OSError as exc:  # ConnectionError is one
            raise connection_failed(exc, refused=False) from exc

    async def _exchange(
        self, target: _Target, request: bytes, deadline: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        origin = target.origin
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._on(origin, connection, request, deadline)
            except TimeoutError:
                raise
            except OSError:
                if connection.heard:  # it failed while answering: that is this request's failure
                    raise
                break  # the server had closed this kept-alive socket: once more on a new one
        return await self._on(origin, await self._connect(target, deadline), request, deadline)

    async def _on(
        self, origin: _Origin, connection: _Connection, request: bytes, deadline: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        connection.deadline = deadline
        self._busy.add(connection)
        self._keep_deadlines()
        try:
            answer = await connection.send(request)
        except BaseException:  # lost, timed out or cancelled mid-answer: the socket's state is unknown
            connection.close()
            raise
        finally:
            self._busy.discard(connection)
        if connection.reusable and not connection.closed:
            self._idle.setdefault(origin, []).append(connection)
        else:
            connection.close()
        return answer

    async def _connect(self, target: _Target, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:  # a new socket is rare (they are kept alive): its own timer is fine
            return await asyncio.wait_for(self._open(target), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable, the proxy's refusal, an untrusted certificate
            raise _ConnectFailed from exc

    async def _open(self, target: _Target) -> _Connection:
        origin, proxy = target.origin, target.proxy
        tls = self._network.tls if origin.scheme == "https" else None
        loop = asyncio.get_running_loop()
        if proxy is None:
            _, connection = await loop.create_connection(
                _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
            )
            return connection
        if tls is None:  # plain HTTP: the proxy takes the requests themselves (absolute-form)
            _, connection = await loop.create_connection(_Connection, proxy.host, proxy.port)
            return connection
        return await _tunnel(origin, proxy, tls)

    def _keep_deadlines(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Expire the requests past their deadline; runs while any is in flight."""
        loop = asyncio.get_running_loop()
        while self._busy:
            await asyncio.sleep(min(1.0, self._timeout_s / 10))
            now = loop.time()
            for connection in [c for c in self._busy if c.deadline <= now]:
                connection.expire()

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            connection.close()
        self._idle.clear()
        self._busy.clear()


async def _tunnel(origin: _Origin, proxy: Proxy, tls: ssl.SSLContext) -> _Connection:
    """A socket to ``origin`` through ``proxy``'s ``CONNECT`` tunnel, with TLS started inside it:
    the proxy carries bytes it cannot read, and the certificate checked is the model server's."""
    loop = asyncio.get_running_loop()
    raw, handshake = await loop.create_connection(_TunnelHandshake, proxy.host, proxy.port)
    try:
        authority = origin.authority
        fields = "".join(f"{name}: {value}\r\n" for name, value in proxy.headers.items())
        raw.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{fields}\r\n".encode("latin-1"))
        status_line = (await handshake.answer).split(b"\r\n", 1)[0].decode("latin-1")
        status = status_line.split(" ")[1:2]
        if not (status and len(status[0]) == 3 and status[0].startswith("2")):  # any 2xx opens it
            raise ConnectionError(f"the proxy {proxy.url} refused to CONNECT to {authority}: {status_line}")
        connection = _Connection()
        secured = await loop.start_tls(raw, connection, tls, server_hostname=origin.host)
    except BaseException:
        raw.close()
        raise
    assert secured is not None  # None only for a transport closed while starting TLS, which raises
    connection.connection_made(secured)  # start_tls hands the socket over without telling the protocol
    return connection


def _request_bytes(head: str, data: bytes, headers: Mapping[str, str]) -> bytes:
    for name, value in headers.items():  # a line break would smuggle a header (or a request) in
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"the HTTP header {name!r} holds a line break")
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"{head}Content-Length: {len(data)}\r\n{fields}\r\n".encode("latin-1") + data
