"""A local model run in-process with Hugging Face transformers, batched ``generate`` on CPU or GPU.

torch and transformers are imported inside functions only: importing this module stays cheap, and
the adapter (which never runs a model) never pays for them.

Loading is lazy: the constructor only checks that the model files exist (so a bad models file fails
fast with an ``EngineError``); the weights load on the first ``infer`` (or an explicit ``load()``),
under the same lock that serialises generation. A GGUF file is dequantized once into
``<cache_dir>/models/<id>-<key>`` and later loads come from there (tens of seconds -> under one).
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import (
    InferenceOutcome,
    InFlightCap,
    PromptRequest,
    SamplingParams,
    StopFlag,
)
from batchinfer.engines.configs import CTranslate2EngineConfig, EngineContext, TransformersEngineConfig
from batchinfer.engines.local_common import (
    CHAT_FIELDS,
    Capabilities,
    context_length_exceeded,
    generate_in_batches,
    package_dir,
    prompt_ids,
)
from batchinfer.engines.structured import JsonGrammars
from batchinfer.errors import EngineError
from batchinfer.records import Completion, ErrorDetail, Generation, Logprobs, TokenLogprob, TopLogprob, Usage

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Bump when the cached layout changes, so old caches are not reused.
_CACHE_FORMAT = 1
_SAMPLING = frozenset({"top_logprobs", "stop", "seed"})
CAPABILITIES = Capabilities(
    "transformers",
    {
        Endpoint.chat: CHAT_FIELDS | _SAMPLING | {"response_format"},
        Endpoint.completions: frozenset(
            {"prompt", "max_tokens", "temperature", "top_p", "n", "logprobs", "stop", "seed", "stream"}
        ),
    },
)


def resolve_model_dir(config: TransformersEngineConfig | CTranslate2EngineConfig) -> Path:
    """The directory holding the model: ``config.path``, or the installed ``config.package``'s."""
    if config.path:
        directory = Path(config.path).expanduser()
        if not directory.is_dir():
            raise EngineError(
                f"Model {config.id!r}: path {str(directory)!r} is not a directory. "
                "Point `path` at a local model directory (config.json, weights, tokenizer)."
            )
    elif config.package:
        directory = package_dir(config.id, config.package, "set `path` to a local model directory")
    else:
        raise EngineError(
            f"Model {config.id!r} names no model location. Set `path` (a local model directory) "
            "or `package` (an installed package that ships the model)."
        )
    if config.gguf_file:
        if not (directory / config.gguf_file).is_file():
            raise EngineError(
                f"Model {config.id!r}: GGUF file {config.gguf_file!r} is not in "
                f"{str(directory)!r}. Fix `gguf_file` (a file name inside the model directory) "
                "or the model location."
            )
    elif not (directory / "config.json").is_file():
        raise EngineError(
            f"Model {config.id!r}: {str(directory)!r} holds no config.json. Point `path` at a "
            "transformers model directory, or set `gguf_file` for a GGUF model."
        )
    return directory


def gguf_cache_dir(config: TransformersEngineConfig, model_dir: Path, cache_dir: Path) -> Path:
    """Where the dequantized copy of ``config.gguf_file`` lives. The key changes whenever the GGUF
    file (path, size, mtime) or the dtype does, so a replaced file is never served stale."""
    assert config.gguf_file is not None
    gguf = (model_dir / config.gguf_file).resolve()
    stat = gguf.stat()
    raw = f"{_CACHE_FORMAT}|{gguf}|{stat.st_size}|{stat.st_mtime_ns}|{config.dtype}"
    key = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return cache_dir / "models" / f"{config.id}-{key}"


def load_gguf(
    model_dir: Path, gguf_file: str, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a GGUF file with transformers (slow: tens of seconds for 135M parameters)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file, dtype=dtype)
    return model, tokenizer


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write a model dequantized from GGUF as an ordinary transformers checkpoint."""
    # save_pretrained refuses a model that still carries its GGUF quantizer, although the
    # weights are already plain tensors; dropping it saves an ordinary checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _save_to_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write the dequantized model atomically: a temp dir, then one ``os.replace`` into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_checkpoint(model, tokenizer, staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process won the race and its copy is complete (os.replace is atomic).
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class _Prepared:
    """One request, tokenized and checked, waiting for its batch."""

    index: int
    input_ids: list[int]
    params: SamplingParams


class TransformersEngine:
    """The ``Engine`` for ``TransformersEngineConfig``: one model, one lock, batched generate."""

    def __init__(self, config: TransformersEngineConfig, context: EngineContext) -> None:
        self._config = config
        self._context = context
        self._model_dir = resolve_model_dir(config)
        # One lock for loading and generating: a second generate would only fight for the cores.
        self._lock = threading.Lock()
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._eos_ids: set[int] = set()
        self._pad_id = 0
        self._max_positions: int | None = None
        self._grammars: JsonGrammars | None = None

    @property
    def max_parallel_chunks(self) -> int:
        # Generation is serialised by one lock, so more chunk threads would only queue.
        return 1

    @property
    def model_dir(self) -> Path:
        """Where the weights load from: the model directory, or the GGUF cache once converted."""
        if self._config.gguf_file:
            return gguf_cache_dir(self._config, self._model_dir, self._context.cache_dir)
        return self._model_dir

    def load(self) -> None:
        """Load the model now rather than on the first ``infer`` (e.g. to warm a worker)."""
        with self._lock:
            self._ensure_loaded()

    def close(self) -> None:
        """Free the model. A later ``infer`` would load it again."""
        with self._lock:
            self._model = None
            self._tokenizer = None
        gc.collect()

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,  # one process, one model: nothing shared to protect
    ) -> list[InferenceOutcome]:
        with self._lock:
            self._ensure_loaded()
            return generate_in_batches(requests, self._prepare, self._batches, self._generate, stop)

    def _batches(self, items: list[_Prepared], params: SamplingParams) -> list[list[_Prepared]]:
        """Batches of ``batch_size``. A seeded sampled request runs alone, after its seed: its
        answer then depends on the seed only, not on what it was batched with."""
        size = 1 if params.seed is not None and params.temperature > 0 else self._config.batch_size
        return [items[start : start + size] for start in range(0, len(items), size)]

    # -- loading ------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        torch.set_num_threads(self._config.threads or self._context.threads)
        dtype = getattr(torch, self._config.dtype)
        source = self.model_dir
        if self._config.gguf_file and not (source / "config.json").is_file():
            model, tokenizer = load_gguf(self._model_dir, self._config.gguf_file, dtype)
            _save_to_cache(model, tokenizer, source)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
        model.eval()

        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # _generate pads by hand, but anything else batching with this tokenizer must pad left too.
        tokenizer.padding_side = "left"
        # A clean generation config: a checkpoint's own defaults (top_k, repetition_penalty, ...)
        # would otherwise silently change what the request's sampling parameters mean.
        model.generation_config = GenerationConfig(
            eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id
        )
        self._eos_ids = eos_ids
        self._pad_id = int(tokenizer.pad_token_id)
        self._max_positions = getattr(model.config, "max_position_embeddings", None)
        self._grammars = JsonGrammars(tokenizer, int(model.config.vocab_size), int(tokenizer.eos_token_id))
        self._tokenizer, self._model = tokenizer, model

    # -- one request --------------------------------------------------------------------------

    def _prepare(self, index: int, request: PromptRequest) -> _Prepared | ErrorDetail:
        assert self._tokenizer is not None
        refusal = CAPABILITIES.refusal(request, self._config.id)
        if refusal is not None:
            return refusal
        input_ids = prompt_ids(request, self._tokenizer, "transformers")
        if isinstance(input_ids, ErrorDetail):
            return input_ids
        if request.params.response_format is not None:
            assert self._grammars is not None
            grammar = self._grammars.matcher(request.params.response_format)
            if isinstance(grammar, ErrorDetail):
                return grammar
        limit = self._max_positions
        if limit is not None and len(input_ids) > limit - request.params.max_tokens:
            return context_length_exceeded(self._config.id, len(input_ids), request.params.max_tokens, limit)
        return _Prepared(index=index, input_ids=input_ids, params=request.params)

    # -- one batch ----------------------------------------------------------------------------

    def _generate(self, batch: list[_Prepared], params: SamplingParams) -> list[Completion]:
        import torch

        model = self._model
        assert model is not None
        # Left padding: every prompt ends at the same column, so new tokens append in lockstep.
        # The attention mask (and the position ids generate derives from it) hide the padding.
        width = max(len(item.input_ids) for item in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, width - len(item.input_ids) :] = torch.tensor(item.input_ids)
            attention_mask[row, width - len(item.input_ids) :] = 1
        with torch.inference_mode():
            output = model.generate(  # type: ignore[operator]
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=params.max_tokens,
                num_return_sequences=params.n,
                return_dict_in_generate=True,
                output_logits=params.logprobs,
                **self._generate_options(params),
            )
        new_tokens = output.sequences[:, width:].tolist()
        logprob_rows = self._token_logprobs(output, width, params.top_logprobs) if params.logprobs else None
        completions = []
        for row, item in enumerate(batch):
            sequences = range(row * params.n, (row + 1) * params.n)
            generations = [self._generation(new_tokens[seq], params, logprob_rows, seq) for seq in sequences]
            prompt, answer = len(item.input_ids), sum(count for _, count in generations)
            usage = Usage(prompt_tokens=prompt, completion_tokens=answer, total_tokens=prompt + answer)
            completions.append(Completion(generations=[g for g, _ in generations], usage=usage))
        return completions

    def _generate_options(self, params: SamplingParams) -> dict[str, Any]:
        """``generate``'s sampling, stop strings and constraint for ``params``; seeds the RNG."""
        import torch

        options: dict[str, Any] = {}
        if params.stop:
            options.update(stop_strings=list(params.stop), tokenizer=self._tokenizer)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        if params.response_format is not None:
            from transformers import LogitsProcessorList

            assert self._grammars is not None
            matcher = self._grammars.matcher(params.response_format)
            options["logits_processor"] = LogitsProcessorList([self._grammars.processor(matcher)])
        if params.temperature > 0:
            # top_k=0 turns off transformers' default top-k of 50, which OpenAI semantics lack.
            options.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            options.update(do_sample=False)
        return options

    def _generation(
        self,
        generated: list[int],
        params: SamplingParams,
        logprob_rows: list[list[TokenLogprob]] | None,
        seq: int,
    ) -> tuple[Generation, int]:
        """One sequence's answer, and how many tokens it generated."""
        tokenizer = self._tokenizer
        assert tokenizer is not None
        tokens, finish = self._trim(generated)
        text = str(tokenizer.decode(tokens[:-1] if finish == "stop" else tokens, skip_special_tokens=True))
        text, tokens, finish = _cut_at_stop(text, tokens, finish, params.stop, self._pad_id)
        logprobs = Logprobs(content=logprob_rows[seq][: len(tokens)]) if logprob_rows is not None else None
        generation = Generation(
            role="assistant", text=text, eot=finish == "stop", finish_reason=finish, logprobs=logprobs
        )
        return generation, len(tokens)

    def _trim(self, tokens: list[int]) -> tuple[list[int], str]:
        """The tokens this sequence really generated (up to and including its first eos), and why
        it stopped. Anything after the eos is padding, added while other rows kept going."""
        for position, token in enumerate(tokens):
            if token in self._eos_ids:
                return tokens[: position + 1], "stop"
        return tokens, "length"

    def _token_logprobs(self, output: Any, width: int, top: int | None) -> list[list[TokenLogprob]]:
        """Per sequence, each chosen token's log-probability under the model's raw logits (before
        temperature or top-p reshaped them), as OpenAI reports them, and the ``top`` most likely
        alternatives at its place."""
        import torch

        tokenizer = self._tokenizer
        assert tokenizer is not None
        logits = torch.stack(output.logits, dim=1).float()  # (sequences, steps, vocab)
        chosen = output.sequences[:, width : width + logits.shape[1]]
        logprobs = torch.log_softmax(logits, dim=-1)
        values = logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
        best = logprobs.topk(top, dim=-1) if top else None
        rows = []
        for seq, (ids, row) in enumerate(zip(chosen.tolist(), values, strict=True)):
            entries = []
            for step, (token_id, value) in enumerate(zip(ids, row, strict=True)):
                alternatives = None
                if best is not None:
                    pairs = zip(
                        best.indices[seq, step].tolist(), best.values[seq, step].tolist(), strict=True
                    )
                    alternatives = [_top(str(tokenizer.decode([i])), v) for i, v in pairs]
                token = str(tokenizer.decode([token_id]))
                entries.append(
                    TokenLogprob(
                        token=token, logprob=value, bytes=list(token.encode()), top_logprobs=alternatives
                    )
                )
            rows.append(entries)
        return rows


def _top(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def _cut_at_stop(
    text: str, tokens: list[int], finish: str, stops: tuple[str, ...], pad_id: int
) -> tuple[str, list[int], str]:
    """The answer up to its first stop sequence (left out, as OpenAI does), finishing ``stop``.
    A row that generate stopped at a stop string ends in padding, not an eos: that is dropped."""
    found = [text.index(stop) for stop in stops if stop and stop in text]
    if not found:
        return text, tokens, finish
    generated = list(tokens)
    while generated and generated[-1] == pad_id:
        generated.pop()
    return text[: min(found)], generated, "stop"
