"""The HTTP benchmark's contestants that run in a process of their own (so each has its own peak RSS).

``python -m bench.client_modes MODE --base-url URL --prompts FILE --concurrency N`` prints one JSON
line: ``{"requests": n, "ok": n_ok, "seconds": s}``. The timer starts after imports and set-up, so
every mode is timed on the same work: sending every prompt and getting every answer back.

Modes:
- ``aiohttp-loop`` / ``httpx-loop``: the ceiling, the fastest plain asyncio client loop we could
  write: one session, one semaphore of N, every request a task (a continuous bound, no waves).
- ``engine``: batchinfer's OpenAI engine alone, no Prefect: ``OpenAIEngine.infer`` on all prompts,
  through its default (``native``) HTTP client; ``engine-aiohttp`` / ``engine-httpx`` through those.
- ``prefect-chunks``: a short Prefect script a user might write instead of batchinfer: 10 tasks of a
  tenth of the prompts each, every task an aiohttp loop with its tenth of the concurrency.
- ``naive-prefect``: what users write first: one Prefect task per prompt, ``.map`` over the prompts,
  a shared sync httpx client, a thread pool of N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "fake-model"


def load_messages(path: Path) -> list[list[dict[str, str]]]:
    """The prompt file's lines as OpenAI chat messages (the files are in the seed's format)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out.append([{"role": m["role"], "content": m["text"]} for m in json.loads(line)])
    return out


def _body(messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens}


async def aiohttp_loop(url: str, prompts: list[Any], concurrency: int, max_tokens: int) -> int:
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(messages: list[dict[str, str]]) -> bool:
            async with limit, session.post(url, json=_body(messages, max_tokens)) as response:
                await response.read()
                return response.status == 200

        return sum(await asyncio.gather(*(one(m) for m in prompts)))


async def httpx_loop(url: str, prompts: list[Any], concurrency: int, max_tokens: int) -> int:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(messages: list[dict[str, str]]) -> bool:
            async with limit:
                response = await client.post(url, json=_body(messages, max_tokens))
                return response.status_code == 200

        return sum(await asyncio.gather(*(one(m) for m in prompts)))


def engine(
    base_url: str, prompt_file: Path, concurrency: int, max_tokens: int, client: str
) -> tuple[int, float]:
    from batchinfer.contract import Message
    from batchinfer.engines.base import PromptRequest, SamplingParams
    from batchinfer.engines.configs import OpenAIEngineConfig
    from batchinfer.engines.openai_compat import OpenAIEngine

    config = OpenAIEngineConfig(
        id="bench", base_url=base_url, model=MODEL, max_concurrency=concurrency, http_client=client
    )
    params = SamplingParams(max_tokens=max_tokens)
    requests = [
        PromptRequest(line=i, messages=[Message.model_validate(m) for m in json.loads(raw)], params=params)
        for i, raw in enumerate(prompt_file.read_text(encoding="utf-8").splitlines(), start=1)
    ]
    eng = OpenAIEngine(config)
    try:
        start = time.perf_counter()
        outcomes = eng.infer(requests)
        seconds = time.perf_counter() - start
    finally:
        eng.close()
    return sum(1 for o in outcomes if hasattr(o, "generations")), seconds


def prefect_chunks(url: str, prompts: list[Any], concurrency: int, max_tokens: int) -> tuple[int, float]:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    tasks = 10
    share = max(1, concurrency // tasks)

    size = -(-len(prompts) // tasks)

    @task
    def infer_chunk(index: int) -> int:
        # The task's parameter is its index, as a script would pass a file name: Prefect records
        # every task's parameters, and 1,000 prompts' worth is more than its API accepts.
        chunk = prompts[index * size : (index + 1) * size]
        return asyncio.run(aiohttp_loop(url, chunk, share, max_tokens))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=tasks))  # type: ignore[arg-type]
    def chunked_batch() -> int:
        return sum(f.result() for f in infer_chunk.map(range(tasks)))

    start = time.perf_counter()
    ok = chunked_batch()
    return ok, time.perf_counter() - start


def naive_prefect(url: str, prompts: list[Any], concurrency: int, max_tokens: int) -> tuple[int, float]:
    import httpx
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    client = httpx.Client(limits=httpx.Limits(max_connections=concurrency), timeout=60)

    @task
    def infer_one(messages: list[dict[str, str]]) -> str:
        response = client.post(url, json=_body(messages, max_tokens))
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=concurrency))  # type: ignore[arg-type]
    def naive_batch(all_prompts: list[Any]) -> int:
        futures = infer_one.map(all_prompts)
        return sum(1 for f in futures if f.result())

    start = time.perf_counter()
    ok = naive_batch(prompts)
    return ok, time.perf_counter() - start


# The engine's modes, by the ``http_client`` each runs it with (``engine``: the default).
ENGINE_CLIENTS = {"engine": "native", "engine-aiohttp": "aiohttp", "engine-httpx": "httpx"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode",
        choices=["aiohttp-loop", "httpx-loop", *ENGINE_CLIENTS, "prefect-chunks", "naive-prefect"],
    )
    parser.add_argument("--base-url", required=True, help="…/v1")
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    url = args.base_url.rstrip("/") + "/chat/completions"
    prompts = load_messages(args.prompts)
    if args.mode in ENGINE_CLIENTS:
        client = ENGINE_CLIENTS[args.mode]
        ok, seconds = engine(args.base_url, args.prompts, args.concurrency, args.max_tokens, client)
    elif args.mode in {"naive-prefect", "prefect-chunks"}:
        script = naive_prefect if args.mode == "naive-prefect" else prefect_chunks
        ok, seconds = script(url, prompts, args.concurrency, args.max_tokens)
    else:
        loop = aiohttp_loop if args.mode == "aiohttp-loop" else httpx_loop
        start = time.perf_counter()
        ok = asyncio.run(loop(url, prompts, args.concurrency, args.max_tokens))
        seconds = time.perf_counter() - start
    print(json.dumps({"requests": len(prompts), "ok": ok, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
