"""The native HTTP/1.1 transport against a scripted socket server: what the engine's behavioural
tests (``test_openai_engine.py``, run on every transport) cannot make a real server do: chunked and
compressed answers, sockets kept alive, closed while idle, or closed after each answer."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import pytest

from batchinfer.engines.http_transports import RetryableError
from batchinfer.engines.native_http import NativeTransport

Answer = Callable[[bytes], bytes]  # the raw request -> the raw answer
HEADERS = {"Content-Type": "application/json"}


def plain(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def scripted(
    answer: Answer, *, close_after_each: bool = False, drop_request: int | None = None
) -> tuple[asyncio.Server, list[int]]:
    """A server that reads one request at a time and writes ``answer(request)``; and the list of
    requests per connection it accepted. ``drop_request``: on its first connection, the server
    closes the socket on reading that request (1-based) instead of answering it."""
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

    return await asyncio.start_server(handle, "127.0.0.1", 0), per_connection


def _fields(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


def url_of(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"http://{host}:{port}/v1/chat/completions"


def test_a_request_is_one_http11_post_with_host_length_and_the_callers_headers() -> None:
    seen: list[bytes] = []

    async def test() -> None:
        server, _ = await scripted(lambda request: (seen.append(request), plain(b"{}"))[1])
        transport = NativeTransport(8, timeout_s=5)
        status, _, body = await transport.post(
            url_of(server), b'{"a": 1}', {**HEADERS, "Authorization": "Bearer k"}
        )
        await transport.aclose()
        server.close()
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
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"x":\r\n4\r\n 1}\n\r\n0\r\n\r\n',
            b'{"x": 1}\n',
        ),
        (plain(gzip.compress(b'{"x": "zipped"}'), "Content-Encoding: gzip\r\n"), b'{"x": "zipped"}'),
    ],
    ids=["content-length", "chunked", "gzip"],
)
def test_every_framing_of_an_answer_comes_back_as_its_whole_body(answer: bytes, expected: bytes) -> None:
    async def test() -> None:
        server, _ = await scripted(lambda _: answer)
        transport = NativeTransport(8, timeout_s=5)
        status, _, body = await transport.post(url_of(server), b"{}", HEADERS)
        await transport.aclose()
        server.close()
        assert (status, body) == (200, expected)

    run(test)


def test_an_error_answers_status_headers_and_body_reach_the_engine() -> None:
    async def test() -> None:
        answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy"
        server, _ = await scripted(lambda _: answer)
        transport = NativeTransport(8, timeout_s=5)
        status, headers, body = await transport.post(url_of(server), b"{}", HEADERS)
        await transport.aclose()
        server.close()
        assert (status, headers.get("retry-after"), headers["Retry-After"], body) == (429, "7", "7", b"busy")

    run(test)


def test_one_socket_carries_request_after_request_while_the_server_keeps_it_alive() -> None:
    async def test() -> None:
        server, per_connection = await scripted(lambda _: plain(b"{}"))
        transport = NativeTransport(8, timeout_s=5)
        for _ in range(5):
            await transport.post(url_of(server), b"{}", HEADERS)
        await transport.aclose()
        server.close()
        assert per_connection == [5]

    run(test)


def test_a_server_that_closes_after_each_answer_gets_a_new_socket_per_request_and_every_answer() -> None:
    async def test() -> None:
        server, per_connection = await scripted(lambda _: plain(b"{}", "Connection: close\r\n"))
        transport = NativeTransport(8, timeout_s=5)
        answers = [await transport.post(url_of(server), b"{}", HEADERS) for _ in range(3)]
        await transport.aclose()
        server.close()
        assert [a[0] for a in answers] == [200, 200, 200] and per_connection == [1, 1, 1]

    run(test)


def test_a_kept_alive_socket_the_server_closed_while_idle_is_replaced_without_an_error() -> None:
    async def test() -> None:
        # The server closes each socket after its answer but says nothing (no Connection: close),
        # as a server whose keep-alive timeout ran out between two requests does.
        server, per_connection = await scripted(lambda _: plain(b"{}"), close_after_each=True)
        transport = NativeTransport(8, timeout_s=5)
        first = await transport.post(url_of(server), b"{}", HEADERS)
        await asyncio.sleep(0.1)  # the close reaches the idle socket
        second = await transport.post(url_of(server), b"{}", HEADERS)
        await transport.aclose()
        server.close()
        assert (first[0], second[0], per_connection) == (200, 200, [1, 1])

    run(test)


def test_a_kept_alive_socket_closed_as_the_next_request_went_out_sends_that_request_again_once() -> None:
    async def test() -> None:
        server, per_connection = await scripted(lambda _: plain(b"{}"), drop_request=2)
        transport = NativeTransport(8, timeout_s=5)
        first = await transport.post(url_of(server), b"{}", HEADERS)
        second = await transport.post(url_of(server), b"{}", HEADERS)
        await transport.aclose()
        server.close()
        assert (first[0], second[0], per_connection) == (200, 200, [2, 1])

    run(test)


def test_a_socket_lost_after_the_answer_began_is_that_requests_connection_error() -> None:
    async def test() -> None:
        server, _ = await scripted(
            lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", close_after_each=True
        )
        transport = NativeTransport(8, timeout_s=5)
        with pytest.raises(RetryableError) as caught:
            await transport.post(url_of(server), b"{}", HEADERS)
        await transport.aclose()
        server.close()
        assert (caught.value.code, caught.value.refused) == ("connection_error", False)

    run(test)


def test_nobody_listening_is_a_refused_connection_error() -> None:
    async def test() -> None:
        server, _ = await scripted(lambda _: plain(b"{}"))
        url = url_of(server)
        server.close()
        await server.wait_closed()
        transport = NativeTransport(8, timeout_s=5)
        with pytest.raises(RetryableError) as caught:
            await transport.post(url, b"{}", HEADERS)
        await transport.aclose()
        assert (caught.value.code, caught.value.refused) == ("connection_error", True)

    run(test)


def test_a_server_that_never_answers_is_a_timeout_and_a_garbled_answer_a_connection_error() -> None:
    async def test() -> None:
        silent, _ = await scripted(lambda _: b"")
        garbled, _ = await scripted(lambda _: b"HTTP/1.1 banana\r\n\r\n")
        transport = NativeTransport(8, timeout_s=0.3)
        with pytest.raises(RetryableError) as slow:
            await transport.post(url_of(silent), b"{}", HEADERS)
        with pytest.raises(RetryableError) as bad:
            await transport.post(url_of(garbled), b"{}", HEADERS)
        await transport.aclose()
        silent.close()
        garbled.close()
        assert (slow.value.code, bad.value.code, bad.value.refused) == ("timeout", "connection_error", False)
        assert "malformed" in bad.value.reason

    run(test)


def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def test() -> None:
        server, per_connection = await scripted(lambda _: plain(b"{}"))
        transport = NativeTransport(8, timeout_s=5)
        with pytest.raises(ValueError, match="line break"):
            await transport.post(url_of(server), b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"})
        await transport.aclose()
        server.close()
        assert per_connection == []

    run(test)
