"""A job whose folder is on an object store (an S3-compatible server, moto's, as s3fs tests itself):
it works in a local copy and publishes each file whole as it goes, so that any machine that reads
the store answers for it: its outputs (a results table pandas reads through fsspec), its results
so far, a resume that sends only what no run finished, a retry of its failed lines."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pandas as pd
import pytest

from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import JobPlace, JobStore
from batchinfer.pipeline.live_results import finished_so_far
from batchinfer.pipeline.retry import strip_failed
from batchinfer.records import ErrorDetail
from batchinfer.testing.engines import EchoEngine
from batchinfer.testing.s3 import S3Server
from tests.runtime.jobs import CHUNK_SIZE, LINES, RunJob
from tests.runtime.test_job_run import cancel_at_call


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server().running() as server, server.activate():
        yield server


@pytest.fixture
def store(s3: S3Server) -> JobStore:
    return JobStore(s3.url("jobs", uuid4().hex))


def lines_of(store: JobStore, name: str) -> list[dict[str, object]]:
    with store.open(name) as handle:
        return [json.loads(line) for line in handle]


def test_a_job_on_a_store_publishes_its_outputs_there_for_any_machine_to_read(
    run_job: RunJob, store: JobStore
) -> None:
    ended = run_job(EchoEngine(), output_dir=store.url)
    assert ended.state.is_completed(), ended.state
    answers = lines_of(store, "success.jsonl")
    assert [(r["line"], r["generations"][0]["text"]) for r in answers] == [  # type: ignore[index]
        (i + 1, f"echo: prompt {i}") for i in range(LINES)
    ]
    assert lines_of(store, "errors.jsonl") == []
    table = pd.read_parquet(store.url_of("results.parquet"))
    assert list(table["line"]) == list(range(1, LINES + 1))
    # Read from the store alone: as a machine that never saw the job's own folder.
    place = JobPlace(JobLayout(ended.layout.root.parent / "elsewhere"), store)
    progress = place.read_progress()
    assert progress is not None and progress.outputs_ready and progress.output_dir == store.url
    so_far = [json.loads(raw)["line"] for raw in finished_so_far(place)]
    assert so_far == list(range(1, LINES + 1))


@pytest.mark.slow
def test_a_cancelled_job_on_a_store_resumes_on_another_machine_sending_only_what_was_not_finished(
    run_job: RunJob, store: JobStore
) -> None:
    first = EchoEngine(delay_s=0.3, on_call=cancel_at_call(1))
    cancelled = run_job(first, output_dir=store.url)
    assert cancelled.state.is_cancelled(), cancelled.state
    answered = {r["line"] for r in lines_of(store, "success.jsonl")}
    assert CHUNK_SIZE <= len(answered) < LINES
    shutil.rmtree(cancelled.layout.root)  # the machine that ran it is gone; the store is all there is
    second = EchoEngine()
    resumed = run_job(second, output_dir=store.url)
    assert resumed.state.is_completed(), resumed.state
    sent_again = {line for call in second.calls for line in call}
    assert sent_again == set(range(1, LINES + 1)) - answered
    assert [r["line"] for r in lines_of(store, "success.jsonl")] == list(range(1, LINES + 1))


@pytest.mark.slow
def test_a_retry_takes_the_failed_lines_out_of_the_chunk_results_on_the_store(
    run_job: RunJob, store: JobStore
) -> None:
    down = ErrorDetail(code="http_503", message="the server is busy")
    failed = run_job(EchoEngine(fail_all=down), output_dir=store.url)
    assert failed.state.is_completed() and len(lines_of(store, "errors.jsonl")) == LINES
    elsewhere = JobPlace(JobLayout(failed.layout.root.parent / "adapter"), store)
    progress = elsewhere.read_progress()
    assert progress is not None
    assert strip_failed(elsewhere, progress) == LINES
    assert not (failed.layout.root.parent / "adapter").exists()  # read and written on the store only
    again = EchoEngine()
    retried = run_job(again, output_dir=store.url)
    assert retried.state.is_completed()
    assert sorted(line for call in again.calls for line in call) == list(range(1, LINES + 1))
    assert lines_of(store, "errors.jsonl") == [] and len(lines_of(store, "success.jsonl")) == LINES


@pytest.mark.slow
def test_a_file_rewritten_while_it_is_read_reads_as_one_whole_version(
    store: JobStore, tmp_path: Path
) -> None:
    # A job republishes its progress every few seconds while serve reads it for job_status.
    versions = [(str(i) * (1000 + 500 * (i % 3))).encode() for i in range(10)]
    local = tmp_path / "progress.json"
    stop = threading.Event()

    def rewrite() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            local.write_bytes(versions[i % len(versions)])
            store.publish(local, "work/progress.json")

    local.write_bytes(versions[0])
    store.publish(local, "work/progress.json")
    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = [store.read("work/progress.json") for _ in range(150)]
    finally:
        stop.set()
        writer.join()
    assert all(text in versions for text in seen)
