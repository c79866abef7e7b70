"""Screenshot a finished batchinfer job in the Prefect UI, for the README.

Runs a real ``batchinfer serve`` (Prefect server + UI, runner, HTTP adapter) against a loopback
fake OpenAI server, submits a ~300-prompt job through the adapter, waits for it to complete, then
drives Debian's headless Chromium over the DevTools protocol to capture:

* ``docs/images/prefect-ui-job.png``: the flow run page: run graph and Task Runs tab;
* ``docs/images/prefect-ui-artifacts.png``: the same page's Artifacts tab;
* ``docs/images/prefect-ui-artifact-table.png`` and ``...-markdown.png``: the end-of-job summary
  artifacts' own pages, when the flow made them.

It takes about 1-2 minutes (most of it the Prefect server's first start on a fresh database).

Usage (as root, or with chromium already installed)::

    .venv/bin/python scripts/ui_screenshot.py            # writes docs/images/*.png
    .venv/bin/python scripts/ui_screenshot.py --out-dir /tmp/shots --keep-tmp

Everything it starts (serve and its children, the fake model server, chromium) is stopped on the
way out, even on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from websockets.sync.client import connect
from websockets.sync.connection import Connection

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, serve_env, user_prompt, write_jsonl

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
MODEL_ID = "demo-model"
PROMPT_FILE_NAME = "questions.jsonl"
NUM_PROMPTS = 300
CHUNK_SIZE = 50  # 300 prompts -> infer-chunk-0000 .. infer-chunk-0005, several bars in the graph
WIDTH, HEIGHT = 1600, 1000
TOPICS = ["the water cycle", "compound interest", "TCP handshakes", "photosynthesis", "B-trees"]


def log(message: str) -> None:
    print(f"[ui-screenshot] {message}", flush=True)


# --- 1. Chromium -----------------------------------------------------------------------------------


def ensure_chromium() -> Path:
    """Debian's ``chromium`` package: the only browser this needs, and no extra Python dependency."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    for step in (["update"], ["install", "-y", "--no-install-recommends", "chromium"]):
        argv = apt + step
        log(f"{CHROMIUM} is missing; running: {' '.join(argv)}")
        # Output goes straight to our stdout, so the user sees what apt does.
        subprocess.run(argv, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not CHROMIUM.exists():
        raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


# --- 2./3. batchinfer serve and a job --------------------------------------------------------------


def write_models_file(path: Path, base_url: str) -> Path:
    models = [
        {
            "id": MODEL_ID,
            "engine": "openai",
            "base_url": base_url,
            "model": "fake-model",
            "max_concurrency": 8,
        }
    ]
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


def check_ui_served(served: ServeProcess) -> None:
    """The Prefect server that ``serve`` starts must serve the UI at its root, and tell the UI's
    JavaScript to call the API at the URL it was started with (``/ui-settings``)."""
    root = f"http://127.0.0.1:{served.prefect_port}"
    page = httpx.get(root + "/", follow_redirects=True, timeout=30)
    if page.status_code != 200 or "<html" not in page.text.lower():
        raise RuntimeError(f"no Prefect UI at {root}/: HTTP {page.status_code}")
    settings = httpx.get(root + "/ui-settings", timeout=30).json()
    if settings.get("api_url") != served.prefect_api_url:
        raise RuntimeError(f"the UI would call {settings.get('api_url')!r}, not {served.prefect_api_url}")
    log(
        f"Prefect UI served at {page.url} (default: {settings.get('default_ui')}; API: {settings['api_url']})"
    )


def run_job(served: ServeProcess, data_dir: Path) -> str:
    rows = (
        user_prompt(f"Question {i + 1}: explain {topic} in one sentence.")
        for i, topic in zip(range(NUM_PROMPTS), itertools.cycle(TOPICS), strict=False)
    )
    prompts = write_jsonl(data_dir / PROMPT_FILE_NAME, rows)
    job = served.submit_ok(
        {
            "model": MODEL_ID,
            "prompt_file_path": {"type": "filepath", "value": str(prompts)},
            "options": {"max_tokens": 64, "temperature": 0},
        }
    )
    job_id = str(job["job_id"])
    log(f"submitted job {job_id} ({NUM_PROMPTS} prompts, chunks of {CHUNK_SIZE}); waiting ...")
    done = served.wait(job_id, timeout_s=300)
    if done["status"] != "completed":
        raise RuntimeError(f"job ended {done['status']}: {json.dumps(done['metadata'])}")
    log(f"job completed: {done['metadata']['request_counts']}")
    return job_id


def wait_for_task_runs(served: ServeProcess, job_id: str, expected: int) -> None:
    """The adapter says ``completed`` from the flow run's state, but Prefect's task run recorder
    writes task runs in batches (see Settings.prefect_env): wait until the UI has them all."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.post(
            served.prefect_api_url + "/task_runs/count",
            json={
                "task_runs": {"flow_run_id": {"any_": [job_id]}, "state": {"type": {"any_": ["COMPLETED"]}}}
            },
            timeout=30,
        )
        if response.status_code == 200 and int(response.json()) >= expected:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect API did not record {expected} completed task runs of {job_id}")


def artifacts_of(served: ServeProcess, job_id: str) -> list[dict[str, Any]]:
    response = httpx.post(
        served.prefect_api_url + "/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [job_id]}}},
        timeout=30,
    )
    response.raise_for_status()
    return list(response.json())


# --- 4. Chromium over the DevTools protocol --------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page, over the ``websockets`` package that
    Prefect already depends on. ``chromium --screenshot`` alone shoots at a fixed (virtual) time;
    a SPA that fetches its data after loading needs "wait until this text is on the page"."""

    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # skip events and answers to nothing we wait for
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def shoot(self, url: str, out: Path, must_show: Sequence[str], timeout_s: float = 60.0) -> None:
        """Open ``url``, wait until the page's text contains every string of ``must_show`` (the
        data has arrived and rendered), let it settle, and save a PNG of the viewport."""
        # Via about:blank, so that the text checked below cannot be the previous page's: two tabs
        # of one flow run share a path and most of their text.
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        path = urlsplit(url).path
        probe = "[location.pathname, document.body ? document.body.innerText : '']"
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            at, text = self.evaluate(probe) or ["", ""]
            if at == path and all(s in text for s in must_show):
                break
            time.sleep(0.5)
        else:
            missing = [s for s in must_show if s not in text]
            failed = out.with_suffix(".failed.png")
            self._save(failed)
            raise RuntimeError(f"{url} never showed {missing} within {timeout_s:.0f} s; see {failed}")
        png = self._settled(timeout_s=30.0)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
        shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
        log(f"wrote {shown} ({len(png) // 1024} KiB) from {url}")

    def _capture(self) -> bytes:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        return base64.b64decode(shot["data"])

    def _settled(self, timeout_s: float) -> bytes:
        """The viewport once it stops changing. The run graph is a WebGL canvas, drawn (in
        software, on a busy machine: seconds) after its own fetch, so no page text says it is done;
        two identical captures a second apart do."""
        time.sleep(1.0)
        previous = self._capture()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(1.0)
            current = self._capture()
            if current == previous:
                return current
            previous = current
        log(f"warning: the page was still changing after {timeout_s:.0f} s; keeping the last capture")
        return previous

    def _save(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self._capture())


@contextlib.contextmanager
def chromium(binary: Path, profile: Path) -> Iterator[DevTools]:
    argv = [
        str(binary),
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",  # we run as root in a container; Chromium's sandbox refuses root
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        "--no-first-run",
        "--no-default-browser-check",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",  # the OS picks; Chromium writes it to DevToolsActivePort
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=(profile.parent / "chromium.log").open("wb")
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start; see {profile.parent / 'chromium.log'}")
            time.sleep(0.2)
        port = port_file.read_text().splitlines()[0]
        pages = [
            t
            for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            if t["type"] == "page"
        ]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30) as ws:
            tools = DevTools(ws)
            tools.call("Page.enable")
            # Fix the CSS viewport to exactly WIDTHxHEIGHT at 1x, whatever the window decorations.
            tools.call(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield tools
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- main ------------------------------------------------------------------------------------------


@dataclass
class Shot:
    path: str  # under the UI's origin
    out: Path
    must_show: tuple[str, ...]


# Artifacts worth a page of their own: the end-of-job summary. The progress artifact is a bar.
ARTIFACT_PAGES = ("table", "markdown")


def plain(text: str | None) -> str | None:
    """``text`` if the UI shows it verbatim (descriptions are rendered as markdown), else None."""
    if not text or any(c in text for c in "*_`#[]<>|\n"):
        return None
    return text


def plan_shots(
    ui_base: str, job_id: str, job_name: str, artifacts: list[dict[str, Any]], out_dir: Path
) -> list[Shot]:
    """What to capture, and for each the text that proves its data has rendered. The V2 UI (React)
    is what ``/`` redirects to by default (PREFECT_SERVER_UI_V2_ENABLED); tabs are ``?tab=``."""
    run_page = f"{ui_base}/runs/flow-run/{job_id}"
    described = [d for a in artifacts if (d := plain(a.get("description")))]
    shots = [
        Shot(
            f"{run_page}?tab=TaskRuns",
            out_dir / "prefect-ui-job.png",
            (job_name, "infer-chunk-0000", "gather"),
        ),
        Shot(f"{run_page}?tab=Artifacts", out_dir / "prefect-ui-artifacts.png", (job_name, *described)),
    ]
    for kind in ARTIFACT_PAGES:
        artifact = next((a for a in artifacts if a.get("type") == kind), None)
        if artifact is None:
            log(f"the job has no {kind} artifact: no page of it to capture")
            continue
        # Its page titles itself with the flow run's name and the artifact's id.
        shots.append(
            Shot(
                f"{ui_base}/artifacts/artifact/{artifact['id']}",
                out_dir / f"prefect-ui-artifact-{kind}.png",
                (job_name, str(artifact["id"])),
            )
        )
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, Prefect DB)")
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir.resolve()

    started = time.monotonic()
    binary = ensure_chromium()
    tmp = Path(tempfile.mkdtemp(prefix="batchinfer-ui-"))
    # Unwound in reverse: chromium, then serve (its runner may still talk to the model server),
    # then the model server, then the temp dir; on success, error or Ctrl-C alike.
    with contextlib.ExitStack() as stack:
        if args.keep_tmp:
            stack.callback(log, f"kept {tmp}")
        else:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        # Named like the default data dir, so the paths the markdown artifact shows look familiar.
        home, data = tmp / ".batchinfer", tmp / "data"
        home.mkdir()
        data.mkdir()
        # 20 ms a request: the chunks overlap and last long enough to show as bars in the graph.
        model_server = stack.enter_context(FakeOpenAIServer(latency_ms=20))
        models = write_models_file(tmp / "models.yaml", model_server.base_url)
        env = serve_env(home, models, roots=[data, home], BATCHINFER_CHUNK_SIZE=str(CHUNK_SIZE))
        served = ServeProcess(home=home, env=env)
        stack.callback(served.stop)  # before start(): a Ctrl-C while it starts stops it too
        log(f"starting batchinfer serve (Prefect on :{served.prefect_port}, adapter on :{served.port}) ...")
        served.start()
        check_ui_served(served)
        job_id = run_job(served, data)
        wait_for_task_runs(served, job_id, expected=-(-NUM_PROMPTS // CHUNK_SIZE) + 2)  # + validate, gather

        artifacts = artifacts_of(served, job_id)
        log(f"artifacts of the job: {[a.get('type') for a in artifacts]}")
        ui_base = f"http://127.0.0.1:{served.prefect_port}/v2"
        shots = plan_shots(ui_base, job_id, f"{MODEL_ID} · {PROMPT_FILE_NAME}", artifacts, out_dir)
        browser = stack.enter_context(chromium(binary, tmp / "chromium-profile"))
        for shot in shots:
            browser.shoot(shot.path, shot.out, shot.must_show)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
