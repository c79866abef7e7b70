"""``batchinfer validate FILE --model M``: a dry run of a job's first phase. Nothing goes to the model.

The file goes through the job's own validation (``validation.validate_prompt_file``, which calls
``parsing.parse_line``) into a temporary directory; the report lists the blank and invalid lines with
the reasons from their error records, the endpoints the valid lines name, their prompt tokens
(counted with the model's tokenizer for a local transformers model, estimated otherwise) and, when
the models file gives prices, what the job would cost. Exit 0 when every line is valid, 1 if not.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchinfer.api.submission import check_limits
from batchinfer.contract import Options, PathType
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.engines.catalog import load_catalog
from batchinfer.engines.registry import AnyModelConfig
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.records import ErrorDetail, ErrorRecord
from batchinfer.settings import Settings

DEFAULT_ENDPOINT = "/v1/chat/completions"
SHOWN_ERRORS = 50  # invalid lines listed in the terminal; --json lists them all
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text, when no tokenizer is at hand
TOKENIZE_BATCH = 256
TokenCounter = Callable[[list[PromptRequest]], list[int]]


class Report(BaseModel):
    file: str
    lines: int
    valid: int
    invalid: int
    blank_lines: int
    file_error: ErrorDetail | None
    errors: list[ErrorRecord]
    model: str
    engine: str
    endpoints: dict[str, int]
    prompt_tokens: int
    tokens: str  # how prompt_tokens was found: "counted with the model's tokenizer", or "estimated ..."
    max_output_tokens: int  # every valid line's max_tokens times its generations: the most it can cost
    cost: dict[str, float] | None  # "prompts", "answers_at_most", in the models file's currency


def validate_command(args: argparse.Namespace, settings: Settings) -> int:
    config = load_catalog(settings.models).get(args.model)
    options = Options(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    check_limits(options, args.num_generations, settings.limits.frozen())
    params = SamplingParams.from_options(options, args.num_generations, settings.jobs.default_max_tokens)
    with tempfile.TemporaryDirectory(prefix="batchinfer-validate-") as scratch:
        layout = JobLayout(Path(scratch))
        source = _source(args.prompts, settings, layout)
        summary = validate_prompt_file(
            source, layout, params, settings.jobs.chunk_size_for(config), settings.limits.frozen()
        )
        report = _report(args.prompts, config, summary, layout, settings)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        _print(report)
    return 0 if report.invalid == 0 and report.file_error is None else 1


def _source(text: str, settings: Settings, layout: JobLayout) -> Path:
    """The local file to validate: a path as given (checked as `run` checks it), or a URI's download."""
    from batchinfer.client import prompt_path
    from batchinfer.pipeline.prompt_source import SourceRules, check_local_file, fetch

    path = prompt_path(text)
    rules = SourceRules.from_settings(settings)
    if path.type is PathType.filepath:
        return check_local_file(path.value, [Path(path.value).parent], "prompts", max_bytes=rules.max_bytes)
    return fetch(path, settings.input_roots(), layout.staged_input, rules)


def _requests(summary: ValidationSummary) -> Iterator[list[PromptRequest]]:
    for chunk in summary.chunks:
        with open(chunk.input_path, encoding="utf-8") as handle:
            yield [PromptRequest.model_validate_json(line) for line in handle]


def _report(
    file: str, config: AnyModelConfig, summary: ValidationSummary, layout: JobLayout, settings: Settings
) -> Report:
    count, how = token_counter(config, settings)
    endpoints: Counter[str] = Counter()
    prompt_tokens = max_output = 0
    for requests in _requests(summary):
        endpoints.update(getattr(r, "endpoint", DEFAULT_ENDPOINT) for r in requests)
        prompt_tokens += sum(count(requests))
        max_output += sum(r.params.max_tokens * r.params.n for r in requests)
    errors = []
    if layout.line_errors.exists():
        with layout.line_errors.open(encoding="utf-8") as handle:
            errors = [ErrorRecord.model_validate_json(line) for line in handle]
    return Report(
        file=file,
        lines=summary.lines,
        valid=summary.valid,
        invalid=summary.invalid,
        blank_lines=summary.blank_lines,
        file_error=summary.file_error,
        errors=errors,
        model=config.id,
        engine=config.engine,
        endpoints=dict(endpoints),
        prompt_tokens=prompt_tokens,
        tokens=how,
        max_output_tokens=max_output,
        cost=_cost(config, prompt_tokens, max_output),
    )


def _cost(config: AnyModelConfig, prompt_tokens: int, max_output: int) -> dict[str, float] | None:
    price_in, price_out = config.price_per_million_input_tokens, config.price_per_million_output_tokens
    if price_in is None and price_out is None:
        return None
    cost = {}
    if price_in is not None:
        cost["prompts"] = prompt_tokens * price_in / 1e6
    if price_out is not None:
        cost["answers_at_most"] = max_output * price_out / 1e6
    return cost


# ---- prompt tokens ------------------------------------------------------------------------------


def token_counter(config: AnyModelConfig, settings: Settings) -> tuple[TokenCounter, str]:
    """Count with the model's own tokenizer where it is on this machine, else estimate."""
    if config.engine not in ("transformers", "ctranslate2"):
        return _estimate, f"estimated: about {CHARS_PER_TOKEN} characters a token"
    try:
        tokenizer = _local_tokenizer(config, settings)
    except Exception as exc:  # a tokenizer that will not load must not sink a dry run
        return _estimate, f"estimated: the model's tokenizer did not load ({type(exc).__name__}: {exc})"
    return lambda requests: _tokenize(tokenizer, requests), "counted with the model's tokenizer"


def _estimate(requests: list[PromptRequest]) -> list[int]:
    # A few tokens a message for the chat template's role markers.
    return [sum(len(m.text or "") // CHARS_PER_TOKEN + 4 for m in request.messages) for request in requests]


def _local_tokenizer(config: Any, settings: Settings) -> Any:
    """The tokenizer the engine will use: from the model directory, or from the engine's converted
    copy in the model cache, or (not converted yet) read from the GGUF file itself."""
    from transformers import AutoTokenizer

    from batchinfer.engines.transformers_local import gguf_cache_dir, resolve_model_dir

    model_dir = resolve_model_dir(config)
    if not config.gguf_file:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if config.engine == "ctranslate2":
        from batchinfer.engines.ctranslate2_local import converted_tokenizer_dir

        cached = converted_tokenizer_dir(config, model_dir, settings.cache_dir)
    else:
        cached = gguf_cache_dir(config, model_dir, settings.cache_dir)
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached, local_files_only=True)
    return AutoTokenizer.from_pretrained(model_dir, gguf_file=config.gguf_file)


def _tokenize(tokenizer: Any, requests: list[PromptRequest]) -> list[int]:
    """Prompt tokens as the transformers and ctranslate2 engines encode a request: its chat
    template (or a plain role-prefixed text), without special tokens added twice."""
    from batchinfer.engines.local_common import text_chat_or_error

    counts = []
    for start in range(0, len(requests), TOKENIZE_BATCH):
        batch = requests[start : start + TOKENIZE_BATCH]
        texts = []
        for request in batch:
            chat = text_chat_or_error(request.messages)
            chat = chat if isinstance(chat, list) else [{"role": "user", "content": ""}]
            if tokenizer.chat_template:
                texts.append(
                    str(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
                )
            else:
                texts.append("".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:")
        encoded = tokenizer(texts, add_special_tokens=not tokenizer.chat_template)["input_ids"]
        counts += [len(ids) for ids in encoded]
    return counts


# ---- the terminal report --------------------------------------------------------------------------


def _print(report: Report) -> None:
    print(
        f"{report.file}: {report.lines + report.blank_lines:,} lines: {report.valid:,} valid, "
        f"{report.invalid:,} invalid, {report.blank_lines:,} blank (skipped)"
    )
    if report.file_error is not None:
        print(f"  the file as a whole: {report.file_error.code}: {report.file_error.message}")
    for record in report.errors[:SHOWN_ERRORS]:
        print(f"  line {record.line}: {record.error.code}: {record.error.message}")
    if len(report.errors) > SHOWN_ERRORS:
        print(f"  ... and {len(report.errors) - SHOWN_ERRORS:,} more invalid lines (--json lists them all)")
    endpoints = ", ".join(f"{name} ({n:,} lines)" for name, n in sorted(report.endpoints.items())) or "none"
    print(f"Model:          {report.model} ({report.engine})")
    print(f"Endpoints:      {endpoints}")
    print(f"Prompt tokens:  {report.prompt_tokens:,} ({report.tokens})")
    print(f"Answer tokens:  at most {report.max_output_tokens:,} (max_tokens times generations, per line)")
    print(f"Cost:           {_cost_text(report)}")
    print("Nothing was sent to the model.")


def _cost_text(report: Report) -> str:
    if report.cost is None:
        return (
            f"unknown: give model {report.model!r} price_per_million_input_tokens and "
            "price_per_million_output_tokens in the models file"
        )
    parts = []
    if "prompts" in report.cost:
        parts.append(f"{report.cost['prompts']:.4g} for the prompts")
    if "answers_at_most" in report.cost:
        parts.append(f"at most {report.cost['answers_at_most']:.4g} for the answers")
    return ", ".join(parts) + " (in the models file's currency)"
