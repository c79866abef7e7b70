"""The network test doubles themselves, driven by httpx (a client batchinfer did not write): the
forward proxy carries CONNECT tunnels and plain requests and counts them, and the TLS model server
is trusted only by a client that trusts the test's own CA."""

from __future__ import annotations

import ssl

import httpx
import pytest

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.forward_proxy import ForwardProxy
from batchinfer.testing.tls import PrivateCA

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def trusting(ca: PrivateCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.pem))


def test_the_tls_server_is_trusted_by_a_client_given_the_private_ca_and_by_no_other(
    tls_server: FakeOpenAIServer, private_ca: PrivateCA
) -> None:
    url = f"{tls_server.base_url}/chat/completions"
    assert url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=trusting(private_ca), trust_env=False) as client:
        assert client.post(url, json=BODY).json()["choices"][0]["message"]["content"] == "echo: hello"
    untrusted = pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED")
    with httpx.Client(verify=ssl.create_default_context(), trust_env=False) as client, untrusted:
        client.post(url, json=BODY)


def test_the_proxy_tunnels_https_and_the_server_sees_only_the_proxys_sockets(
    tls_server: FakeOpenAIServer, private_ca: PrivateCA, forward_proxy: ForwardProxy
) -> None:
    tls_server.reset()
    proxy = httpx.Proxy(forward_proxy.url)
    with httpx.Client(proxy=proxy, verify=trusting(private_ca), trust_env=False) as client:
        for _ in range(3):  # one tunnel, kept alive
            assert client.post(f"{tls_server.base_url}/chat/completions", json=BODY).status_code == 200
    assert forward_proxy.tunnels == {f"127.0.0.1:{tls_server.port}": 1} and not forward_proxy.forwarded
    assert tls_server.requests_total == 3 and set(tls_server.peers) <= forward_proxy.upstream_ports


def test_the_proxy_forwards_each_plain_request_on_a_kept_alive_connection_and_counts_it(
    forward_proxy: ForwardProxy,
) -> None:
    with FakeOpenAIServer(record_peers=True) as server:
        with httpx.Client(proxy=httpx.Proxy(forward_proxy.url), trust_env=False) as client:
            for _ in range(3):
                assert client.post(f"{server.base_url}/chat/completions", json=BODY).status_code == 200
        assert forward_proxy.forwarded == {f"127.0.0.1:{server.port}": 3} and not forward_proxy.tunnels
        assert server.requests_total == 3 and set(server.peers) <= forward_proxy.upstream_ports
    assert forward_proxy.authorizations == [None, None, None]


def test_a_server_without_record_peers_notes_no_peers() -> None:
    with FakeOpenAIServer() as server:
        assert (
            httpx.post(f"{server.base_url}/chat/completions", json=BODY, trust_env=False).status_code == 200
        )
        assert not server.peers and server.base_url.startswith("http://")
