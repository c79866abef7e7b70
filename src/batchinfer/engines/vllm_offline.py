"""vLLM's offline ``LLM`` in-process on a GPU (the optional extra ``[vllm]``).

One engine per worker process (``registry.get_engine`` caches it), fed a whole chunk per
``LLM.generate`` call so that vLLM's scheduler batches continuously across the chunk. Requests carry
their own ``SamplingParams`` in the same call (vLLM takes one per prompt), so differing ``n``,
``temperature`` or ``logprobs`` do not split a chunk.

Prompts are rendered with the tokenizer's chat template and tokenized here, the same way the
``transformers`` engine does, and handed to vLLM as token ids: a line too long for the context then
becomes that line's ``context_length_exceeded`` error instead of an exception that fails the chunk.

Cancel: ``LLM.generate`` runs vLLM's engine loop in the calling thread and offers no thread-safe
abort, so the stop flag is checked between calls. By default a chunk is one call (cancel lands when
the chunk's generation ends: seconds for typical chunks); ``batch_size`` splits it into smaller calls
for a finer cancel at some cost in batching.

``vllm`` is imported when the model loads, never at module import: the default install can import,
type-check and configure this engine without it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
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
from batchinfer.engines.configs import EngineContext, VLLMEngineConfig
from batchinfer.engines.local_common import (
    CHAT_FIELDS,
    Capabilities,
    context_length_exceeded,
    require_installed,
)
from batchinfer.error_codes import ErrorCode
from batchinfer.records import Completion, ErrorDetail, Generation, Logprobs, TokenLogprob, TopLogprob, Usage

INSTALL_HINT = (
    "install a CUDA build of torch first, then `pip install -e '.[vllm]'` (see README, Engines); "
    "vLLM needs an NVIDIA GPU"
)


# Structured output and the rest of the OpenAI fields are served by `vllm serve` (engine openai).
CAPABILITIES = Capabilities("vllm", {Endpoint.chat: CHAT_FIELDS | {"top_logprobs", "stop", "seed"}})


@dataclass
class _Prepared:
    index: int
    input_ids: list[int]
    params: SamplingParams


class VLLMEngine:
    """The ``Engine`` for ``VLLMEngineConfig``: one ``vllm.LLM``, one lock."""

    def __init__(self, config: VLLMEngineConfig, context: EngineContext) -> None:
        require_installed("vllm", config.id, "vllm", "vllm", INSTALL_HINT)
        self._config = config
        self._context = context
        self._lock = threading.Lock()
        self._llm: Any = None
        self._tokenizer: Any = None
        self._max_len: int | None = config.max_model_len

    @property
    def max_parallel_chunks(self) -> int:
        # Generation is serialised on one LLM; a second chunk thread is queued at the lock while
        # the first one's results are written, so the GPU does not wait on Prefect between chunks.
        return 2

    def load(self) -> None:
        with self._lock:
            self._ensure_loaded()

    def close(self) -> None:
        with self._lock:
            self._llm = self._tokenizer = None
        # vLLM frees GPU memory when the LLM object is collected (and its engine core process ends).
        import gc

        gc.collect()

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,  # in-process: vLLM's scheduler is the only limit
    ) -> list[InferenceOutcome]:
        if not requests:
            return []
        outcomes: list[InferenceOutcome | None] = [None] * len(requests)
        # Everything under the lock, tokenizing included: vLLM detokenizes with the same tokenizer
        # object during generate, and a fast tokenizer is not safe to share between threads.
        with self._lock:
            self._ensure_loaded()
            ready: list[_Prepared] = []
            for index, request in enumerate(requests):
                prepared = self._prepare(index, request)
                if isinstance(prepared, ErrorDetail):
                    outcomes[index] = prepared
                else:
                    ready.append(prepared)
            size = self._config.batch_size if stop is not None and self._config.batch_size else len(ready)
            for start in range(0, len(ready), max(1, size)):
                piece = ready[start : start + size]
                if stop is not None and stop.is_set():  # checked between vLLM calls
                    for item in piece:
                        outcomes[item.index] = CANCELLED
                    continue
                for item, outcome in zip(piece, self._generate(piece), strict=True):
                    outcomes[item.index] = outcome
        return [outcome if outcome is not None else CANCELLED for outcome in outcomes]

    # -- loading ------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._llm is not None:
            return
        from vllm import LLM

        config = self._config
        llm = LLM(
            model=config.model,
            dtype=config.dtype,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            tensor_parallel_size=config.tensor_parallel_size,
            trust_remote_code=config.trust_remote_code,
            enforce_eager=config.enforce_eager,
            seed=config.seed,
        )
        self._tokenizer = llm.get_tokenizer()
        try:  # where vLLM keeps the context length it settled on (the model's, or ours)
            self._max_len = int(llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            self._max_len = config.max_model_len
        self._llm = llm

    # -- one request --------------------------------------------------------------------------

    def _prepare(self, index: int, request: PromptRequest) -> _Prepared | ErrorDetail:
        chat = CAPABILITIES.text_chat(request, self._config.id)
        if isinstance(chat, ErrorDetail):
            return chat
        input_ids = self._encode(chat)
        if self._max_len is not None and len(input_ids) + request.params.max_tokens > self._max_len:
            return context_length_exceeded(
                self._config.id, len(input_ids), request.params.max_tokens, self._max_len
            )
        return _Prepared(index=index, input_ids=input_ids, params=request.params)

    def _encode(self, chat: list[dict[str, str]]) -> list[int]:
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            # Rendered to text first, as the transformers engine does: both see the same tokens.
            text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
        text = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"
        return list(tokenizer(text)["input_ids"])

    # -- one vLLM call ------------------------------------------------------------------------

    def _generate(self, piece: list[_Prepared]) -> list[InferenceOutcome]:
        if not piece:
            return []
        try:
            results = self._llm.generate(
                [{"prompt_token_ids": item.input_ids} for item in piece],
                [self._sampling(item.params) for item in piece],
                use_tqdm=False,
            )
        except ValueError as exc:
            # vLLM validates a whole call's inputs up front and refuses all of it for one bad
            # prompt. Run them one by one so only the bad line becomes an error record; errors
            # that are not about the input (CUDA, out of memory) propagate and fail the chunk.
            if len(piece) == 1:
                return [
                    ErrorDetail(code=ErrorCode.invalid_request, message=f"vLLM refused the prompt: {exc}")
                ]
            return [outcome for item in piece for outcome in self._generate([item])]
        return [self._completion(item, result) for item, result in zip(piece, results, strict=True)]

    @staticmethod
    def _sampling(params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            # vLLM wants top_p 1 under greedy decoding; it means nothing there anyway.
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_tokens,
            # k alternatives (at least 1: the top token's), plus the chosen token's.
            logprobs=max(1, params.top_logprobs or 0) if params.logprobs else None,
            stop=list(params.stop) or None,
            seed=params.seed,
        )

    def _completion(self, item: _Prepared, result: Any) -> Completion:
        generations, completion_tokens = [], 0
        for output in result.outputs:
            token_ids = list(output.token_ids)
            completion_tokens += len(token_ids)
            finish = output.finish_reason or "length"
            logprobs = None
            if item.params.logprobs and output.logprobs is not None:
                logprobs = Logprobs(
                    content=self._token_logprobs(token_ids, output.logprobs, item.params.top_logprobs)
                )
            generations.append(
                Generation(
                    role="assistant",
                    text=output.text,
                    eot=finish == "stop",
                    finish_reason=finish,
                    logprobs=logprobs,
                )
            )
        prompt_tokens = len(item.input_ids)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return Completion(generations=generations, usage=usage)

    def _token_logprobs(self, token_ids: list[int], positions: Any, top: int | None) -> list[TokenLogprob]:
        """Each chosen token's logprob and, when asked, the ``top`` alternatives by vLLM's rank."""
        content = []
        for token_id, position in zip(token_ids, positions, strict=False):
            entry = position.get(token_id)
            if entry is None:
                continue
            alternatives = None
            if top:
                ranked = sorted((e for e in position.items() if getattr(e[1], "rank", 0) <= top), key=_rank)
                alternatives = [
                    TopLogprob(token=self._decoded(i, e), logprob=float(e.logprob)) for i, e in ranked
                ]
            token = self._decoded(token_id, entry)
            content.append(TokenLogprob(token=token, logprob=float(entry.logprob), top_logprobs=alternatives))
        return content

    def _decoded(self, token_id: int, entry: Any) -> str:
        token = entry.decoded_token
        return str(token) if token is not None else str(self._tokenizer.decode([token_id]))


def _rank(item: tuple[int, Any]) -> int:
    return int(getattr(item[1], "rank", 0) or 0)
