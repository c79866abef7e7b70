"""A running ``batchinfer serve`` for end-to-end tests and benchmarks: a real Prefect server, runner
and adapter in a subprocess, driven over HTTP like a user would; plus small JSONL helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from batchinfer.cli import preflight
from batchinfer.pipeline.jobfiles import JobLayout, read_progress

TERMINAL = {"completed", "failed"}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now and never handed out before in this process: the kernel may give
    the same ephemeral port to two binds in a row once the first socket is closed, and a test that asks
    for a serve's two ports would then get one port twice."""
    while True:
        port = preflight.free_port()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def user_prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "text": text}]


def prompt_texts(tag: str, n: int) -> list[str]:
    """``n`` distinct prompt texts; a per-test ``tag`` keeps a shared model server's counts apart."""
    return [f"{tag} question {i}" for i in range(n)]


def write_prompts(directory: Path, tag: str, texts: list[str]) -> Path:
    return write_jsonl(directory / f"{tag}.jsonl", [user_prompt(t) for t in texts])


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it holds; an AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def seed_database(template: Path, prefect_home: Path) -> None:
    """Put a copy of the migrated database ``template`` where a server of ``prefect_home`` opens its
    own (``Settings.prefect_env``), so that it starts in seconds rather than migrating a fresh one."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, prefect_home / "prefect.db")


@dataclass
class ServeProcess:
    """``batchinfer serve`` as a subprocess, with the HTTP client a user would have."""

    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    prefect_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None  # where it starts: Prefect reads prefect.toml and .env there
    database_template: Path | None = None  # a migrated Prefect database for its server to start from

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def start(self, timeout_s: float = 150.0) -> ServeProcess:
        if self.database_template is not None:
            seed_database(self.database_template, self.home / "prefect")
        argv = [sys.executable, "-m", "batchinfer.cli", "serve"]
        argv += ["--port", str(self.port), "--prefect-port", str(self.prefect_port)]
        log = open(self.home / "serve-stdout.log", "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"serve did not come up in {timeout_s} s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        family = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # serve did not stop in time: kill it and everything it started, so no Prefect
            # server or runner is left behind to skew the next test or benchmark.
            self.proc.kill()
            for child in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            return self.proc.wait()

    def runner(self) -> psutil.Process:
        """The runner process (``batchinfer.cli.runner``) among serve's descendants."""
        assert self.proc is not None, "serve is not running"
        for process in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "batchinfer.cli.runner" in process.cmdline():
                    return process
        raise AssertionError("no runner process under serve")

    def job_processes(self, job_id: str) -> list[psutil.Process]:
        """The processes under serve running this job's flow run: none once the job's process has
        ended, so nothing of it can reach a model. Prefect names the run in the environment of a
        process it starts; a process forked from the fork server has the fork server's, so the pid
        the job wrote in its progress file names that one."""
        assert self.proc is not None, "serve is not running"
        progress = read_progress(JobLayout(self.home / "jobs" / job_id))
        found = []
        for process in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if (progress is not None and process.pid == progress.pid) or process.environ().get(
                    "PREFECT__FLOW_RUN_ID"
                ) == job_id:
                    found.append(process)
        return found

    def log_tail(self, chars: int = 4000) -> str:
        text = ""
        for log in sorted(self.home.rglob("*.log")):
            text += f"\n--- {log}\n" + log.read_text(errors="replace")[-chars:]
        return text

    # The contract, as an HTTP client sees it.
    def submit(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + "/batch_inference/submit_job", json=body, timeout=30)

    def status(self, job_id: str) -> httpx.Response:
        return httpx.get(self.url + "/batch_inference/job_status", params={"job_id": job_id}, timeout=30)

    def resume(self, job_id: str) -> httpx.Response:
        return httpx.post(self.url + "/batch_inference/resume_job", params={"job_id": job_id}, timeout=30)

    def cancel(self, job_id: str) -> httpx.Response:
        return httpx.post(self.url + "/batch_inference/cancel_job", params={"job_id": job_id}, timeout=30)

    def jobs(self, **params: Any) -> httpx.Response:
        return httpx.get(self.url + "/batch_inference/jobs", params=params, timeout=30)

    def submit_ok(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.submit(body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, job_id: str, timeout_s: float = 120.0, seen: list[str] | None = None) -> dict[str, Any]:
        """Poll until the job is terminal; ``seen`` collects every status observed, in order."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.status(job_id)
            assert response.status_code == 200, f"job_status of {job_id}: {response.text}\n{self.log_tail()}"
            job = response.json()
            if seen is not None and (not seen or seen[-1] != job["status"]):
                seen.append(job["status"])
            if job["status"] in TERMINAL:
                return dict(job)
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not done in {timeout_s} s: {job}\n{self.log_tail()}")


def serve_env(home: Path, models_file: Path, roots: list[Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHINFER_"))}
    # A `batchinfer run` without PREFECT_API_URL gets a temporary server that stops with it, unless
    # ``extra`` asks for the warm one: a test must leave no server running behind it.
    env["BATCHINFER_LOCAL_SERVER_IDLE_S"] = "0"
    env.update(
        BATCHINFER_HOME=str(home),
        BATCHINFER_MODELS=str(models_file),
        BATCHINFER_ALLOWED_ROOTS=os.pathsep.join(str(r) for r in roots),
        BATCHINFER_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env
