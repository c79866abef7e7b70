"""The native HTTP/1.1 transport against a scripted socket server: what the engine's behavioural
tests (``test_openai_engine.py``, run on every transport) cannot make a real server do: chunked and
compressed answers, sockets kept alive, closed while idle, or closed after each answer."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from batchinfer.engines.http_transports import RetryableError
from batchinfer.engines.native_http import NativeTransport
from batchinfer.engines.network import Network, tls_context

DIRECT = Network(tls_context(), proxies={})  # no proxy, whatever the environment says

Answer = Callable[[bytes], bytes]  # the raw request -> the raw answer
HEADERS = {"Content-Type": "application/json"}
CHUNKED = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"x":\r\n4\r\n 1}\n\r\n0\r\n\r\n'


def plain(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Scripted:
    """A running scripted server and a transport to post to it with."""

    url: str
    transport: NativeTransport
    per_connection: list[int]  # requests read on each connection the server accepted, in order

    async def post(self, headers: dict[str, str] = HEADERS) -> tuple[int, dict[str, str], bytes]:
        status, got, body = await self.transport.post(self.url, b'{"a": 1}', headers)
        return status, dict(got), body


@contextlib.asynccontextmanager
async def scripted(
    answer: Answer, *, close_after_each: bool = False, drop_request: int | None = None, timeout_s: float = 5
) -> AsyncIterator[Scripted]:
    """A server that reads one request at a time and writes ``answer(request)``. ``drop_request``:
    on its first connection, it closes the socket on reading that request (1-based) instead."""
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(next(v for k, v in _fields(head) if k == "content-length"))
                request = head + await reader.readexactly(length)
                per_connection[-1] += 1
                if len(per_connection) == 1 and per_connection[0] == drop_request:
                    break
                writer.write(answer(request))
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    transport = NativeTransport(8, timeout_s=timeout_s, network=DIRECT)
    try:
        yield Scripted(f"http://{host}:{port}/v1/chat/completions", transport, per_connection)
    finally:
        await transport.aclose()
        server.close()


def _fields(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


def test_a_request_is_one_http11_post_with_host_length_and_the_callers_headers() -> None:
    seen: list[bytes] = []

    async def test() -> None:
        async with scripted(lambda request: (seen.append(request), plain(b"{}"))[1]) as server:
            status, _, body = await server.post({**HEADERS, "Authorization": "Bearer k"})
        assert (status, body) == (200, b"{}")

    run(test)
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    fields = dict(_fields(head + b"\r\n\r\n"))
    assert fields["host"].startswith("127.0.0.1:") and fields["content-length"] == "8"
    assert fields["authorization"] == "Bearer k" and "native" in fields["user-agent"].lower()
    assert body == b'{"a": 1}'


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (plain(b'{"x": "whole"}'), b'{"x": "whole"}'),
        (CHUNKED, b'{"x": 1}\n'),
        (plain(gzip.compress(b'{"x": "zipped"}'), "Content-Encoding: gzip\r\n"), b'{"x": "zipped"}'),
    ],
    ids=["content-length", "chunked", "gzip"],
)
def test_every_framing_of_an_answer_comes_back_as_its_whole_body(answer: bytes, expected: bytes) -> None:
    async def test() -> None:
        async with scripted(lambda _: answer) as server:
            status, _, body = await server.post()
        assert (status, body) == (200, expected)

    run(test)


def test_an_error_answers_status_headers_and_body_reach_the_engine() -> None:
    async def test() -> None:
        answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy"
        async with scripted(lambda _: answer) as server:
            status, _, body = await server.post()
            _, headers, _ = await server.transport.post(server.url, b"{}", HEADERS)
        assert (status, body) == (429, b"busy")
        assert headers.get("retry-after") == headers["Retry-After"] == "7"  # any case

    run(test)


@pytest.mark.parametrize(
    ("answer", "close_after_each", "pause_s", "per_connection"),
    [
        (plain(b"{}"), False, 0, [3]),
        (plain(b"{}", "Connection: close\r\n"), False, 0, [1, 1, 1]),
        # Closed after each answer without a word (no Connection: close), as a server whose
        # keep-alive timeout ran out between two requests does.
        (plain(b"{}"), True, 0.1, [1, 1, 1]),
    ],
    ids=["kept alive", "connection close", "closed while idle"],
)
def test_each_request_gets_its_answer_on_a_kept_alive_socket_or_a_new_one_when_the_server_closed_it(
    answer: bytes, close_after_each: bool, pause_s: float, per_connection: list[int]
) -> None:
    async def test() -> None:
        async with scripted(lambda _: answer, close_after_each=close_after_each) as server:
            statuses = []
            for _ in range(3):
                statuses.append((await server.post())[0])
                await asyncio.sleep(pause_s)  # the close reaches the idle socket
        assert statuses == [200, 200, 200] and server.per_connection == per_connection

    run(test)


def test_a_kept_alive_socket_closed_as_the_next_request_went_out_sends_that_request_again_once() -> None:
    async def test() -> None:
        async with scripted(lambda _: plain(b"{}"), drop_request=2) as server:
            statuses = [(await server.post())[0], (await server.post())[0]]
        assert statuses == [200, 200] and server.per_connection == [2, 1]

    run(test)


@pytest.mark.parametrize(
    ("answer", "timeout_s", "code", "words"),
    [
        (b"", 0.3, "timeout", "timeout_s=0.3"),  # the socket stays open, the answer never comes
        (b"HTTP/1.1 banana\r\n\r\n", 5, "connection_error", "malformed"),
        # The socket is lost after the answer began: that request's failure, not a stale socket.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", 5, "connection_error", "closed"),
    ],
    ids=["silent", "garbled", "cut short"],
)
def test_a_server_that_never_answers_garbles_or_cuts_its_answer_is_a_retryable_error(
    answer: bytes, timeout_s: float, code: str, words: str
) -> None:
    async def test() -> None:
        close = code != "timeout"
        async with scripted(lambda _: answer, close_after_each=close, timeout_s=timeout_s) as server:
            with pytest.raises(RetryableError) as caught:
                await server.post()
        assert (caught.value.code, caught.value.refused) == (code, False)
        assert words in caught.value.reason

    run(test)


def test_nobody_listening_is_a_refused_connection_error() -> None:
    async def test() -> None:
        async with scripted(lambda _: plain(b"{}")) as server:
            url = server.url
        transport = NativeTransport(8, timeout_s=5, network=DIRECT)
        with pytest.raises(RetryableError) as caught:
            await transport.post(url, b"{}", HEADERS)
        await transport.aclose()
        assert (caught.value.code, caught.value.refused) == ("connection_error", True)

    run(test)


def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def test() -> None:
        async with scripted(lambda _: plain(b"{}")) as server:
            with pytest.raises(ValueError, match="line break"):
                await server.post({"Authorization": "Bearer k\r\nX-Evil: 1"})
        assert server.per_connection == []

    run(test)
