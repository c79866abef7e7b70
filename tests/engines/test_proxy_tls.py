"""Reaching a model behind a corporate proxy, with a certificate from an internal CA, as curl,
requests and httpx do: a real forward proxy (``testing.forward_proxy``, which counts what it
carried) and a TLS model server whose certificate a CA of the test's own signed (``testing.tls``);
nothing of the HTTP stack is mocked. Every test runs on every transport (``@every_client``): each
takes its proxy and certificates from the one seam, ``engines.network``."""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchinfer.engines.base import InferenceOutcome, SamplingParams
from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.openai_compat import OpenAIEngine
from batchinfer.errors import EngineError
from batchinfer.testing.engines import ask, completion, error
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.forward_proxy import ForwardProxy
from batchinfer.testing.served import free_port
from batchinfer.testing.tls import PrivateCA

every_client = pytest.mark.parametrize("http_client", ["native", "aiohttp", "httpx"])
LINES = 12  # three times max_concurrency: sockets are reused, and a failed one frees its slot
# Placeholders in the tables below, filled in by ``fill`` once the fixtures exist.
PROXY, DEAD_PROXY, CA = "{proxy}", "{dead proxy}", "{ca}"


@pytest.fixture
def server(tls_server: FakeOpenAIServer) -> FakeOpenAIServer:
    tls_server.reset()
    return tls_server


@pytest.fixture
def plain_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(record_peers=True) as server:
        yield server


@pytest.fixture
def fill(forward_proxy: ForwardProxy, private_ca: PrivateCA) -> Any:
    """A table's value with its placeholder made real."""
    real = {PROXY: forward_proxy.url, DEAD_PROXY: f"http://127.0.0.1:{free_port()}", CA: str(private_ca.pem)}
    return lambda value: real.get(value, value) if isinstance(value, str) else value


def infer(base_url: str, http_client: str, **settings: Any) -> list[InferenceOutcome]:
    config = OpenAIEngineConfig(
        id="internal",
        base_url=base_url,
        model="fake-model",
        http_client=http_client,
        max_concurrency=4,
        timeout_s=5,
        max_retries=3,
        backoff_s=0.01,
        max_backoff_s=0.05,
        **settings,
    )
    engine = OpenAIEngine(config)
    try:
        return engine.infer([ask(line, f"prompt {line}", SamplingParams()) for line in range(LINES)])
    finally:
        engine.close()


def all_answered(outcomes: list[InferenceOutcome]) -> bool:
    texts = [completion(outcome).generations[0].text for outcome in outcomes]
    return texts == [f"echo: prompt {line}" for line in range(LINES)]


def came_through(proxy: ForwardProxy, server: FakeOpenAIServer) -> bool:
    """Every request the server answered came on a socket the proxy opened to it."""
    return server.requests_total == LINES and set(server.peers) <= proxy.upstream_ports


@every_client
def test_with_https_proxy_and_ssl_cert_file_every_line_completes_and_every_request_went_through_the_proxy(
    http_client: str,
    server: FakeOpenAIServer,
    forward_proxy: ForwardProxy,
    private_ca: PrivateCA,
    network_env: pytest.MonkeyPatch,
) -> None:
    network_env.setenv("HTTPS_PROXY", forward_proxy.url)
    network_env.setenv("SSL_CERT_FILE", str(private_ca.pem))
    assert all_answered(infer(server.base_url, http_client))
    assert came_through(forward_proxy, server)
    assert list(forward_proxy.tunnels) == [f"127.0.0.1:{server.port}"]  # CONNECT named the model server


@every_client
def test_without_ssl_cert_file_each_line_fails_once_saying_the_certificate_was_not_trusted_and_how_to_fix_it(
    http_client: str, server: FakeOpenAIServer, forward_proxy: ForwardProxy, network_env: pytest.MonkeyPatch
) -> None:
    network_env.setenv("HTTPS_PROXY", forward_proxy.url)
    outcomes = infer(server.base_url, http_client)
    assert {error(o).code for o in outcomes} == {"certificate_untrusted"}
    message = error(outcomes[0]).message
    assert f"certificate of {server.base_url} was not trusted" in message
    assert "SSL_CERT_FILE" in message and "ca_bundle" in message
    assert forward_proxy.tunnels.total() == LINES  # one try a line: never retried (max_retries 3)
    assert server.requests_total == 0


# (the environment, the model server's scheme, whether the proxy carries its requests)
ROUTES = [
    ({"HTTPS_PROXY": PROXY}, "https", True),
    ({"https_proxy": PROXY}, "https", True),
    ({"ALL_PROXY": PROXY}, "https", True),
    ({"all_proxy": PROXY}, "http", True),
    ({"HTTP_PROXY": PROXY}, "http", True),
    ({"http_proxy": PROXY}, "http", True),
    ({"HTTP_PROXY": PROXY}, "https", False),  # each scheme's variable is for its own URLs
    ({"HTTPS_PROXY": PROXY}, "http", False),
    ({"HTTPS_PROXY": PROXY, "NO_PROXY": "127.0.0.1"}, "https", False),
    ({"HTTP_PROXY": PROXY, "no_proxy": "example.com, 127.0.0.1"}, "http", False),
    ({"ALL_PROXY": PROXY, "NO_PROXY": "*"}, "https", False),
    ({"HTTPS_PROXY": PROXY, "NO_PROXY": "example.com"}, "https", True),  # a NO_PROXY for others
]


@every_client
@pytest.mark.parametrize(("environment", "scheme", "through_the_proxy"), ROUTES)
def test_the_proxy_variables_in_either_case_and_no_proxy_decide_which_requests_go_through_the_proxy(
    http_client: str,
    environment: dict[str, str],
    scheme: str,
    through_the_proxy: bool,
    server: FakeOpenAIServer,
    plain_server: FakeOpenAIServer,
    forward_proxy: ForwardProxy,
    private_ca: PrivateCA,
    network_env: pytest.MonkeyPatch,
    fill: Any,
) -> None:
    for name, value in {**environment, "SSL_CERT_FILE": CA}.items():
        network_env.setenv(name, fill(value))
    target = server if scheme == "https" else plain_server
    assert all_answered(infer(target.base_url, http_client))
    assert came_through(forward_proxy, target) is through_the_proxy
    assert (forward_proxy.carried > 0) is through_the_proxy


# (case, the model's own settings, the environment, whether the proxy carries its requests)
MODEL_SETTINGS = [
    ("proxy: a URL, over an HTTPS_PROXY nobody listens on", {"proxy": PROXY},
     {"HTTPS_PROXY": DEAD_PROXY, "SSL_CERT_FILE": CA}, True),
    ("proxy: none, over HTTPS_PROXY", {"proxy": "none"}, {"HTTPS_PROXY": PROXY, "SSL_CERT_FILE": CA}, False),
    ("ca_bundle, without SSL_CERT_FILE", {"ca_bundle": CA}, {"HTTPS_PROXY": PROXY}, True),
    ("verify: false, trusting no CA", {"verify": False}, {"HTTPS_PROXY": PROXY}, True),
]  # fmt: skip


@every_client
@pytest.mark.parametrize(
    ("settings", "environment", "through_the_proxy"),
    [case[1:] for case in MODEL_SETTINGS],
    ids=[case[0] for case in MODEL_SETTINGS],
)
def test_a_models_own_proxy_ca_bundle_and_verify_do_what_they_say(
    http_client: str,
    settings: dict[str, Any],
    environment: dict[str, str],
    through_the_proxy: bool,
    server: FakeOpenAIServer,
    forward_proxy: ForwardProxy,
    network_env: pytest.MonkeyPatch,
    fill: Any,
) -> None:
    for name, value in environment.items():
        network_env.setenv(name, fill(value))
    own = {name: fill(value) for name, value in settings.items()}
    assert all_answered(infer(server.base_url, http_client, **own))
    assert came_through(forward_proxy, server) is through_the_proxy
    assert (forward_proxy.carried > 0) is through_the_proxy


@every_client
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_password_in_the_proxy_variable_reaches_the_proxy_as_proxy_authorization(
    http_client: str,
    scheme: str,
    server: FakeOpenAIServer,
    plain_server: FakeOpenAIServer,
    forward_proxy: ForwardProxy,
    private_ca: PrivateCA,
    network_env: pytest.MonkeyPatch,
) -> None:
    network_env.setenv("ALL_PROXY", f"http://alice:s%40cret@127.0.0.1:{forward_proxy.port}")
    network_env.setenv("SSL_CERT_FILE", str(private_ca.pem))
    assert all_answered(infer((server if scheme == "https" else plain_server).base_url, http_client))
    expected = "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert forward_proxy.authorizations and set(forward_proxy.authorizations) == {expected}


@every_client
def test_ssl_cert_dir_is_honoured_as_ssl_cert_file_is(
    http_client: str,
    server: FakeOpenAIServer,
    private_ca: PrivateCA,
    network_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it names the files of an SSL_CERT_DIR by their hash")
    shutil.copy(private_ca.pem, tmp_path / "private-ca.pem")
    subprocess.run(["openssl", "rehash", str(tmp_path)], check=True)
    network_env.setenv("SSL_CERT_DIR", str(tmp_path))
    assert all_answered(infer(server.base_url, http_client))


def test_verify_false_is_a_warning_logged_once_however_many_requests(
    server: FakeOpenAIServer, network_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="batchinfer.engines.network"):
        assert all_answered(infer(server.base_url, "native", verify=False))
    warnings = [r.getMessage() for r in caplog.records if "verify: false" in r.getMessage()]
    assert len(warnings) == 1 and "'internal'" in warnings[0]


@pytest.mark.parametrize(
    ("environment", "settings", "named"),
    [
        ({"ALL_PROXY": "socks5://127.0.0.1:1080"}, {}, "environment"),
        ({}, {"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle /nonexistent/ca.pem"),
    ],
)
def test_a_network_setting_that_cannot_work_fails_the_engine_build_naming_it(
    environment: dict[str, str], settings: dict[str, Any], named: str, network_env: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        network_env.setenv(name, value)
    with pytest.raises(EngineError) as raised:
        OpenAIEngine(OpenAIEngineConfig(id="m", base_url="https://model.internal/v1", model="m", **settings))
    assert named in raised.value.message and "'m'" in raised.value.message
