"""`make bench-pacing`: a batch job as a guest on a model server with a capacity (issue 31).

    python -m bench.pacing [--prompts 3000] [--capacity 16] [--latency-ms 50] [--out bench/results]

Against the fake model server with a capacity (``--capacity`` C requests in flight at
``--latency-ms``, then slower as (n / C)^2, so that it does less in all, as a preempting vLLM does),
each figure a `batchinfer run` timed from process start to exit, sharing one Prefect server:

* **concurrency**: fixed ``max_concurrency`` 8, 16, 32 and 64 (the default before ``auto``) against
  a model that sets none (``auto``, up to its default ceiling of 64): lines a second, and ``auto``
  as a ratio to the best fixed one and to 64;
* **per-minute limits**: the server enforcing a requests-a-minute limit over 1 s slices; a job
  without ``max_requests_per_minute``, one with it, and two at once sharing it (through Prefect's
  rate limits): the rate achieved as a share of the limit, and the share of requests answered 429;
* **room for interactive traffic**: a probe client sending one request at a time, its p50/p95
  latency with the server idle, during an ``auto`` job, and during a ``priority: background`` job.

Writes ``pacing.json`` to ``--out`` and prints it. Every figure is measured here, in this run;
nothing is asserted. The server runs in a process of its own, on the same 2 cores as the jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from batchinfer.testing.prefect_server import PrefectServer
from batchinfer.testing.served import user_prompt, write_jsonl
from bench.run import PY, run_measured, start_fake_server

CHUNK_SIZE = 250  # the same chunks for every contestant: only the pace differs
FIXED = (8, 16, 32, 64)


@contextmanager
def model_server(latency_ms: float, *flags: str) -> Iterator[str]:
    proc, base_url = start_fake_server(latency_ms, *flags)
    try:
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def server_stats(base_url: str, reset: bool = False) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    answer = httpx.post(root + "/stats/reset") if reset else httpx.get(root + "/stats")
    return dict(answer.json())


@contextmanager
def contest(work: Path, models: list[dict[str, Any]]) -> Iterator[Callable[..., dict[str, Any]]]:
    """A Prefect server and a models file; yields ``run(model, prompts)``: one timed job."""
    work.mkdir(parents=True, exist_ok=True)
    models_file = work / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}))
    with PrefectServer(home=work / "prefect") as prefect:
        env = prefect.env(
            BATCHINFER_HOME=str(work / "home"),
            BATCHINFER_MODELS=str(models_file),
            BATCHINFER_ALLOWED_ROOTS=str(work.parent),
            BATCHINFER_CHUNK_SIZE=str(CHUNK_SIZE),
        )

        def run(model: str, prompts: Path) -> dict[str, Any]:
            argv = [PY, "-m", "batchinfer.cli", "run", str(prompts), "--model", model, "--max-tokens", "16"]
            start = time.perf_counter()
            out, _ = run_measured(argv, env)
            seconds = time.perf_counter() - start
            job = json.loads(out[out.index("{") :])
            counts = job["metadata"]["request_counts"]
            return {
                "seconds": round(seconds, 2),
                "completed": counts["completed"],
                "failed": counts["failed"],
                "lines_per_s": round(counts["total"] / seconds, 1),
                "pace": job["metadata"].get("pace"),
            }

        yield run


def prompts_file(work: Path, name: str, count: int) -> Path:
    return write_jsonl(work / f"{name}.jsonl", [user_prompt(f"{name} {i}") for i in range(count)])


def concurrency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    flags = ("--capacity", str(args.capacity), "--queue-limit", str(16 * args.capacity))
    with model_server(args.latency_ms, *flags) as base:
        entry: dict[str, Any] = {"engine": "openai", "base_url": base, "model": "m", "max_retries": 8}
        models: list[dict[str, Any]] = [{"id": f"fixed-{n}", **entry, "max_concurrency": n} for n in FIXED]
        models.append({"id": "auto", **entry})  # no max_concurrency: the default, auto
        prompts = prompts_file(work, "capacity", args.prompts)
        rows: dict[str, Any] = {}
        with contest(work / "concurrency", models) as run:
            for model in models:
                server_stats(base, reset=True)
                rows[model["id"]] = run(model["id"], prompts) | {
                    "max_in_flight": server_stats(base)["max_in_flight"]
                }
    best = max(rows[f"fixed-{n}"]["lines_per_s"] for n in FIXED)
    auto = rows["auto"]["lines_per_s"]
    return {
        "runs": rows,
        "auto_to_best_fixed": round(auto / best, 2),
        "auto_to_fixed_64": round(auto / rows["fixed-64"]["lines_per_s"], 2),
    }


def per_minute(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Requests a minute (a job without the limit set, with it, two sharing it), then tokens."""
    rpm, tpm = args.rpm, args.tpm
    with model_server(20, "--rpm", str(rpm)) as base:
        rows = limited_runs(work / "rpm", base, "max_requests_per_minute", rpm, rpm // 60 * 15, unpaced=True)
    with model_server(20, "--tpm", str(tpm)) as base:
        rows |= limited_runs(work / "tpm", base, "max_tokens_per_minute", tpm, rpm // 60 * 15, unpaced=False)
    return {"requests_per_minute": rpm, "tokens_per_minute": tpm, "runs": rows}


def limited_runs(
    work: Path, base: str, field: str, limit: int, lines: int, unpaced: bool
) -> dict[str, dict[str, Any]]:
    """Jobs against a server enforcing ``limit`` (``field`` names it), ``lines`` in all; for each,
    the share of requests answered 429 and the server's steady rate as a share of the limit."""
    entry = {"engine": "openai", "base_url": base, "model": "m", "max_retries": 20, "max_backoff_s": 2}
    models = [{"id": "unpaced", **entry}, {"id": "paced", **entry, field: limit}]
    kind = field.removeprefix("max_").removesuffix("_per_minute")
    cases = [(f"{kind}: without the limit", "unpaced", 1)] if unpaced else []
    cases += [(f"{kind}: with it", "paced", 1), (f"{kind}: two jobs sharing it", "paced", 2)]
    rows: dict[str, dict[str, Any]] = {}
    with contest(work, models) as run:
        for name, model, jobs in cases:
            server_stats(base, reset=True)
            files = [prompts_file(work, f"{kind}-{model}-{jobs}-{j}", lines // jobs) for j in range(jobs)]
            with ThreadPoolExecutor(jobs) as pool:
                results = list(pool.map(lambda f: run(model, f), files))  # noqa: B023
            stats = server_stats(base)
            answered, refused = int(stats["statuses"].get("200", 0)), int(stats["statuses"].get("429", 0))
            per_request = stats["tokens_admitted"] / answered if kind == "tokens" and answered else 1
            rows[name] = {
                "answered": answered,
                "refused_429": refused,
                "share_429": round(refused / max(1, answered + refused), 4),
                "steady_share_of_limit": round((stats["steady_rps"] or 0) * per_request * 60 / limit, 2),
                "failed_lines": sum(r["failed"] for r in results),
            }
    return rows


def probe_latencies(base: str, stop: threading.Event, seconds: float | None = None) -> list[float]:
    """One request at a time, as an interactive user would send them, until ``stop`` (or
    ``seconds``): the latencies of those that shared the server with other requests (all of them,
    with ``seconds``), so that a job's start-up, before it sends, does not count as its load."""
    latencies: list[float] = []
    body = {"model": "m", "messages": [{"role": "user", "content": "interactive"}], "max_tokens": 16}
    until = time.monotonic() + seconds if seconds else float("inf")
    seen = server_stats(base)["requests_total"]
    with httpx.Client(timeout=60) as client:
        while not stop.is_set() and time.monotonic() < until:
            sent = time.perf_counter()
            client.post(base + "/chat/completions", json=body)
            latency = time.perf_counter() - sent
            total = server_stats(base)["requests_total"]
            if seconds or total > seen + 1:  # others were sent meanwhile: the job is running
                latencies.append(latency)
            seen = total
            time.sleep(0.05)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=20)
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(cuts[18] * 1000, 1),
        "probes": len(latencies),
    }


def interactive(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with model_server(args.latency_ms, "--capacity", str(args.capacity)) as base:
        entry = {"engine": "openai", "base_url": base, "model": "m", "max_concurrency": "auto"}
        models = [{"id": "auto", **entry}, {"id": "background", **entry, "priority": "background"}]
        prompts = prompts_file(work, "interactive", args.prompts)
        rows: dict[str, Any] = {"idle": summary(probe_latencies(base, threading.Event(), seconds=5))}
        with contest(work / "interactive", models) as run:
            for name, model in (("during an auto job", "auto"), ("during a background job", "background")):
                stop = threading.Event()
                with ThreadPoolExecutor(1) as pool:
                    probes = pool.submit(probe_latencies, base, stop)
                    job = run(model, prompts)
                    stop.set()
                rows[name] = summary(probes.result()) | {"job": job}
    idle = rows["idle"]["p95_ms"]
    for name in ("during an auto job", "during a background job"):
        rows[name]["p95_to_idle"] = round(rows[name]["p95_ms"] / idle, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--tpm", type=int, default=240_000, help="about 100 requests a second here")
    parser.add_argument("--only", choices=["concurrency", "per-minute", "interactive"])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "capacity": args.capacity,
        "latency_ms": args.latency_ms,
        "prompts": args.prompts,
    }
    sections = {"concurrency": concurrency, "per-minute": per_minute, "interactive": interactive}
    with tempfile.TemporaryDirectory(prefix="bench-pacing-") as tmp:
        for name, measure in sections.items():
            if args.only in (None, name):
                results[name] = measure(args, Path(tmp))
                print(json.dumps({name: results[name]}, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pacing.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
