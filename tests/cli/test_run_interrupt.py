"""Ctrl-C or SIGTERM on `batchinfer run` stops it within seconds: no more requests reach the model,
its temporary Prefect server and every child process are gone, the job ends cancelled with what
finished kept, and the last words say how to finish it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import (
    prompt_texts,
    read_jsonl,
    seed_database,
    serve_env,
    wait_for,
    write_prompts,
)

pytestmark = pytest.mark.e2e
PROMPTS = 3000  # ~10 s of work on fake-slow (25 ms a request, 8 at once): long enough to interrupt


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_stops_within_seconds_keeping_what_finished(
    tmp_path: Path,
    models_file: Path,
    slow_openai: FakeOpenAIServer,
    prefect_db_template: Path,
    sig: signal.Signals,
) -> None:
    home, out, tag = tmp_path / "home", tmp_path / "out", f"interrupt-{sig.name}"
    seed_database(prefect_db_template, home / "prefect")
    prompts = write_prompts(tmp_path, tag, prompt_texts(tag, PROMPTS))
    argv = [sys.executable, "-m", "batchinfer.cli", "run", str(prompts), "--model", "fake-slow"]
    argv += ["--max-tokens", "8", "--output-dir", str(out)]
    # No PREFECT_API_URL: the run starts a temporary Prefect server of its own.
    env = serve_env(home, models_file, roots=[tmp_path])
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: slow_openai.sent(tag) >= 100, 120, "the job's first requests")
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert any("prefect" in " ".join(p.cmdline()) for p in family[1:]), "no temporary Prefect server"
        at_signal, started = slow_openai.sent(tag), time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - started < 10
    assert proc.returncode == 128 + sig, stderr[-3000:]
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], f"left running: {alive}"
    # Every process of the run is gone: once the model has answered what it had, the count is final.
    wait_for(lambda: slow_openai.in_flight == 0, 30, "the model to answer what it had")
    assert slow_openai.sent(tag) - at_signal < 100, "requests went on after the signal"

    job = json.loads(stdout)
    assert job["metadata"]["error"]["code"] == "cancelled"
    answered, failed = read_jsonl(out / "success.jsonl"), read_jsonl(out / "errors.jsonl")
    assert len(answered) >= at_signal - 16 and len(answered) + len(failed) == PROMPTS  # 8 in flight
    assert {r["error"]["code"] for r in failed} == {"cancelled"}
    last = stderr.strip().splitlines()[-1]
    assert f"again with --output-dir {out}" in last and "Traceback" not in stderr
