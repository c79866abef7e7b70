"""A local model converted to CTranslate2 and run in-process on CPU (``ctranslate2``, in ``[local]``).

Several times faster than transformers' ``generate`` on the same weights, with the same tokens in
float32 (docs/performance.md). The model is converted once: a GGUF file is dequantized with
transformers (as the transformers engine does), saved as a transformers checkpoint in a temp dir and
converted with ``ctranslate2.converters.TransformersConverter``; a model directory is converted as
it is. The result lives in ``<cache_dir>/ctranslate2/<id>-<key>``, written to a temp dir and renamed
into place, so a crash never leaves half a model; the key changes with the source file, the
compute type and the CTranslate2 version. The Hugging Face tokenizer is kept next to it: prompts are
rendered with its chat template and tokenized here, exactly as on the transformers engine.

ctranslate2, torch and transformers are imported inside functions only, like the other engines.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import (
    CANCELLED,
    InferenceOutcome,
    InFlightCap,
    PromptRequest,
    SamplingParams,
    StopFlag,
)
from batchinfer.engines.configs import CTranslate2EngineConfig, EngineContext
from batchinfer.engines.local_common import (
    CHAT_FIELDS,
    Capabilities,
    context_length_exceeded,
    generate_in_batches,
    prompt_ids,
    require_installed,
)
from batchinfer.engines.transformers_local import load_gguf, resolve_model_dir, save_checkpoint
from batchinfer.records import Completion, ErrorDetail, Generation, Logprobs, TokenLogprob, TopLogprob, Usage

# Bump when the cached layout changes, so old caches are not reused.
_CACHE_FORMAT = 1
# What batchinfer writes next to the converted model: the tokenizer, and what the engine needs of
# the transformers config (CTranslate2's own config keeps neither the context window nor every eos).
_TOKENIZER_DIR = "tokenizer"
_INFO_FILE = "batchinfer.json"
INSTALL_HINT = "pip install 'ctranslate2==4.8.5' (part of the [local] extra)"
_SAMPLING = frozenset({"top_logprobs", "stop", "seed"})
CAPABILITIES = Capabilities(
    "ctranslate2",
    {
        Endpoint.chat: CHAT_FIELDS | _SAMPLING,
        Endpoint.completions: frozenset(
            {"prompt", "max_tokens", "temperature", "top_p", "n", "logprobs", "stop", "seed", "stream"}
        ),
    },
)


def converted_dir(config: CTranslate2EngineConfig, model_dir: Path, cache_dir: Path) -> Path:
    """Where the converted model lives. The key changes whenever the source (the GGUF file, or the
    model directory's files: path, size, mtime), the compute type or CTranslate2's version does."""
    import ctranslate2

    source = (model_dir / config.gguf_file) if config.gguf_file else model_dir
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    identity = [f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files]
    raw = "|".join([str(_CACHE_FORMAT), *identity, config.compute_type, ctranslate2.__version__])
    key = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return cache_dir / "ctranslate2" / f"{config.id}-{key}"


def converted_tokenizer_dir(config: CTranslate2EngineConfig, model_dir: Path, cache_dir: Path) -> Path:
    """Where the converted model keeps its Hugging Face tokenizer."""
    return converted_dir(config, model_dir, cache_dir) / _TOKENIZER_DIR


def convert(config: CTranslate2EngineConfig, model_dir: Path, target: Path) -> None:
    """Convert the model into ``target`` atomically: everything in a temp dir, then one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        checkpoint = model_dir
        if config.gguf_file:
            checkpoint = staging / "checkpoint"
            _dequantize(model_dir, config.gguf_file, checkpoint)
        converted = staging / "converted"
        _convert_checkpoint(checkpoint, converted, config.compute_type)
        try:
            os.replace(converted, target)
        except OSError:
            # Another process won the race and its copy is complete (the rename is atomic).
            if not (target / _INFO_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dequantize(model_dir: Path, gguf_file: str, checkpoint: Path) -> None:
    import torch

    model, tokenizer = load_gguf(model_dir, gguf_file, torch.float32)
    save_checkpoint(model, tokenizer, checkpoint)
    del model
    gc.collect()


def _convert_checkpoint(checkpoint: Path, converted: Path, compute_type: str) -> None:
    """CTranslate2's conversion of a transformers checkpoint, with its tokenizer and the facts the
    engine needs from its config (written last: its presence means the directory is complete)."""
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    TransformersConverter(str(checkpoint), low_cpu_mem_usage=True).convert(
        str(converted), quantization=compute_type
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    tokenizer.save_pretrained(converted / _TOKENIZER_DIR)
    hf_config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    try:
        eos = GenerationConfig.from_pretrained(checkpoint, local_files_only=True).eos_token_id
    except OSError:  # no generation_config.json: the model config's eos
        eos = hf_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    info = {
        "eos_token_ids": sorted(eos_ids),
        "max_position_embeddings": getattr(hf_config, "max_position_embeddings", None),
    }
    (converted / _INFO_FILE).write_text(json.dumps(info))


@dataclass
class _Prepared:
    """One request, tokenized and checked, waiting for its batch."""

    index: int
    input_ids: list[int]


class CTranslate2Engine:
    """The ``Engine`` for ``CTranslate2EngineConfig``: one converted model, one lock, batched
    ``generate_batch``."""

    def __init__(self, config: CTranslate2EngineConfig, context: EngineContext) -> None:
        self._config = config
        self._context = context
        # Checked now so that a bad models file fails when the engine is built, not mid-job.
        self._model_dir = resolve_model_dir(config)
        require_installed("ctranslate2", config.id, "ctranslate2", "ctranslate2", INSTALL_HINT)
        # One lock for loading and generating: a second generation would only fight for the cores.
        self._lock = threading.Lock()
        self._generator: Any = None
        self._tokenizer: Any = None
        self._eos_ids: list[int] = []
        self._max_positions: int | None = None

    @property
    def max_parallel_chunks(self) -> int:
        # Generation is serialised by one lock, so more chunk threads would only queue.
        return 1

    @property
    def model_dir(self) -> Path:
        """The converted model's directory (it exists once the model has loaded)."""
        return converted_dir(self._config, self._model_dir, self._context.cache_dir)

    def load(self) -> None:
        """Convert (the first time) and load the model now rather than on the first ``infer``."""
        with self._lock:
            self._ensure_loaded()

    def close(self) -> None:
        """Free the model. A later ``infer`` would load it again."""
        with self._lock:
            self._generator = None
            self._tokenizer = None
        gc.collect()

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,  # one process, one model: nothing shared to protect
    ) -> list[InferenceOutcome]:
        def generate(batch: list[_Prepared], params: SamplingParams) -> list[InferenceOutcome]:
            return self._generate(batch, params, stop)  # the flag is checked per token too

        with self._lock:
            self._ensure_loaded()
            return generate_in_batches(requests, self._prepare, self._batches, generate, stop)

    def _batches(self, items: list[_Prepared], params: SamplingParams) -> list[list[_Prepared]]:
        """Batches of requests of similar length, which waste less compute on padding. A seeded
        sampled request runs alone: its answer then depends on its seed only."""
        size = 1 if params.seed is not None and params.temperature > 0 else self._config.max_batch_size
        ordered = sorted(items, key=lambda item: len(item.input_ids))
        return [ordered[start : start + size] for start in range(0, len(ordered), size)]

    # -- loading ------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._generator is not None:
            return
        from transformers import AutoTokenizer

        target = self.model_dir
        if not (target / _INFO_FILE).is_file():
            convert(self._config, self._model_dir, target)
        info = json.loads((target / _INFO_FILE).read_text())
        tokenizer_dir = converted_tokenizer_dir(self._config, self._model_dir, self._context.cache_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self._eos_ids = list(info["eos_token_ids"])
        self._max_positions = info["max_position_embeddings"]
        self._generator = self._new_generator()

    def _new_generator(self) -> Any:
        import ctranslate2

        return ctranslate2.Generator(
            str(self.model_dir),
            device="cpu",
            compute_type=self._config.compute_type,
            inter_threads=1,
            intra_threads=self._config.threads or self._context.threads,
        )

    # -- one request --------------------------------------------------------------------------

    def _prepare(self, index: int, request: PromptRequest) -> _Prepared | ErrorDetail:
        refusal = CAPABILITIES.refusal(request, self._config.id)
        if refusal is not None:
            return refusal
        input_ids = prompt_ids(request, self._tokenizer, "ctranslate2")
        if isinstance(input_ids, ErrorDetail):
            return input_ids
        limit = self._max_positions
        if limit is not None and len(input_ids) > limit - request.params.max_tokens:
            return context_length_exceeded(self._config.id, len(input_ids), request.params.max_tokens, limit)
        return _Prepared(index=index, input_ids=input_ids)

    # -- one batch ----------------------------------------------------------------------------

    def _generate(
        self, batch: list[_Prepared], params: SamplingParams, stop: StopFlag | None
    ) -> list[InferenceOutcome]:
        prompts = [self._tokenizer.convert_ids_to_tokens(item.input_ids) for item in batch]
        results = self._generator_for(params).generate_batch(
            [prompt for prompt in prompts for _ in range(params.n)],  # n generations: n rows
            max_batch_size=self._config.max_batch_size,
            max_length=params.max_tokens,
            include_prompt_in_result=False,  # the prompt goes through the model at once: faster
            end_token=self._eos_ids,
            return_end_token=True,
            return_logits_vocab=params.logprobs,
            # Polled after every token: a cancel lands within one decoding step.
            callback=(lambda _step: stop.is_set()) if stop is not None else None,
            **_sampling(params),
        )
        if stop is not None and stop.is_set():
            return [CANCELLED] * len(batch)
        completions: list[InferenceOutcome] = []
        for row, item in enumerate(batch):
            rows = results[row * params.n : (row + 1) * params.n]
            generations = [self._generation(result, params) for result in rows]
            prompt, answer = len(item.input_ids), sum(count for _, count in generations)
            usage = Usage(prompt_tokens=prompt, completion_tokens=answer, total_tokens=prompt + answer)
            completions.append(Completion(generations=[g for g, _ in generations], usage=usage))
        return completions

    def _generator_for(self, params: SamplingParams) -> Any:
        """The generator to sample ``params`` with. CTranslate2 seeds each worker thread's random
        generator once, when the thread first samples, so a seed only holds on a fresh generator
        (a reload from the converted files, which the page cache keeps warm)."""
        if params.seed is None or params.temperature == 0:
            return self._generator
        import ctranslate2

        ctranslate2.set_random_seed(params.seed)
        return self._new_generator()

    def _generation(self, result: Any, params: SamplingParams) -> tuple[Generation, int]:
        """One sequence's answer, and how many tokens it generated."""
        generated: list[int] = list(result.sequences_ids[0])
        tokens, finish = generated, "length"
        if generated and generated[-1] in self._eos_ids:
            finish = "stop"
        text = self._decode(tokens[:-1] if finish == "stop" else tokens)
        cut = self._cut_at_stop(text, tokens, params.stop)
        if cut is not None:
            text, tokens, finish = cut[0], cut[1], "stop"
        logprobs = None
        if params.logprobs:
            # A prompt longer than the batch's shortest is fed in the decoding loop, and its
            # positions' logits come first: the generated tokens' are the last ones.
            steps = result.logits[0][len(result.logits[0]) - len(generated) :]
            logprobs = Logprobs(content=self._token_logprobs(steps, tokens, params.top_logprobs))
        generation = Generation(
            role="assistant", text=text, eot=finish == "stop", finish_reason=finish, logprobs=logprobs
        )
        return generation, len(tokens)

    def _decode(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(tokens, skip_special_tokens=True))

    def _cut_at_stop(
        self, text: str, tokens: list[int], stops: tuple[str, ...]
    ) -> tuple[str, list[int]] | None:
        """The answer before its first stop sequence (left out, as OpenAI does) and the tokens up to
        the one that completed it, which is where generation would have stopped; None without one.
        CTranslate2 has no stop strings, so the answer is cut afterwards."""
        found = [text.index(stop) for stop in stops if stop and stop in text]
        if not found:
            return None
        for count in range(1, len(tokens) + 1):
            if any(stop and stop in self._decode(tokens[:count]) for stop in stops):
                return text[: min(found)], tokens[:count]
        return text[: min(found)], tokens

    def _token_logprobs(self, logits: list[Any], tokens: list[int], top: int | None) -> list[TokenLogprob]:
        """Each chosen token's log-probability under the model's raw logits (CTranslate2 returns
        them before temperature or top-p reshaped them), as OpenAI reports them, and the ``top``
        most likely alternatives at its place."""
        import numpy as np

        if not tokens:
            return []
        steps = np.stack([np.asarray(step, dtype=np.float64) for step in logits[: len(tokens)]])
        peak = steps.max(axis=-1, keepdims=True)
        logprobs = steps - peak - np.log(np.exp(steps - peak).sum(axis=-1, keepdims=True))
        entries = []
        for row, token_id in zip(logprobs, tokens, strict=True):
            alternatives = None
            if top:
                best = np.argsort(-row, kind="stable")[:top]
                alternatives = [self._top(int(i), float(row[i])) for i in best]
            chosen = self._top(token_id, float(row[token_id]))
            entries.append(TokenLogprob(**chosen.model_dump(), top_logprobs=alternatives))
        return entries

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        token = str(self._tokenizer.decode([token_id]))
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def _sampling(params: SamplingParams) -> dict[str, Any]:
    """``generate_batch``'s sampling options: greedy at temperature 0, else the whole vocabulary
    (top-k 0: OpenAI semantics have no top-k) under temperature and top-p."""
    if params.temperature == 0:
        return {"sampling_topk": 1}
    return {"sampling_topk": 0, "sampling_temperature": params.temperature, "sampling_topp": params.top_p}
