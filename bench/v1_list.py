"""`GET /v1/batches` with 1,000 batches: how long a user waits for a page, and for all of them.

    python -m bench.v1_list [--batches 1000] [--reads 20] [--out bench/results]

A real ``batchinfer serve`` (its own Prefect server) whose jobs go to a work pool with no worker
(``BATCHINFER_WORK_POOL``), so that every batch stays ``validating`` and each list must ask Prefect
for every job on its page, the costly case. ``--batches`` batches are created through the official
``openai`` SDK from one uploaded file; then, timed at the client (request sent to answer parsed):
the default page (20), the largest page (100), and paging through all of them 100 at a time: the
first read (no state history remembered yet) and the median of ``--reads``. Writes ``v1_list.json``
to ``--out`` and prints the table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import yaml

from batchinfer.testing.served import ServeProcess, serve_env, write_jsonl


def start_serve(tmp: Path) -> ServeProcess:
    models = [{"id": "fake", "engine": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}]
    models_file = tmp / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    env = serve_env(tmp / "home", models_file, roots=[tmp], BATCHINFER_WORK_POOL="nobody-works-here")
    (tmp / "home").mkdir()
    return ServeProcess(home=tmp / "home", env=env).start()


def create_batches(client: openai.OpenAI, tmp: Path, count: int) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    path = write_jsonl(tmp / "input.jsonl", [line])
    file_id = client.files.create(file=path.open("rb"), purpose="batch").id
    for _ in range(count):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")


def timed_ms(read: Callable[[], int], reads: int) -> dict[str, Any]:
    """``read`` ``reads`` times: the first call's wall time in ms (nothing remembered yet), the
    median of all, and how many batches the last call saw."""
    walls, seen = [], 0
    for _ in range(reads):
        started = time.perf_counter()
        seen = read()
        walls.append((time.perf_counter() - started) * 1000)
    return {"batches": seen, "first_ms": round(walls[0], 1), "median_ms": round(statistics.median(walls), 1)}


def every_page(client: openai.OpenAI) -> int:
    return sum(1 for _ in client.batches.list(limit=100))  # the SDK follows `after` page by page


def measure(client: openai.OpenAI, reads: int) -> list[dict[str, Any]]:
    cases: dict[str, Callable[[], int]] = {
        "one page, default limit (20)": lambda: len(client.batches.list().data),
        "one page, limit 100": lambda: len(client.batches.list(limit=100).data),
        "every page, limit 100": lambda: every_page(client),
    }
    reads_of = {name: reads if name.startswith("one") else max(3, reads // 5) for name in cases}
    return [{"read": name, **timed_ms(read, reads_of[name])} for name, read in cases.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batchinfer-v1-list-") as tmp_text:
        served = start_serve(Path(tmp_text))
        try:
            client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
            started = time.perf_counter()
            create_batches(client, Path(tmp_text), args.batches)
            print(f"{args.batches} batches created in {time.perf_counter() - started:.1f} s")
            rows = measure(client, args.reads)
        finally:
            served.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "v1_list.json").write_text(json.dumps({"batches": args.batches, "rows": rows}, indent=2))
    for row in rows:
        times = f"first {row['first_ms']} ms, median {row['median_ms']} ms"
        print(f"{row['read']:<32} {row['batches']:>5} batches: {times}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
