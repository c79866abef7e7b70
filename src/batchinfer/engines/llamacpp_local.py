"""A GGUF model run in-process with llama.cpp (``llama-cpp-python``, the optional extra ``[llamacpp]``).

The CPU engine: quantized GGUF files run several times faster here than transformers' dequantized
copy. ``llama_cpp`` is imported when the model loads, never at module import, so the default install
(which does not carry it) can still import, type-check and configure this engine.

One ``Llama`` object holds one context, so generation is serialised by a lock and requests run one
after another (llama-cpp-python has no batched multi-sequence API); ``n`` generations are ``n`` runs
with seeds ``seed, seed + 1, ...``. The prompt is rendered with the GGUF's own chat template (or
ChatML when the file has none) and tokenized here, so a prompt that does not fit the context becomes
that line's ``context_length_exceeded`` error before any compute is spent on it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
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
from batchinfer.engines.configs import EngineContext, LlamaCppEngineConfig
from batchinfer.engines.local_common import (
    CHAT_FIELDS,
    Capabilities,
    context_length_exceeded,
    package_dir,
    require_installed,
)
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import EngineError
from batchinfer.records import Completion, ErrorDetail, Generation, Logprobs, TokenLogprob, TopLogprob, Usage

# Used when the GGUF carries no `tokenizer.chat_template`: the format of most small instruct models.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

INSTALL_HINT = "pip install -e '.[llamacpp]' (builds llama.cpp from source: ~10 min on 2 cores)"
CAPABILITIES = Capabilities("llamacpp", {Endpoint.chat: CHAT_FIELDS | {"top_logprobs", "stop", "seed"}})


def resolve_gguf_path(config: LlamaCppEngineConfig) -> Path:
    """The GGUF file: ``path`` (a file, or a directory + ``gguf_file``) or ``package`` + ``gguf_file``."""
    if config.path:
        base = Path(config.path).expanduser()
    elif config.package:
        base = package_dir(config.id, config.package, "set `path` to a .gguf file")
    else:
        raise EngineError(
            f"Model {config.id!r} names no model location. Set `path` (a .gguf file or a directory "
            "with `gguf_file`) or `package` + `gguf_file`."
        )
    gguf = base / config.gguf_file if config.gguf_file else base
    if not gguf.is_file():
        raise EngineError(
            f"Model {config.id!r}: GGUF file {str(gguf)!r} does not exist. Point `path` at a .gguf "
            "file, or `gguf_file` at a file inside `path`/`package`."
        )
    return gguf


class LlamaCppEngine:
    """The ``Engine`` for ``LlamaCppEngineConfig``: one ``llama_cpp.Llama``, one lock."""

    def __init__(self, config: LlamaCppEngineConfig, context: EngineContext) -> None:
        self._config = config
        self._context = context
        # Checked now so that a bad models file fails when the engine is built, not mid-job.
        self._gguf = resolve_gguf_path(config)
        require_installed("llama_cpp", config.id, "llamacpp", "llama-cpp-python", INSTALL_HINT)
        self._lock = threading.Lock()
        # Logits of every position are kept only when some request wants logprobs: they cost
        # n_ctx x vocab floats. A model loaded without them is reloaded once with them.
        self._llm: Any = None
        self._llm_logits_all = False
        self._formatter: Any = None
        self._add_bos = False
        self._bos_text = ""

    @property
    def max_parallel_chunks(self) -> int:
        # One context, one lock: more chunk threads would only queue.
        return 1

    @property
    def gguf_path(self) -> Path:
        return self._gguf

    def load(self, logprobs: bool = False) -> None:
        """Load the model now rather than on the first ``infer``."""
        with self._lock:
            self._ensure_loaded(logprobs)

    def close(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,  # in-process, one context: nothing shared to protect
    ) -> list[InferenceOutcome]:
        if not requests:
            return []
        with self._lock:
            self._ensure_loaded(any(r.params.logprobs for r in requests))
            outcomes: list[InferenceOutcome] = []
            for request in requests:
                if stop is not None and stop.is_set():
                    outcomes.append(CANCELLED)
                    continue
                outcomes.append(self._infer_one(request, stop))
            return outcomes

    # -- loading ------------------------------------------------------------------------------

    def _ensure_loaded(self, logprobs: bool) -> None:
        if self._llm is not None and (self._llm_logits_all or not logprobs):
            return
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        config = self._config
        kv_type = {
            "f16": llama_cpp.GGML_TYPE_F16,
            "f32": llama_cpp.GGML_TYPE_F32,
            "q8_0": llama_cpp.GGML_TYPE_Q8_0,
        }[config.kv_cache_dtype]
        llm = Llama(
            model_path=str(self._gguf),
            n_ctx=config.n_ctx,
            n_batch=min(config.n_batch, config.n_ctx),
            n_threads=config.n_threads or self._context.threads,
            logits_all=logprobs,
            type_k=kv_type,
            type_v=kv_type,
            seed=config.seed,
            verbose=False,
        )
        metadata: dict[str, str] = dict(llm.metadata or {})
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos_text = llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id >= 0 else ""
        bos_text = llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        template = config.chat_template or metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text)
        add_bos = metadata.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
        self._add_bos = add_bos and bos_id >= 0
        self._bos_text = bos_text
        self._llm, self._llm_logits_all = llm, logprobs

    # -- one request --------------------------------------------------------------------------

    def _prompt_tokens(self, request: PromptRequest) -> list[int] | ErrorDetail:
        chat = CAPABILITIES.text_chat(request, self._config.id)
        if isinstance(chat, ErrorDetail):
            return chat
        try:
            prompt = self._formatter(messages=chat).prompt
        except Exception as exc:  # a template's raise_exception() (e.g. roles out of order)
            return ErrorDetail(
                code=ErrorCode.chat_template_error, message=f"The chat template refused it: {exc}"
            )
        # The template may already have written the BOS; adding a second one changes the answer.
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        tokens: list[int] = self._llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        limit = self._config.n_ctx
        if len(tokens) + request.params.max_tokens > limit:
            error = context_length_exceeded(self._config.id, len(tokens), request.params.max_tokens, limit)
            return error.model_copy(update={"message": error.message + " Or raise n_ctx."})
        return tokens

    def _infer_one(self, request: PromptRequest, stop: StopFlag | None) -> InferenceOutcome:
        tokens = self._prompt_tokens(request)
        if isinstance(tokens, ErrorDetail):
            return tokens
        params = request.params
        generations: list[Generation] = []
        completion_tokens = 0
        seed = self._config.seed if params.seed is None else params.seed
        for i in range(params.n):
            result = self._complete(tokens, params, seed + i, stop)
            if result is None:
                return CANCELLED
            generation, count = result
            generations.append(generation)
            completion_tokens += count
        usage = Usage(
            prompt_tokens=len(tokens),
            completion_tokens=completion_tokens,
            total_tokens=len(tokens) + completion_tokens,
        )
        return Completion(generations=generations, usage=usage)

    def _complete(
        self, tokens: list[int], params: SamplingParams, seed: int, stop: StopFlag | None
    ) -> tuple[Generation, int] | None:
        """One generation, and its token count; ``None`` when the job was cancelled meanwhile."""
        from llama_cpp import StoppingCriteriaList

        cancelled = False

        def cancel_check(_ids: Any, _logits: Any) -> bool:
            # Polled after every token: a cancel lands within one decoding step.
            nonlocal cancelled
            cancelled = stop is not None and stop.is_set()
            return cancelled

        response = self._llm.create_completion(
            prompt=tokens,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            # OpenAI semantics: no top-k, min-p or repetition penalty unless asked for.
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=seed,
            logprobs=1 if params.logprobs else None,
            stop=list(params.stop) or None,
            stopping_criteria=StoppingCriteriaList([cancel_check]) if stop is not None else None,
        )
        if cancelled:
            return None
        choice = response["choices"][0]
        finish = choice.get("finish_reason") or "stop"
        raw = choice.get("logprobs")
        logprobs = None
        if params.logprobs and raw:
            best = self._alternatives(len(tokens), len(raw["tokens"]), params.top_logprobs)
            logprobs = _logprobs(raw, best)
        generation = Generation(
            role="assistant",
            text=choice["text"],
            eot=finish == "stop",
            finish_reason=finish,
            logprobs=logprobs,
        )
        return generation, int(response["usage"]["completion_tokens"])

    def _alternatives(
        self, prompt_len: int, generated: int, top: int | None
    ) -> list[list[TopLogprob]] | None:
        """The ``top`` most likely tokens at each generated position, from the logits llama.cpp kept
        (``logits_all``). Not llama-cpp-python's own ``top_logprobs``: it keys them by their text, so
        tokens that decode alike (partial UTF-8 bytes) overwrite each other."""
        if not top:
            return None
        import numpy as np

        logits = np.asarray(self._llm.scores[prompt_len - 1 : prompt_len - 1 + generated], dtype=np.float64)
        peak = logits.max(axis=-1, keepdims=True)
        logprobs = logits - peak - np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))
        rows = []
        for row in logprobs:
            best = np.argsort(-row, kind="stable")[:top]
            rows.append([TopLogprob(token=self._piece(int(i)), logprob=float(row[i])) for i in best])
        return rows

    def _piece(self, token_id: int) -> str:
        # As llama-cpp-python writes the chosen tokens: bytes that are not UTF-8 on their own dropped.
        return str(self._llm.detokenize([token_id]).decode("utf-8", errors="ignore"))


def _logprobs(raw: dict[str, Any], alternatives: list[list[TopLogprob]] | None) -> Logprobs:
    """llama-cpp-python's completions columns as per-token entries, with their alternatives."""
    content = []
    for position, (token, value) in enumerate(zip(raw["tokens"], raw["token_logprobs"], strict=True)):
        if value is None:
            continue
        best = alternatives[position] if alternatives is not None else None
        content.append(TokenLogprob(token=token, logprob=float(value), top_logprobs=best))
    return Logprobs(content=content)
