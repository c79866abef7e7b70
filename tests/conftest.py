"""Shared fixtures. Everything a test needs is built or started here, on 127.0.0.1, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import openai
import pytest
import yaml
from filelock import FileLock

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.forward_proxy import ForwardProxy
from batchinfer.testing.prefect_server import PrefectServer
from batchinfer.testing.served import ServeProcess, free_port, serve_env
from batchinfer.testing.tls import PrivateCA
from batchinfer.testing.transformers_serve import TransformersServe, smollm2_checkpoint
from batchinfer.testing.webhooks import Receiver, webhook_receiver

# No hub, no telemetry, one torch thread: the machines have 2 cores and no internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SLOW_LATENCY_MS = 25.0


@pytest.fixture(scope="session")
def prefect_db_template_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where the migrated Prefect database of this Prefect version is kept: pytest's cache, shared
    by the pytest-xdist workers and kept for the next run."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = cache.mkdir("prefect-db-templates") if cache is not None else tmp_path_factory.getbasetemp()
    return folder / f"prefect-{version('prefect')}.db"


@pytest.fixture(scope="session")
def prefect_db_template(prefect_db_template_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The migrated Prefect database, for a test whose own server or ``serve`` starts from a copy
    (~5 s instead of ~12 s to migrate a fresh one): the first server to need it makes it."""
    if not prefect_db_template_path.exists():
        with PrefectServer(
            home=tmp_path_factory.mktemp("template"), database_template=prefect_db_template_path
        ):
            pass
    return prefect_db_template_path


@pytest.fixture(scope="session")
def prefect_harness(
    tmp_path_factory: pytest.TempPathFactory, prefect_db_template_path: Path
) -> Iterator[None]:
    """One Prefect server for the session's in-process flow runs (``tests/runtime/test_job_run.py``),
    as Prefect's ``prefect_test_harness`` has, but starting from the migrated template."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-harness")
    with (
        PrefectServer(home=home, database_template=prefect_db_template_path) as server,
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
    ):
        yield  # a thread a test starts must run in this context (contextvars.copy_context) to see it


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from batchinfer.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_ms=0) as server:
        yield server


@pytest.fixture(scope="session")
def slow_openai() -> Iterator[FakeOpenAIServer]:
    """A model server with per-request latency, so a job lasts long enough to watch it run."""
    with FakeOpenAIServer(latency_ms=SLOW_LATENCY_MS) as server:
        yield server


@pytest.fixture(scope="session")
def flaky_openai() -> Iterator[FakeOpenAIServer]:
    """A model server that answers 10% of requests with 429 and 10% with 500 (seeded)."""
    with FakeOpenAIServer(fail_rate_429=0.1, fail_rate_500=0.1, seed=4) as server:
        yield server


@pytest.fixture(scope="session")
def limited_openai() -> Iterator[FakeOpenAIServer]:
    """The server behind model ``fake-limited`` (max_concurrency 4): its ``max_in_flight`` shows
    whether the model's limit held across jobs. Used by no other model. Its answers are slow
    enough (300 prompts take ~6 s at 4 in flight) that two jobs submitted together overlap even
    when a job starts in a fraction of a second."""
    with FakeOpenAIServer(latency_ms=80) as server:
        yield server


@pytest.fixture(scope="session")
def recording_openai() -> Iterator[FakeOpenAIServer]:
    """The server behind model ``fake-recording``: it keeps every request body it was sent, so a
    test can check that a line reached the server as written. Used by no other model."""
    with FakeOpenAIServer(record_bodies=True) as server:
        yield server


@pytest.fixture(scope="session")
def refusing_openai() -> Iterator[FakeOpenAIServer]:
    """The server behind model ``fake-bad-key``: it answers 401 invalid_api_key until a test
    sets its ``refuse`` to None (the key fixed). Used by no other model."""
    with FakeOpenAIServer(latency_ms=2, refuse="auth") as server:
        yield server


@pytest.fixture(scope="session")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    """A CA of the session's own, as a company's internal one: no system store trusts it."""
    return PrivateCA.make(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def tls_server(private_ca: PrivateCA) -> Iterator[FakeOpenAIServer]:
    """A model server on https://127.0.0.1 whose certificate ``private_ca`` signed; it notes each
    request's client port (``peers``), so a test sees which requests came through a proxy."""
    with FakeOpenAIServer(tls=private_ca.server_context, record_peers=True) as server:
        yield server


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    """A forward proxy of the test's own on 127.0.0.1, counting what it carried."""
    with ForwardProxy() as proxy:
        yield proxy


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
NETWORK_VARIABLES = [*PROXY_VARIABLES, *(n.lower() for n in PROXY_VARIABLES), "SSL_CERT_FILE", "SSL_CERT_DIR"]


@pytest.fixture
def network_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy and no CA bundle from the machine's environment: a test sets the ones it means."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def down_base_url() -> str:
    """A model server that is down: nothing listens on this port."""
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def transformers_serve(e2e_root: Path) -> TransformersServe:
    """Where Hugging Face's ``transformers serve`` will serve SmolLM2 (model ``smollm2-served`` of
    the session's models file): named up front, started only by the tests that use it."""
    return TransformersServe(
        e2e_root / "smollm2-checkpoint", free_port(), e2e_root / "transformers-serve.log"
    )


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transformers engine's cache, holding SmolLM2 dequantized from its GGUF file (~20 s to
    make): one per test run, shared by the pytest-xdist workers, made by the first that needs it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base temps sit side by side in the run's own
    cache = root / "smollm2-cache"
    with FileLock(f"{cache}.lock"):
        smollm2_checkpoint(cache)
    return cache


@pytest.fixture(scope="session")
def transformers_server(
    transformers_serve: TransformersServe, smollm2_cache: Path
) -> Iterator[TransformersServe]:
    transformers_serve.checkpoint.symlink_to(smollm2_checkpoint(smollm2_cache), target_is_directory=True)
    with transformers_serve.running() as server:
        yield server


@pytest.fixture(scope="session")
def models_file(
    e2e_root: Path,
    fake_openai: FakeOpenAIServer,
    slow_openai: FakeOpenAIServer,
    flaky_openai: FakeOpenAIServer,
    down_base_url: str,
    limited_openai: FakeOpenAIServer,
    recording_openai: FakeOpenAIServer,
    refusing_openai: FakeOpenAIServer,
    tiny_model_dir: Path,
    transformers_serve: TransformersServe,
) -> Path:
    models = [
        {"id": "fake", "engine": "openai", "base_url": fake_openai.base_url, "model": "fake-model"},
        {
            "id": "fake-slow",
            "engine": "openai",
            "base_url": slow_openai.base_url,
            "model": "fake-model",
            "max_concurrency": 8,
        },
        {
            "id": "fake-limited",
            "engine": "openai",
            "base_url": limited_openai.base_url,
            "model": "fake-model",
            "max_concurrency": 4,
        },
        {
            "id": "fake-recording",
            "engine": "openai",
            "base_url": recording_openai.base_url,
            "model": "served-name",
        },
        {"id": "tiny", "engine": "transformers", "path": str(tiny_model_dir), "batch_size": 8},
        {
            "id": "smollm2-served",
            "engine": "openai",
            "base_url": transformers_serve.base_url,
            "model": transformers_serve.model,
            "max_concurrency": 2,
            "timeout_s": 120,
        },
        # Fault models: short timeouts and backoffs, so that a fault costs a test milliseconds.
        {
            "id": "fake-flaky",
            "engine": "openai",
            "base_url": flaky_openai.base_url,
            "model": "fake-model",
            "max_retries": 12,  # a line fails 13 times in a row with odds 0.2**13: never
            "backoff_s": 0.005,
            "max_backoff_s": 0.02,
        },
        {
            "id": "fake-faults",
            "engine": "openai",
            "base_url": fake_openai.base_url,
            "model": "fake-model",
            "timeout_s": 0.5,
            "max_retries": 1,
            "backoff_s": 0.01,
            "max_backoff_s": 0.02,
        },
        {
            "id": "fake-bad-key",
            "engine": "openai",
            "base_url": refusing_openai.base_url,
            "model": "fake-model",
        },
        {
            "id": "fake-down",
            "engine": "openai",
            "base_url": down_base_url,
            "model": "fake-model",
            "max_retries": 1,
            "backoff_s": 0.01,
            "max_backoff_s": 0.02,
        },
    ]
    path = e2e_root / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def job_webhook() -> Iterator[Receiver]:
    """The webhook that the session's ``serve`` notifies of every finished job."""
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def served(
    e2e_root: Path, models_file: Path, job_webhook: Receiver, prefect_db_template: Path
) -> Iterator[ServeProcess]:
    """One ``batchinfer serve`` for the whole session (its Prefect server costs seconds to start)."""
    home = e2e_root / "home"
    home.mkdir()
    data = e2e_root / "data"
    data.mkdir()
    env = serve_env(
        home,
        models_file,
        roots=[data, home],
        BATCHINFER_CHUNK_SIZE="50",
        BATCHINFER_WEBHOOK_URL=job_webhook.url + "/jobs",
        # The /v1 tests let a batch expire in seconds (a '10s' window): an operator's extension.
        BATCHINFER_OPENAI_ANY_COMPLETION_WINDOW="true",
        # The opt-in fork server: each of the session's hundreds of jobs starts ~1 s sooner (the
        # e2e serve and load tests took 2:03 instead of 3:49). Prefect's own way, the default, has
        # tests of its own serves (tests/cli/test_forked_runs.py, test_prefect_sources.py, ...).
        BATCHINFER_FORK_FLOW_RUNS="true",
    )
    process = ServeProcess(home=home, env=env, database_template=prefect_db_template).start()
    yield process
    process.stop()


@pytest.fixture
def client(served: ServeProcess) -> openai.OpenAI:
    """The official OpenAI SDK, unmodified, pointed at the session's ``serve``. No token is set on
    the test server; the SDK still sends `Authorization: Bearer unused`."""
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def data_dir(e2e_root: Path) -> Path:
    """Where e2e tests put prompt files: inside the server's allowed roots."""
    return e2e_root / "data"


# PostgreSQL as the Prefect database (tests/e2e/test_postgres.py, test_two_machines.py).
SCRIPT = Path(__file__).parents[1] / "scripts" / "postgres-for-tests.sh"
UNAVAILABLE = 3  # the script's exit status for "PostgreSQL cannot be had here"
# A first install of the package takes ~30-60 s; a cluster starts in a few seconds.
SCRIPT_TIMEOUT_S = 300


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL cluster for the session, stopped and removed at its end."""
    if shutil.which("bash") is None:
        pytest.skip("PostgreSQL test needs bash to run scripts/postgres-for-tests.sh")
    # Not under pytest's tmp_path: that is a 0700 directory of root's, which the `postgres` user that
    # owns the cluster could not enter.
    workdir = tempfile.mkdtemp(prefix="batchinfer-pg-")
    started = _script("start", workdir, str(free_port()))
    try:
        if started.returncode == UNAVAILABLE:
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, f"PostgreSQL did not start:\n{started.stderr}"
        yield started.stdout.strip().splitlines()[-1]
    finally:
        _script("stop", workdir)
        shutil.rmtree(workdir, ignore_errors=True)
