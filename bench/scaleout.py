"""`make bench-scaleout`: what more Dask workers buy one job, and what an object store costs.

    python -m bench.scaleout [--prompts 20000] [--latency-ms 50] [--workers 1,2,4] [--out bench/results]

One `batchinfer run` of ``--prompts`` lines against a loopback model server with capacity to spare
(``--latency-ms`` per request, no concurrency limit), timed from process start to exit:

* its chunks on 1, 2 and 4 Dask workers (a scheduler and the workers on this machine, two threads
  each; chunk files on an S3-compatible server, moto's), throughput as a ratio to one worker;
* on threads of its own process, its files on the local disk and then on the S3-compatible server
  (``--output-dir s3://...``), the second as a ratio to the first.

Writes ``scaleout.json`` to ``--out`` and prints the table. Every figure is measured here, in this
run; nothing is asserted. On a 2-core machine the workers share two cores with the model server, the
Prefect server and the job: the ratios say what this machine gives, not what more machines would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from batchinfer.testing.prefect_server import PrefectServer
from batchinfer.testing.s3 import S3Server
from batchinfer.testing.served import free_port, user_prompt, write_jsonl
from bench.run import PY, run_measured, start_fake_server

DASK = str(Path(sys.executable).with_name("dask"))
CHUNK_SIZE = 500


def timed_run(env: dict[str, str], prompts: Path, *extra: str) -> float:
    argv = [PY, "-m", "batchinfer.cli", "run", str(prompts), "--model", "fake", "--max-tokens", "16", *extra]
    start = time.perf_counter()
    out, _ = run_measured(argv, env)
    seconds = time.perf_counter() - start
    job = json.loads(out[out.index("{") :])
    if job["status"] != "completed":
        raise RuntimeError(f"the job did not complete: {job}")
    return seconds


@contextlib.contextmanager
def dask_cluster(workers: int, env: dict[str, str], logs: Path) -> Iterator[str]:
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    argv = [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]
    procs = [subprocess.Popen(argv, stdout=open(logs / "scheduler.log", "ab"), stderr=subprocess.STDOUT)]  # noqa: SIM115
    try:
        for n in range(workers):
            argv = [DASK, "worker", address, "--nworkers", "1", "--nthreads", "2", "--no-dashboard"]
            log = open(logs / f"worker-{n}.log", "ab")  # noqa: SIM115 - the child keeps it
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            proc.kill()


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    fake, base_url = start_fake_server(args.latency_ms)
    models = work / "models.yaml"
    models.write_text(
        yaml.safe_dump({"models": [{"id": "fake", "engine": "openai", "base_url": base_url, "model": "m"}]})
    )
    prompts = write_jsonl(
        work / "prompts.jsonl", [user_prompt(f"scale-out {i}") for i in range(args.prompts)]
    )
    rows: list[dict[str, Any]] = []
    try:
        with PrefectServer(home=work / "prefect") as prefect, S3Server().running() as s3:
            base = prefect.env(
                **s3.env,
                BATCHINFER_HOME=str(work / "home"),
                BATCHINFER_MODELS=str(models),
                BATCHINFER_ALLOWED_ROOTS=str(work),
                BATCHINFER_CHUNK_SIZE=str(CHUNK_SIZE),
                BATCHINFER_THREADS="1",
            )
            local = timed_run(base, prompts, "--output-dir", str(work / "out-local"))
            on_s3 = timed_run(base, prompts, "--output-dir", s3.url("bench", "out"))
            rows += [
                {"setup": "threads, outputs on local disk", "seconds": local, "ratio": 1.0},
                {"setup": "threads, outputs on S3 (moto)", "seconds": on_s3, "ratio": local / on_s3},
            ]
            one: float | None = None
            for workers in args.workers:
                with dask_cluster(workers, base, work) as address:
                    env = {
                        **base,
                        "BATCHINFER_DASK_ADDRESS": address,
                        "BATCHINFER_SHARED_STORAGE": s3.url("shared"),
                    }
                    env["BATCHINFER_MAX_PARALLEL_CHUNKS"] = str(2 * workers)
                    seconds = timed_run(env, prompts, "--output-dir", str(work / f"out-dask-{workers}"))
                one = one or seconds
                rows.append(
                    {
                        "setup": f"Dask, {workers} worker(s), chunks on S3",
                        "seconds": seconds,
                        "ratio": one / seconds,
                    }
                )
    finally:
        fake.terminate()
    for row in rows:
        row["lines_per_s"] = round(args.prompts / row["seconds"], 1)
        row["seconds"], row["ratio"] = round(row["seconds"], 2), round(row["ratio"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=20000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        rows = measure(args, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaleout.json").write_text(
        json.dumps({"prompts": args.prompts, "latency_ms": args.latency_ms, "rows": rows}, indent=2)
    )
    print(f"{'setup':<40} {'seconds':>8} {'lines/s':>9} {'ratio':>6}")
    for row in rows:
        print(f"{row['setup']:<40} {row['seconds']:>8} {row['lines_per_s']:>9} {row['ratio']:>6}")


if __name__ == "__main__":
    main()
