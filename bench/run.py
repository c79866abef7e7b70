"""`make bench`: batchinfer against the fastest plain client and the naive Prefect pattern, side by
side in one run, on the same prompts and the same loopback model servers.

    python -m bench.run [--prompts 10000] [--latencies 0,50] [--big-lines 1000000] [--smoke]

Writes ``results.json``, ``results.csv`` and ``results.png`` to ``--out`` (default bench/results) and
prints the table. Every figure is measured here, in this run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from batchinfer.settings import Settings
from batchinfer.testing.served import ServeProcess, seed_database, serve_env, user_prompt, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, int]:
    """Run a command; return its stdout and its peak RSS in KiB (from the kernel, via wait4)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read())),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read())),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for reader in readers:
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {b''.join(err_chunks).decode()[-3000:]}")
    return b"".join(out_chunks).decode(), int(usage.ru_maxrss)


def start_fake_server(latency_ms: float, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """The fake model server in a process of its own; ``extra``: more of its flags (``--capacity``)."""
    argv = [
        PY,
        "-m",
        "batchinfer.testing.fake_openai",
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def row(
    benchmark: str,
    mode: str,
    latency: float | None,
    requests: int,
    seconds: float,
    rss_kib: int | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "mode": mode,
        "latency_ms": latency,
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1) if seconds else None,
        "peak_rss_mb": round(rss_kib / 1024, 1) if rss_kib else None,
        **extra,
    }


def flow_run_seconds(served: ServeProcess, job_id: str) -> float:
    """The flow run's own duration (validate + infer + gather), from the Prefect API."""
    run = httpx.get(f"{served.prefect_api_url}/flow_runs/{job_id}", timeout=10).json()
    return float(run["total_run_time"]) or float(run["estimated_run_time"])


def job_via_run(
    served: ServeProcess, model: str, prompts: Path, out_dir: Path
) -> tuple[dict[str, Any], float, int]:
    """`batchinfer run` in the foreground against the serve's Prefect server."""
    env = {**served.env, "PREFECT_API_URL": served.prefect_api_url}
    argv = [PY, "-m", "batchinfer.cli", "run", str(prompts), "--model", model, "--max-tokens", "16"]
    start = time.perf_counter()
    out, rss = run_measured([*argv, "--output-dir", str(out_dir)], env)
    wall = time.perf_counter() - start
    job = json.loads(out[out.index("{") :])
    if job["status"] != "completed":
        raise RuntimeError(f"batchinfer run did not complete: {job}")
    return job, wall, rss


def job_via_serve(served: ServeProcess, model: str, prompts: Path) -> tuple[dict[str, Any], float, int]:
    """Submit over HTTP, poll to completion; peak RSS of the flow-run process, sampled."""
    runner_pids = {p.pid for p in psutil.Process(served.proc.pid).children(recursive=True)}  # type: ignore[union-attr]
    peak = 0
    start = time.perf_counter()
    job_id = served.submit_ok(
        {
            "model": model,
            "prompt_file_path": {"type": "filepath", "value": str(prompts)},
            "options": {"max_tokens": 16},
        }
    )["job_id"]
    while True:
        for proc in psutil.Process(served.proc.pid).children(recursive=True):  # type: ignore[union-attr]
            if proc.pid not in runner_pids:  # the flow-run process of this job
                with contextlib.suppress(psutil.NoSuchProcess):
                    peak = max(peak, proc.memory_info().rss // 1024)
        job = served.status(job_id).json()
        if job["status"] in {"completed", "failed"}:
            break
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if job["status"] != "completed":
        raise RuntimeError(f"job failed: {job}")
    return job, wall, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--latencies", default="0,50", help="server latencies, ms, comma-separated")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--naive-prompts", type=int, default=2000, help="the naive pattern runs ~20 req/s: fewer prompts"
    )
    parser.add_argument("--httpx-prompts", type=int, default=2000, help="httpx is slow: fewer prompts")
    parser.add_argument("--big-lines", type=int, default=1_000_000, help="0 skips the big-file RSS run")
    parser.add_argument("--overhead-runs", type=int, default=5)
    parser.add_argument("--transformers", default="tiny,smollm2", help="models for (5); empty skips")
    parser.add_argument(
        "--sweep", action="store_true", help="also sweep chunk size and max_concurrency (at the last latency)"
    )
    parser.add_argument(
        "--no-local-engines",
        dest="local_engines",
        action="store_false",
        help="skip (6): transformers vs CTranslate2 (vs llama.cpp) on the embedded SmolLM2",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the bench runs")
    parser.add_argument(
        "--prefect-db-template",
        type=Path,
        help="a migrated Prefect database for serve's and the fresh `batchinfer run`'s Prefect server "
        "to start from (the smoke test's: the fresh run's figure then leaves out a migration)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.prefect_db_template is not None and not args.prefect_db_template.is_file():
        parser.error(
            f"--prefect-db-template {args.prefect_db_template}: no such file; give a migrated Prefect "
            "database (the test suite keeps one in .pytest_cache/d/prefect-db-templates/) or leave it out"
        )
    if args.smoke:
        args.prompts, args.latencies, args.naive_prompts, args.httpx_prompts = 40, "0", 40, 40
        args.big_lines, args.overhead_runs, args.transformers = 400, 1, "tiny"
    latencies = [float(x) for x in args.latencies.split(",") if x]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batchinfer-bench-") as tmp_text:
        tmp = Path(tmp_text)
        rows += http_benchmarks(args, latencies, tmp)
        for model in filter(None, args.transformers.split(",")):
            from bench.transformers_vs_generate import run as run_transformers

            size = (
                dict(prompts=8, max_tokens=8, repeats=1)
                if args.smoke
                else dict(prompts=64 if model == "tiny" else 32, max_tokens=32, repeats=2)
            )
            rows += run_transformers(
                model=model, batch_size=8, threads=1, work_dir=Settings().home / "bench", **size
            )  # type: ignore[arg-type]
    if args.local_engines:
        from bench.local_engines import run as run_local_engines

        rows += run_local_engines(**(dict(prompts=4, max_tokens=8) if args.smoke else {}))
    write_results(rows, args.out)
    print_table(rows)
    return 0


class ServerClock:
    """What the loopback model server saw of one contestant: its steady rate (answers/s between
    10% and 90% of the answers) and how long after the contestant's process started the first
    request arrived. Taken at the server, so every contestant is measured the same way."""

    def __init__(self, base_url: str) -> None:
        self._stats = base_url.removesuffix("/v1") + "/stats"

    def start(self) -> float:
        httpx.post(self._stats + "/reset", timeout=10).raise_for_status()
        return time.time()

    def figures(self, started: float, wall: float, rss_kib: int | None) -> dict[str, Any]:
        stats = httpx.get(self._stats, timeout=10).json()
        first = stats["first_request_at"]
        return {
            "steady_rps": stats["steady_rps"],
            "first_request_s": round(first - started, 2) if first else None,
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(rss_kib / 1024, 1) if rss_kib else None,
            "requests": stats["requests_total"],
        }


def measured(clock: ServerClock, argv: list[str], env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Run a contestant's process; its stdout and the figures, wall time from process start."""
    started = clock.start()
    begin = time.perf_counter()
    out, rss = run_measured(argv, env)
    return out, clock.figures(started, time.perf_counter() - begin, rss)


def http_row(label: str, latency: float, figures: dict[str, Any], **extra: Any) -> dict[str, Any]:
    rps = figures["steady_rps"]
    return {
        "benchmark": "http",
        "mode": label,
        "latency_ms": latency,
        **figures,
        "requests_per_s": rps,
        **extra,
    }


def client_row(
    label: str, mode: str, url: str, prompts: Path, args: argparse.Namespace, env: dict[str, str], lat: float
) -> dict[str, Any]:
    argv = [PY, "-m", "bench.client_modes", mode, "--base-url", url, "--prompts", str(prompts)]
    out, figures = measured(ServerClock(url), [*argv, "--concurrency", str(args.concurrency)], env)
    result = json.loads(out.strip().splitlines()[-1])
    if result["ok"] != result["requests"]:
        raise RuntimeError(f"{mode}: only {result['ok']} of {result['requests']} requests succeeded")
    return http_row(label, lat, figures)


def run_rows(
    url: str,
    model: str,
    prompts: Path,
    home: Path,
    env: dict[str, str],
    lat: float,
    database_template: Path | None = None,
) -> list[dict[str, Any]]:
    """`batchinfer run` as a user types it, no PREFECT_API_URL: on a fresh data dir (it starts the
    warm local Prefect server), then the same again (it finds that server running). With
    ``database_template`` (the smoke test's, whose figures nobody keeps) the data dir's Prefect
    database starts migrated, which spares the smoke run the ~10 s of a migration."""
    env = {**env, "BATCHINFER_HOME": str(home), "BATCHINFER_LOCAL_SERVER_IDLE_S": "600"}
    env.pop("PREFECT_API_URL", None)
    if database_template is not None:
        seed_database(database_template, home / "prefect")
    rows = []
    try:
        for n, label in enumerate(("`batchinfer run`, fresh data dir", "`batchinfer run`, the same again")):
            argv = [PY, "-m", "batchinfer.cli", "run", str(prompts), "--model", model, "--max-tokens", "16"]
            # An output dir of its own: the same one would resume the first job, sending nothing.
            out, figures = measured(ServerClock(url), [*argv, "--output-dir", str(home / f"out-{n}")], env)
            job = json.loads(out[out.index("{") :])
            if job["status"] != "completed":
                raise RuntimeError(f"batchinfer run did not complete: {job}")
            rows.append(http_row(label, lat, figures))
    finally:
        subprocess.run([PY, "-m", "batchinfer.cli", "server", "stop"], env=env, cwd=ROOT, check=False)
    return rows


def serve_row(served: ServeProcess, url: str, model: str, prompts: Path, lat: float) -> dict[str, Any]:
    clock = ServerClock(url)
    started = clock.start()
    _job, wall, rss_kib = job_via_serve(served, model, prompts)
    return http_row("submitted to `serve` (submit -> completed)", lat, clock.figures(started, wall, rss_kib))


def latency_rows(
    args: argparse.Namespace, served: ServeProcess, files: dict[str, Path], url: str, lat: float, tmp: Path
) -> list[dict[str, Any]]:
    env = {**served.env, "PREFECT_API_URL": served.prefect_api_url}
    model, prompts = f"fake-{int(lat)}ms", files["prompts"]
    print(f"== {int(lat)} ms latency", flush=True)
    rows = [client_row(BARE_FIRST, "aiohttp-loop", url, prompts, args, env, lat)]
    rows.append(client_row("plain httpx loop", "httpx-loop", url, files["httpx"], args, env, lat))
    rows.append(client_row("batchinfer engine alone, no Prefect", "engine", url, prompts, args, env, lat))
    rows.append(client_row(ENGINE_AIOHTTP, "engine-aiohttp", url, prompts, args, env, lat))
    rows.append(client_row(PREFECT_SCRIPT, "prefect-chunks", url, prompts, args, env, lat))
    home = tmp / f"run-home-{int(lat)}"
    rows += run_rows(url, model, prompts, home, served.env, lat, args.prefect_db_template)
    rows.append(serve_row(served, url, model, prompts, lat))
    rows.append(client_row(BARE_LAST, "aiohttp-loop", url, prompts, args, env, lat))
    for r in rows:
        print(f"   {r['mode']}: {r['steady_rps']} req/s, wall {r['wall_s']} s", flush=True)
    return rows


BARE_FIRST, BARE_LAST = "bare aiohttp loop (first)", "bare aiohttp loop (last)"
ENGINE_AIOHTTP = "batchinfer engine alone, http_client aiohttp"
PREFECT_SCRIPT = "a short Prefect script: 10 tasks, each an aiohttp loop"
NAIVE = "naive Prefect: a task per prompt"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each http row's steady rate over the mean of the bare loop's two runs at its latency."""
    for lat in {r["latency_ms"] for r in rows if r["benchmark"] == "http"}:
        at = [r for r in rows if r["benchmark"] == "http" and r["latency_ms"] == lat]
        bare = [r["steady_rps"] for r in at if r["mode"] in (BARE_FIRST, BARE_LAST) and r["steady_rps"]]
        for r in at:
            if bare and r["steady_rps"]:
                r["ratio_to_ceiling"] = round(r["steady_rps"] / statistics.mean(bare), 3)


def http_benchmarks(args: argparse.Namespace, latencies: list[float], tmp: Path) -> list[dict[str, Any]]:
    files = {
        name: write_jsonl(
            tmp / f"{name}.jsonl", (user_prompt(f"{name} prompt {i} about a topic") for i in range(n))
        )
        for name, n in (
            ("prompts", args.prompts),
            ("naive", args.naive_prompts),
            ("httpx", args.httpx_prompts),
        )
    }
    one = write_jsonl(tmp / "one.jsonl", [user_prompt("one prompt")])
    servers = {lat: start_fake_server(lat) for lat in latencies}
    models_file = tmp / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": bench_models(args, servers, latencies)}))
    home = tmp / "home"
    home.mkdir()
    env = serve_env(home, models_file, roots=[tmp])
    served = ServeProcess(home=home, env=env, database_template=args.prefect_db_template).start()
    rows: list[dict[str, Any]] = []
    try:
        for lat, (_, url) in servers.items():
            rows += latency_rows(args, served, files, url, lat, tmp)
        rows.append(overhead_row(args, served, f"fake-{int(latencies[0])}ms", one, latencies[0]))
        if args.sweep:
            rows += sweep(served, files["prompts"], tmp, latencies[-1])
        if args.big_lines:
            rows += memory_benchmarks(args, served, f"fake-{int(latencies[0])}ms", files["prompts"], tmp)
        # Last: thousands of task runs leave the Prefect server busy recording them for a while,
        # which would slow whatever ran after it.
        env = {**served.env, "PREFECT_API_URL": served.prefect_api_url}
        for lat, (_, url) in servers.items():
            rows.append(client_row(NAIVE, "naive-prefect", url, files["naive"], args, env, lat))
        add_ratios(rows)
    finally:
        served.stop()
        for proc, _ in servers.values():
            proc.terminate()
    return rows


def bench_models(
    args: argparse.Namespace, servers: dict[float, tuple[Any, str]], latencies: list[float]
) -> list[dict[str, Any]]:
    def model(model_id: str, url: str, concurrency: int) -> dict[str, Any]:
        return {
            "id": model_id,
            "engine": "openai",
            "base_url": url,
            "model": "fake-model",
            "max_concurrency": concurrency,
        }

    models = [model(f"fake-{int(lat)}ms", url, args.concurrency) for lat, (_, url) in servers.items()]
    sweep_url = servers[latencies[-1]][1]
    return models + [model(f"sweep-c{c}", sweep_url, c) for c in SWEEP_CONCURRENCY]


def overhead_row(
    args: argparse.Namespace, served: ServeProcess, model: str, one: Path, latency: float
) -> dict[str, Any]:
    walls = [job_via_serve(served, model, one)[1] for _ in range(args.overhead_runs)]
    return row(
        "overhead",
        "one-prompt job, submit -> completed (median)",
        latency,
        1,
        statistics.median(walls),
        None,
        runs=[round(w, 2) for w in walls],
    )


SWEEP_CHUNK_SIZES = (25, 100, 250, 1000)
SWEEP_CONCURRENCY = (16, 32, 64, 128, 256)


def sweep(served: ServeProcess, prompts: Path, tmp: Path, latency: float) -> list[dict[str, Any]]:
    """`batchinfer run` jobs over chunk sizes (at concurrency 64) and over max_concurrency (at the
    default chunk size): the measurements behind the defaults."""
    rows = []
    for size in SWEEP_CHUNK_SIZES:
        served.env["BATCHINFER_CHUNK_SIZE"] = str(size)
        try:
            job, _wall, rss = job_via_run(served, "sweep-c64", prompts, tmp / f"sweep-s{size}")
        finally:
            served.env.pop("BATCHINFER_CHUNK_SIZE")
        n = job["metadata"]["request_counts"]["total"]
        rows.append(
            row(
                "sweep",
                f"chunk_size={size}, max_concurrency=64",
                latency,
                n,
                flow_run_seconds(served, job["job_id"]),
                rss,
            )
        )
    for concurrency in SWEEP_CONCURRENCY:
        job, _wall, rss = job_via_run(served, f"sweep-c{concurrency}", prompts, tmp / f"sweep-c{concurrency}")
        n = job["metadata"]["request_counts"]["total"]
        rows.append(
            row(
                "sweep",
                f"chunk_size=100, max_concurrency={concurrency}",
                latency,
                n,
                flow_run_seconds(served, job["job_id"]),
                rss,
            )
        )
    return rows


def memory_benchmarks(
    args: argparse.Namespace, served: ServeProcess, model: str, small: Path, tmp: Path
) -> list[dict[str, Any]]:
    """Peak RSS of a `batchinfer run` job over the small file and over a big one (~200 B a line)."""
    big = tmp / "big.jsonl"
    pad = "x" * 150
    with open(big, "w", encoding="utf-8") as handle:
        for i in range(args.big_lines):
            handle.write(json.dumps(user_prompt(f"big {i} {pad}")) + "\n")
    rows = []
    for path, lines in ((small, args.prompts), (big, args.big_lines)):
        job, wall, rss = job_via_run(served, model, path, tmp / f"mem-{lines}")
        rows.append(
            row(
                "memory",
                f"`batchinfer run`, {lines:,} lines ({path.stat().st_size / 1e6:.0f} MB)",
                None,
                lines,
                flow_run_seconds(served, job["job_id"]),
                rss,
                wall_s=round(wall, 2),
            )
        )
    rows[-1]["rss_ratio_to_small"] = round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 2)
    return rows


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    fields = sorted(
        {k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99
    )
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    try:
        from bench.chart import draw
    except ImportError as exc:  # matplotlib is the optional `bench` extra
        print(f"(no chart: {exc})")
        return
    draw(rows, out / "results.png")


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        "benchmark",
        "mode",
        "latency_ms",
        "requests",
        "seconds",
        "requests_per_s",
        "ratio_to_ceiling",
        "first_request_s",
        "wall_s",
        "peak_rss_mb",
        "tokens_per_s",
        "ratio",
        "ratio_to_transformers",
        "same_as_transformers",
    ]
    present = [c for c in columns if any(c in r for r in rows)]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in present}
    print(" | ".join(c.ljust(widths[c]) for c in present))
    print("-+-".join("-" * widths[c] for c in present))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in present))


if __name__ == "__main__":
    sys.exit(main())
