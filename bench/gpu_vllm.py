"""vLLM's own ``run-batch`` against a batchinfer job on the ``vllm`` engine, on one GPU.

Both sides get the same prompts (chat messages, rendered by the same tokenizer's chat template),
the same model, greedy decoding, the same ``max_tokens``, ``max_model_len`` and memory share, and
each runs as its own process (so each gets the whole GPU and frees it on exit):

* ``vllm run-batch``: ``python -m vllm.entrypoints.openai.run_batch -i in.jsonl -o out.jsonl
  --model M``, on an OpenAI batch file;
* batchinfer: ``batchinfer run prompts.jsonl --model M`` with a models file naming the ``vllm``
  engine (a whole job: Prefect flow, validation, chunk tasks, success file).

Throughput is generated tokens (``usage.completion_tokens`` summed over the output files) per
second of the command's wall time. Both commands pay a fixed start-up (loading the model, CUDA
graphs; batchinfer also starts a temporary Prefect server), so each side also runs a small
calibration file (``--calibration-prompts``) and the report gives the marginal throughput too:
(tokens of the big run - tokens of the small) / (time of the big run - time of the small).

The GPU machines have no internet: ``--model`` must be a local directory or a name already in the
Hugging Face cache (``Qwen/Qwen2.5-0.5B-Instruct`` is used when cached). Failing both, the script
builds a small random Llama from ``batchinfer.testing.tiny_model``'s tokenizer (answers are
gibberish, which does not matter for throughput), so it runs anywhere vllm does.

    python -m bench.gpu_vllm --help                   # works without vllm
    python -m bench.gpu_vllm --prompts 2000 --max-tokens 128
    python -m bench.gpu_vllm --model /models/Qwen2.5-0.5B-Instruct --out bench/results/gpu_vllm.json

Results: printed as a table, and written as JSON to ``bench/results/gpu_vllm.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_HF_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_vllm.json"
VLLM_RUN_BATCH = "vllm run-batch"
BATCHINFER = "batchinfer vllm engine"

_TOPICS = [
    "the water cycle",
    "photosynthesis",
    "binary search",
    "why the sky is blue",
    "compound interest",
    "how vaccines work",
    "plate tectonics",
    "how bread rises",
    "supply and demand",
    "the rules of chess",
]
_ASKS = [
    "What is {t}?",
    "Explain {t} in simple terms.",
    "Give me a short summary of {t}.",
    "Why does {t} matter?",
    "List three facts about {t}.",
]


def make_prompts(count: int, seed: int = 1234) -> list[str]:
    """Varied, deterministic user prompts (distinct, so no prefix cache makes one side lucky)."""
    rng = random.Random(seed)
    return [f"({i}) " + rng.choice(_ASKS).format(t=rng.choice(_TOPICS)) for i in range(count)]


# -- the model --------------------------------------------------------------------------------------


def resolve_model(requested: str | None, work: Path) -> tuple[str, str]:
    """(model path or cached name, how it was found)."""
    if requested:
        if Path(requested).expanduser().is_dir():
            return str(Path(requested).expanduser()), "local directory"
        return requested, "Hugging Face name (must be in the local cache: no internet here)"
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(DEFAULT_HF_MODEL, local_files_only=True)
        return path, f"{DEFAULT_HF_MODEL} from the Hugging Face cache"
    except Exception:  # not cached, or huggingface_hub missing: build one
        return str(build_random_llama(work / "random-llama")), "random Llama built offline (fallback)"


def build_random_llama(directory: Path, seed: int = 0) -> Path:
    """A small random Llama (~10M parameters) with the tiny model's tokenizer and chat template.
    Bigger than the test model on purpose: head_dim 64 suits every vLLM attention backend, and a
    realistic width keeps the GPU, not Python, the thing being measured."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from batchinfer.testing.tiny_model import build_tiny_model

    tiny = build_tiny_model(directory.parent / "tiny-tokenizer-source", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1024,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# -- the two contestants ----------------------------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> float:
    """Run ``cmd``; its wall time. Output goes to ``log``; a failure raises with the log's tail."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
        )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}; log {log}:\n{tail}")
    return elapsed


def run_vllm_batch(
    prompts: Sequence[str], model: str, args: argparse.Namespace, work: Path, tag: str
) -> dict[str, Any]:
    infile, outfile = work / f"run-batch-{tag}.in.jsonl", work / f"run-batch-{tag}.out.jsonl"
    with infile.open("w") as f:
        for i, text in enumerate(prompts):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(infile),
        "-o",
        str(outfile),
        "--model",
        model,
        "--max-model-len",
        str(args.max_model_len),
        "--gpu-memory-utilization",
        str(args.gpu_memory_utilization),
        "--dtype",
        args.dtype,
        "--seed",
        "0",
    ]
    seconds = _run(cmd, dict(os.environ), work / f"run-batch-{tag}.log", args.timeout_s)
    tokens = answered = 0
    for raw in outfile.read_text().splitlines():
        record = json.loads(raw)
        body = (record.get("response") or {}).get("body") or {}
        if record.get("error") is None and body:
            answered += 1
            tokens += int(body["usage"]["completion_tokens"])
    return {"seconds": seconds, "completion_tokens": tokens, "answered": answered, "prompts": len(prompts)}


def run_batchinfer(
    prompts: Sequence[str], model: str, args: argparse.Namespace, work: Path, tag: str
) -> dict[str, Any]:
    import yaml

    home = work / "batchinfer-home"
    home.mkdir(exist_ok=True)
    models = home / "models.yaml"
    entry = {
        "id": "bench-vllm",
        "engine": "vllm",
        "model": model,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
    }
    models.write_text(yaml.safe_dump({"models": [entry]}))
    infile = home / f"prompts-{tag}.jsonl"
    with infile.open("w") as f:
        for text in prompts:
            f.write(json.dumps([{"role": "user", "text": text}]) + "\n")
    out_dir = work / f"batchinfer-{tag}"
    env = dict(os.environ)
    env.update(
        BATCHINFER_HOME=str(home),
        BATCHINFER_MODELS=str(models),
        BATCHINFER_CHUNK_SIZE=str(args.chunk_size),
        # Every prompt generated, as vLLM's run-batch does: a repeated greedy prompt is not sent twice
        # by default, which would flatter batchinfer's tokens/s.
        BATCHINFER_DEDUPLICATE="false",
    )
    env.pop("PREFECT_API_URL", None)  # a temporary server of its own, as `batchinfer run` does alone
    cmd = [
        sys.executable,
        "-m",
        "batchinfer.cli",
        "run",
        str(infile),
        "--model",
        "bench-vllm",
        "--max-tokens",
        str(args.max_tokens),
        "--temperature",
        "0",
        "--output-dir",
        str(out_dir),
    ]
    seconds = _run(cmd, env, work / f"batchinfer-{tag}.log", args.timeout_s)
    tokens = answered = 0
    success = out_dir / "success.jsonl"
    for raw in success.read_text().splitlines():
        answered += 1
        tokens += int(json.loads(raw)["usage"]["completion_tokens"])
    return {"seconds": seconds, "completion_tokens": tokens, "answered": answered, "prompts": len(prompts)}


# -- report -----------------------------------------------------------------------------------------


def summarize(name: str, big: dict[str, Any], small: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "contestant": name,
        "run": big,
        "tokens_per_s": big["completion_tokens"] / big["seconds"],
    }
    if small is not None:
        row["calibration"] = small
        extra_s = big["seconds"] - small["seconds"]
        extra_tokens = big["completion_tokens"] - small["completion_tokens"]
        row["marginal_tokens_per_s"] = extra_tokens / extra_s if extra_s > 0 else None
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| contestant | prompts | answered | tokens | wall s | tok/s | marginal tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        run, marginal = row["run"], row.get("marginal_tokens_per_s")
        lines.append(
            f"| {row['contestant']} | {run['prompts']} | {run['answered']} | {run['completion_tokens']} | "
            f"{run['seconds']:.1f} | {row['tokens_per_s']:.0f} | "
            f"{'-' if marginal is None else f'{marginal:.0f}'} |"
        )
    return "\n".join(lines)


def _gpu_name() -> str | None:
    try:
        import torch

        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_vllm",
        description="vllm run-batch vs batchinfer's vllm engine: generated tokens/s on one GPU.",
    )
    parser.add_argument(
        "--model",
        help=f"local model dir or cached HF name (default: {DEFAULT_HF_MODEL} "
        "if cached, else a random Llama built offline)",
    )
    parser.add_argument("--prompts", type=int, default=2000, help="prompts in the timed run (2000)")
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=20,
        help="prompts in the start-up calibration run of each side; 0 skips it (20)",
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens per answer (128)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="context window for both sides")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=500,
        help="BATCHINFER_CHUNK_SIZE for the batchinfer job: prompts per vLLM call (500)",
    )
    parser.add_argument("--only", choices=["vllm", "batchinfer"], help="run one side only")
    parser.add_argument("--timeout-s", type=float, default=1800, help="per command")
    parser.add_argument("--work-dir", type=Path, help="keep inputs, outputs and logs here")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if importlib.util.find_spec("vllm") is None:
        sys.exit("vllm is not installed: run this on a GPU machine after `pip install -e '.[vllm]'`.")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-gpu-vllm-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machines have no internet
    model, source = resolve_model(args.model, work)
    print(f"model: {model} ({source}); work dir: {work}", flush=True)

    prompts = make_prompts(args.prompts)
    calibration = make_prompts(args.calibration_prompts, seed=99) if args.calibration_prompts else None
    contestants = [(VLLM_RUN_BATCH, run_vllm_batch), (BATCHINFER, run_batchinfer)]
    rows = []
    for name, runner in contestants:
        if args.only and not name.startswith(args.only):
            continue
        print(f"running {name} ...", flush=True)
        small = runner(calibration, model, args, work, "calibration") if calibration else None
        big = runner(prompts, model, args, work, "timed")
        rows.append(summarize(name, big, small))

    by_name = {row["contestant"]: row for row in rows}
    ratio = marginal_ratio = None
    if VLLM_RUN_BATCH in by_name and BATCHINFER in by_name:
        ratio = by_name[BATCHINFER]["tokens_per_s"] / by_name[VLLM_RUN_BATCH]["tokens_per_s"]
        a, b = (by_name[n].get("marginal_tokens_per_s") for n in (BATCHINFER, VLLM_RUN_BATCH))
        marginal_ratio = a / b if a and b else None
    import vllm

    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gpu": _gpu_name(),
        "host": platform.node(),
        "vllm": getattr(vllm, "__version__", None),
        "model": model,
        "model_source": source,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "ratio_batchinfer_over_vllm": ratio,
        "marginal_ratio_batchinfer_over_vllm": marginal_ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows))
    if ratio is not None:
        print(
            f"ratio (batchinfer / vllm run-batch): {ratio:.2f} wall, "
            f"{'-' if marginal_ratio is None else f'{marginal_ratio:.2f}'} marginal"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
