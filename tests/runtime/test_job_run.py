"""Every branch of a job's run (``runtime.job_run.JobRun``), in this process: the real flow and its
tasks on one Prefect test server for the session, with a scripted engine at the model boundary
(``testing.engines.EchoEngine``, made the process's engine for the model). A job completes; a file
unusable as a whole fails it; a cancel mid-window, its completion window, its deadline, a model
server that is never reached and one whose certificate is not trusted each end it as they should,
every line accounted for."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchinfer.contract import Options
from batchinfer.endpoints import Endpoint
from batchinfer.engines.openai_compat import OpenAIEngine
from batchinfer.jobspec import LineChecks
from batchinfer.records import ErrorDetail
from batchinfer.runtime.heap import YOUNG_THRESHOLD
from batchinfer.testing.engines import EchoEngine
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.forward_proxy import ForwardProxy
from batchinfer.testing.served import read_jsonl
from batchinfer.testing.tls import PrivateCA
from tests.runtime.jobs import CHUNK_SIZE, LINES, MODEL, RunJob


def cancel_at_call(call: int) -> Callable[[int], None]:
    """An engine callback that asks Prefect to cancel the job, as the UI does, at its ``call``-th call."""

    def cancel(calls: int) -> None:
        if calls != call:
            return
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    return cancel


def test_a_job_completes_with_every_line_answered_once_in_order(run_job: RunJob) -> None:
    ended = run_job(EchoEngine())
    assert ended.state.is_completed()
    records = ended.records()
    assert sorted(records) == list(range(1, LINES + 1))
    assert all(records[line]["generations"][0]["text"] == f"echo: prompt {line - 1}" for line in records)
    assert (ended.progress.completed, ended.progress.failed, ended.progress.chunks_done) == (LINES, 0, 6)


def test_while_a_job_runs_its_chunks_the_collector_is_quiet_and_after_it_is_as_it_was(
    run_job: RunJob,
) -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, tuple[int, int, int]]] = []
    ended = run_job(EchoEngine(on_call=lambda _: seen.append((gc.get_freeze_count(), gc.get_threshold()))))
    assert ended.state.is_completed() and len(seen) == LINES // CHUNK_SIZE
    assert all(frozen > 0 and threshold[0] >= YOUNG_THRESHOLD for frozen, threshold in seen)
    assert (gc.get_freeze_count(), gc.get_threshold()) == (0, before)


def test_a_file_with_no_lines_fails_the_job_with_its_error_in_the_error_file(run_job: RunJob) -> None:
    ended = run_job(EchoEngine(), lines=0)
    assert ended.state.is_failed() and ended.progress.error_code == "empty_file"
    ((record),) = read_jsonl(ended.layout.errors)
    assert record["line"] is None and record["error"]["code"] == "empty_file"


def batch_row(custom_id: str, model: str = MODEL.id, **fields: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": custom_id}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body} | fields


def test_an_openai_batch_with_an_invalid_line_fails_validating_and_sends_nothing(run_job: RunJob) -> None:
    engine = EchoEngine()
    rows = [batch_row("a"), batch_row("b", url="/v1/embeddings"), batch_row("c")]
    ended = run_job(engine, rows=rows, line_checks=LineChecks.openai, endpoint=Endpoint.chat)
    assert ended.state.is_failed() and engine.calls == []
    assert ended.progress.error_code == "invalid_batch_file"
    assert "1 of the batch's 3 lines" in (ended.progress.error_message or "")
    [listed] = read_jsonl(ended.layout.batch_errors)
    assert (listed["line"], listed["error"]["code"], listed["error"]["param"]) == (2, "invalid_url", "url")


def test_an_openai_batch_naming_a_model_not_served_fails_each_line_model_not_found(run_job: RunJob) -> None:
    rows = [batch_row("a", model="gpt-unserved"), batch_row("b", model="gpt-unserved")]
    ended = run_job(EchoEngine(), rows=rows, model="gpt-unserved", line_checks=LineChecks.openai)
    assert ended.state.is_failed() and ended.progress.error_code == "invalid_batch_file"
    codes = [(r["line"], r["error"]["code"]) for r in read_jsonl(ended.layout.batch_errors)]
    assert codes == [(1, "model_not_found"), (2, "model_not_found")]


def test_a_valid_openai_batch_runs_as_any_job(run_job: RunJob) -> None:
    ended = run_job(EchoEngine(), rows=[batch_row("a"), batch_row("b")], line_checks=LineChecks.openai)
    assert ended.state.is_completed() and not ended.layout.batch_errors.exists()
    assert [r["custom_id"] for r in read_jsonl(ended.layout.success)] == ["a", "b"]


@pytest.mark.slow
def test_a_cancel_mid_window_keeps_the_finished_chunks_and_records_the_rest_cancelled(
    run_job: RunJob,
) -> None:
    engine = EchoEngine(delay_s=0.4, on_call=cancel_at_call(1))
    ended = run_job(engine)
    assert ended.state.is_cancelled(), ended.state
    codes = [r.get("error", {}).get("code", "answered") for r in ended.records().values()]
    assert len(codes) == LINES and codes.count("cancelled") >= CHUNK_SIZE and "answered" in codes
    assert len(engine.calls) < LINES // CHUNK_SIZE  # chunks after the cancel never reached the model
    assert ended.progress.error_code == "cancelled" and "resume" in (ended.progress.error_message or "")


@pytest.mark.slow
def test_a_job_past_its_completion_window_fails_expired_keeping_what_finished(run_job: RunJob) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=1.5)
    ended = run_job(EchoEngine(delay_s=0.4), expires_at=expires_at)
    assert ended.state.is_failed() and ended.progress.error_code == "expired"
    codes = [r.get("error", {}).get("code", "answered") for r in ended.records().values()]
    assert len(codes) == LINES and "expired" in codes and "answered" in codes


@pytest.mark.slow
def test_a_job_past_its_deadline_fails_deadline_exceeded_and_keeps_its_chunks_for_a_resume(
    run_job: RunJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHINFER_JOB_TIMEOUT_S", "1.0")
    ended = run_job(EchoEngine(delay_s=0.4))
    assert ended.state.is_failed() and ended.progress.error_code == "deadline_exceeded"
    assert not ended.layout.success.exists()  # no outputs: the job did not finish
    assert list(ended.layout.work.glob("chunks/result-*.jsonl"))  # the chunks it finished


def test_a_model_server_never_reached_fails_model_unreachable_and_drops_its_results(run_job: RunJob) -> None:
    down = ErrorDetail(code="connection_error", message="Gave up after 1 attempt (connection refused)")
    ended = run_job(EchoEngine(fail_all=down))
    assert ended.state.is_failed() and ended.progress.error_code == "model_unreachable"
    assert MODEL.base_url in (ended.progress.error_message or "")
    assert {r["error"]["code"] for r in ended.records().values()} == {"connection_error"}
    assert not list(ended.layout.root.rglob("result-*"))  # a resume asks the server again


@pytest.fixture
def refusing() -> Iterator[FakeOpenAIServer]:
    """A model server that answers every request 401 invalid_api_key until a test fixes it."""
    with FakeOpenAIServer(latency_ms=2, refuse="auth") as server:
        yield server


@pytest.fixture
def http_engine(refusing: FakeOpenAIServer) -> Iterator[OpenAIEngine]:
    """The real OpenAI engine of ``MODEL``, pointed at the refusing server."""
    engine = OpenAIEngine(MODEL.model_copy(update={"base_url": refusing.base_url, "max_concurrency": 16}))
    yield engine
    engine.close()


@pytest.mark.slow
def test_a_wrong_api_key_stops_a_50000_line_job_after_its_first_answers(
    run_job: RunJob, http_engine: OpenAIEngine, refusing: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHINFER_CHUNK_SIZE", "1000")
    ended = run_job(http_engine, lines=50_000)
    assert ended.state.is_failed() and ended.progress.error_code == "auth_failed"
    assert "api_key_env" in (ended.progress.error_message or "")
    assert 20 <= refusing.requests_total <= 200  # not 50,000 requests to learn the key is wrong
    codes = [r["error"]["code"] for r in ended.records().values()]
    assert len(codes) == 50_000 and set(codes) == {"http_401", "auth_failed"}


@pytest.mark.slow
def test_once_the_key_is_fixed_a_rerun_answers_the_lines_the_bad_key_failed_or_cut_short(
    run_job: RunJob, http_engine: OpenAIEngine, refusing: FakeOpenAIServer
) -> None:
    assert run_job(http_engine, lines=200).progress.error_code == "auth_failed"
    refusing.refuse = None  # the user sets the right key
    second = run_job(http_engine, lines=200)
    assert second.state.is_completed() and second.progress.completed == 200
    assert len(read_jsonl(second.layout.success)) == 200


def test_a_small_job_whose_every_answer_is_a_401_fails_auth_failed(
    run_job: RunJob, http_engine: OpenAIEngine, refusing: FakeOpenAIServer
) -> None:
    ended = run_job(http_engine, lines=5)
    assert ended.state.is_failed() and ended.progress.error_code == "auth_failed"
    assert refusing.requests_total == 5


@pytest.mark.slow
@pytest.mark.parametrize("ssl_cert_file", [True, False], ids=["SSL_CERT_FILE set", "no SSL_CERT_FILE"])
def test_a_job_behind_an_https_proxy_completes_through_it_or_fails_certificate_untrusted_saying_how_to_fix_it(
    ssl_cert_file: bool,
    run_job: RunJob,
    tls_server: FakeOpenAIServer,
    forward_proxy: ForwardProxy,
    private_ca: PrivateCA,
    network_env: pytest.MonkeyPatch,
) -> None:
    tls_server.reset()
    network_env.setenv("HTTPS_PROXY", forward_proxy.url)
    if ssl_cert_file:
        network_env.setenv("SSL_CERT_FILE", str(private_ca.pem))
    engine = OpenAIEngine(MODEL.model_copy(update={"base_url": tls_server.base_url, "max_concurrency": 4}))
    try:
        ended = run_job(engine)
    finally:
        engine.close()
    records = ended.records()
    assert sorted(records) == list(range(1, LINES + 1))
    if ssl_cert_file:
        assert ended.state.is_completed(), ended.state
        assert tls_server.requests_total == LINES and set(tls_server.peers) <= forward_proxy.upstream_ports
    else:
        assert ended.state.is_failed() and ended.progress.error_code == "certificate_untrusted"
        assert "SSL_CERT_FILE" in (ended.progress.error_message or "")
        assert {r["error"]["code"] for r in records.values()} == {"certificate_untrusted"}
        assert tls_server.requests_total == 0 and forward_proxy.tunnels.total() < LINES  # stopped early


def test_a_job_past_its_max_error_rate_fails_error_rate_exceeded_with_every_line_recorded(
    run_job: RunJob,
) -> None:
    ended = run_job(EchoEngine(), prompt=lambda i: f"fail {i}" if i % 2 else f"ok {i}", max_error_rate=0.25)
    assert ended.state.is_failed() and ended.progress.error_code == "error_rate_exceeded"
    assert "max_error_rate 0.25" in (ended.progress.error_message or "")
    assert len(ended.records()) == LINES


def test_a_job_within_its_max_error_rate_completes(run_job: RunJob) -> None:
    ended = run_job(
        EchoEngine(), prompt=lambda i: f"fail {i}" if i % 10 == 0 else f"ok {i}", max_error_rate=0.25
    )
    assert ended.state.is_completed() and ended.progress.failed == LINES // 10


@pytest.mark.slow
def test_a_job_over_three_replicas_completes_with_every_line_once_when_one_is_killed_mid_job(
    run_job: RunJob,
) -> None:
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(FakeOpenAIServer(latency_ms=5)) for _ in range(3)]
        urls = [server.base_url for server in servers]
        engine = OpenAIEngine(
            MODEL.model_copy(update={"base_url": None, "base_urls": urls, "max_concurrency": 4})
        )
        stack.callback(engine.close)

        def kill_the_third_after_300_requests() -> None:
            while sum(server.requests_total for server in servers) < 300:
                time.sleep(0.002)
            servers[2].stop()

        killer = threading.Thread(target=kill_the_third_after_300_requests)
        killer.start()
        ended = run_job(engine, lines=900)
        killer.join(timeout=10)
        answers = [server.statuses[200] for server in servers]
    assert ended.state.is_completed(), ended.state
    records = ended.records()
    assert sorted(records) == list(range(1, 901))
    assert all(records[n]["generations"][0]["text"] == f"echo: prompt {n - 1}" for n in records)
    assert sum(answers) == 900 and answers[2] < 200, answers  # its share moved to the other two
    assert abs(answers[0] - answers[1]) <= 0.2 * max(answers[:2]), answers


@pytest.mark.slow
def test_a_10000_line_job_with_30_percent_repeated_deterministic_lines_sends_7000_requests(
    run_job: RunJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHINFER_CHUNK_SIZE", "500")
    with FakeOpenAIServer(latency_ms=0) as server:
        engine = OpenAIEngine(MODEL.model_copy(update={"base_url": server.base_url}))
        try:
            ended = run_job(
                engine, lines=10_000, prompt=lambda i: f"question {i % 7000}", options=Options(temperature=0)
            )
        finally:
            engine.close()
        sent = server.requests_total
    assert ended.state.is_completed(), ended.state
    assert sent == 7_000 and ended.progress.deduplicated == 3_000
    records = ended.records()
    assert sorted(records) == list(range(1, 10_001))
    assert all(records[n]["generations"][0]["text"] == f"echo: question {(n - 1) % 7000}" for n in records)
    assert all(records[n].get("duplicate_of") == (n - 7000 if n > 7000 else None) for n in records)


@pytest.mark.slow
def test_with_the_cache_on_a_rerun_sends_nothing_and_a_file_with_1000_lines_changed_sends_1000(
    run_job: RunJob, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cached_model = {**MODEL.model_dump(exclude_none=True), "cache": True}
    Path(os.environ["BATCHINFER_MODELS"]).write_text(yaml.safe_dump({"models": [cached_model]}))
    monkeypatch.setenv("BATCHINFER_CHUNK_SIZE", "500")
    greedy = Options(temperature=0)
    with FakeOpenAIServer(latency_ms=0) as server:
        engine = OpenAIEngine(MODEL.model_copy(update={"base_url": server.base_url}))
        sent = []
        try:
            for changed in (0, 0, 1_000):  # the first run, the same file again, 1,000 lines changed
                before = server.requests_total
                ended = run_job(
                    engine,
                    lines=10_000,
                    prompt=lambda i, changed=changed: f"{'new ' if i < changed else ''}q {i % 7000}",
                    options=greedy,
                    output_dir=str(tmp_path / f"out-{len(sent)}"),
                )
                assert ended.state.is_completed(), ended.state
                sent.append(server.requests_total - before)
        finally:
            engine.close()
    assert sent == [7_000, 0, 1_000]
    records = ended.records()
    assert len(records) == 10_000 and records[1001]["cached"] is True and "cached" not in records[1]


class PacedEcho(EchoEngine):
    """An echo engine that paces itself to a server, as the HTTP one does (``engines.pacing``)."""

    def pace(self) -> dict[str, Any] | None:
        return {"requests_per_minute": 1200, "concurrency": 12, "reason": "latency"}

    def share_rates(self, grants: Any) -> None:
        raise AssertionError("the job's model has no per-minute limits to share")


def test_the_pace_a_model_settled_on_is_in_the_jobs_progress(run_job: RunJob) -> None:
    ended = run_job(PacedEcho())
    assert ended.state.is_completed()
    assert ended.progress.pace == {"requests_per_minute": 1200, "concurrency": 12, "reason": "latency"}
