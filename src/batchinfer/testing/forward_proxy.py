"""A forward proxy on 127.0.0.1, for tests of clients behind one: it counts what it carried.

An ``https`` request reaches it as ``CONNECT host:port``: it opens a socket to that origin, answers
200 and relays bytes both ways, unread (``tunnels`` counts them by origin). A plain ``http``
request reaches it in absolute form (``POST http://host:port/path``): it sends it on, on a socket
of its own to that origin, and relays the answer back (``forwarded`` counts them by origin). The
local port of every socket it opened to an origin is in ``upstream_ports``: a server that notes its
peers (``FakeOpenAI.record_peers``) can so tell that a request came through the proxy.
``authorizations`` keeps the ``Proxy-Authorization`` each CONNECT or request carried.

Messages must be framed by ``Content-Length`` (as every client and the fake server here frame
them); it is a test double, not a proxy to run.

    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"
_HEAD_END = b"\r\n\r\n"


@dataclass
class _Head:
    """A request's or answer's head, as the proxy needs it."""

    raw: bytes
    first_line: str
    fields: dict[str, str]

    @classmethod
    async def read(cls, reader: asyncio.StreamReader) -> _Head:
        raw = await reader.readuntil(_HEAD_END)
        first_line, *lines = raw[: -len(_HEAD_END)].decode("latin-1").split("\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return cls(raw, first_line, fields)

    async def body(self, reader: asyncio.StreamReader) -> bytes:
        return await reader.readexactly(int(self.fields.get("content-length", "0")))


@dataclass
class ForwardProxy:
    """The proxy, served from its own event loop in a daemon thread; counters readable anywhere."""

    tunnels: Counter[str] = field(default_factory=Counter)  # "host:port" -> CONNECT tunnels
    forwarded: Counter[str] = field(default_factory=Counter)  # "host:port" -> plain requests
    upstream_ports: set[int] = field(default_factory=set)
    authorizations: list[str | None] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def carried(self) -> int:
        """Tunnels opened and requests forwarded, all origins together."""
        return self.tunnels.total() + self.forwarded.total()

    def __enter__(self) -> ForwardProxy:
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._client, HOST, 0))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="forward-proxy", daemon=True)
        self._thread.start()
        started.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # the server's close leaves open connections open
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await _Head.read(reader)
            self.authorizations.append(head.fields.get("proxy-authorization"))
            method, target, _ = head.first_line.split(" ", 2)
            if method == "CONNECT":
                await self._tunnel(target, reader, writer)
            else:
                await self._forward(head, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a client gone, or one this double does not understand: drop it
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _open(self, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, _, port = authority.rpartition(":")
        upstream = await asyncio.open_connection(host.strip("[]"), int(port))
        self._writers.add(upstream[1])
        self.upstream_ports.add(upstream[1].get_extra_info("sockname")[1])
        return upstream

    async def _tunnel(
        self, authority: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await self._open(authority)
        self.tunnels[authority] += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))

    async def _forward(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each request on this connection to its origin (kept alive there too), each answer back."""
        authority = head.first_line.split(" ")[1].split("/")[2]  # http://host:port/path
        up_reader, up_writer = await self._open(authority)
        try:
            while True:
                self.forwarded[authority] += 1
                up_writer.write(head.raw + await head.body(reader))
                answer = await _Head.read(up_reader)
                writer.write(answer.raw + await answer.body(up_reader))
                await writer.drain()
                head = await _Head.read(reader)
                self.authorizations.append(head.fields.get("proxy-authorization"))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from one side to the other until either side closes."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
