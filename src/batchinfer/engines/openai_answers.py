"""A model server's 200 answer, per endpoint, as a ``Completion``: the facts in the contract's shape
(generations, tool calls, logprobs, usage, vectors) and the answer itself, whole, in ``response``.

Pure. A body that is not the endpoint's answer raises ``ValueError`` saying what is wrong with it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from batchinfer.endpoints import Endpoint
from batchinfer.records import Completion, Generation, Logprobs, TokenLogprob, TopLogprob, Usage

# Message fields that are the answer itself; every other field the server sets goes to metadata.
_MESSAGE_BODY = frozenset({"role", "content"})


def parse_answer(endpoint: Endpoint, data: Any) -> Completion:
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    parser = {
        Endpoint.chat: _chat,
        Endpoint.completions: _completions,
        Endpoint.embeddings: _embeddings,
        Endpoint.responses: _responses,
    }[endpoint]
    return parser(data)


def merge(first: Completion, more: Completion) -> Completion:
    """Two answers to one request (``n`` asked again for the choices a server left out): their
    generations and usage added up, the second's choices appended to the first's body."""
    response = dict(first.response or {})
    offset = len(response.get("choices") or [])
    extra = [{**c, "index": offset + i} for i, c in enumerate((more.response or {}).get("choices") or [])]
    response["choices"] = [*(response.get("choices") or []), *extra]
    usage = Usage(
        prompt_tokens=first.usage.prompt_tokens + more.usage.prompt_tokens,
        completion_tokens=first.usage.completion_tokens + more.usage.completion_tokens,
        total_tokens=first.usage.total_tokens + more.usage.total_tokens,
    )
    response["usage"] = {**(response.get("usage") or {}), **usage.model_dump(include=_COUNTS)}
    return Completion(generations=[*first.generations, *more.generations], usage=usage, response=response)


_COUNTS = {"prompt_tokens", "completion_tokens", "total_tokens"}


def _chat(data: dict[str, Any]) -> Completion:
    generations = []
    for choice in _choices(data):
        message = choice.get("message")
        if not isinstance(message, dict):
            raise ValueError("a choice has no 'message' object")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError("a choice's message content is not a string")
        metadata = {k: v for k, v in message.items() if k not in _MESSAGE_BODY and v is not None}
        finish = choice.get("finish_reason")
        generations.append(
            Generation(
                role="assistant",
                text=content or "",
                eot=finish in ("stop", "tool_calls"),
                tool_call=True if message.get("tool_calls") else None,
                metadata=metadata or None,
                finish_reason=finish,
                logprobs=_logprobs(choice.get("logprobs")),
            )
        )
    return Completion(generations=generations, usage=_usage(data.get("usage")), response=data)


def _completions(data: dict[str, Any]) -> Completion:
    generations = []
    for choice in _choices(data):
        text = choice.get("text")
        if not isinstance(text, str):
            raise ValueError("a choice has no 'text' string")
        finish = choice.get("finish_reason")
        generations.append(
            Generation(
                role="assistant",
                text=text,
                eot=finish == "stop",
                finish_reason=finish,
                logprobs=_legacy_logprobs(choice.get("logprobs")),
            )
        )
    return Completion(generations=generations, usage=_usage(data.get("usage")), response=data)


def _embeddings(data: dict[str, Any]) -> Completion:
    items = data.get("data")
    if not isinstance(items, list) or not all(isinstance(i, dict) and "embedding" in i for i in items):
        raise ValueError("no 'data' list of embeddings")
    ordered = sorted(items, key=lambda item: int(item.get("index") or 0))
    vectors = [item["embedding"] for item in ordered]
    return Completion(embeddings=vectors, usage=_usage(data.get("usage")), response=data)


def _responses(data: dict[str, Any]) -> Completion:
    output = data.get("output")
    if not isinstance(output, list):
        raise ValueError("no 'output' list")
    texts: list[str] = []
    tokens: list[TokenLogprob] = []
    calls, others = [], []
    for item in output:
        if not isinstance(item, dict):
            raise ValueError("an output item is not an object")
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                    tokens.extend(_token_list(part.get("logprobs")) or [])
        elif str(item.get("type", "")).endswith("_call"):
            calls.append(item)
        else:
            others.append(item)
    metadata: dict[str, Any] = {}
    if calls:
        metadata["tool_calls"] = calls
    if others:
        metadata["output"] = others  # reasoning summaries and the like, as the server sent them
    generation = Generation(
        role="assistant",
        text="".join(texts),
        eot=data.get("status") == "completed",
        tool_call=True if calls else None,
        metadata=metadata or None,
        finish_reason=_responses_finish(data, bool(calls)),
        logprobs=Logprobs(content=tokens) if tokens else None,
    )
    given = data.get("usage")
    raw: dict[str, Any] = given if isinstance(given, dict) else {}
    usage = {
        **raw,
        "prompt_tokens": raw.get("input_tokens"),
        "completion_tokens": raw.get("output_tokens"),
    }
    return Completion(generations=[generation], usage=_usage(usage), response=data)


def _responses_finish(data: dict[str, Any], called: bool) -> str | None:
    if called:
        return "tool_calls"
    if data.get("status") == "completed":
        return "stop"
    reason = (data.get("incomplete_details") or {}).get("reason")
    return "length" if reason == "max_output_tokens" else reason or data.get("status")


def _choices(data: dict[str, Any]) -> list[dict[str, Any]]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ValueError("no 'choices' list")
    return choices


def _usage(raw: Any) -> Usage:
    """Usage as counted by the server, details included; servers that leave it out count zero."""
    raw = raw if isinstance(raw, dict) else {}
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    extras = {k: v for k, v in raw.items() if k not in _COUNTS and k not in ("input_tokens", "output_tokens")}
    total = int(raw.get("total_tokens") or prompt + completion)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, **extras)


def _logprobs(raw: Any) -> Logprobs | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Logprobs.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"logprobs are not in OpenAI's shape ({exc.errors()[0]['msg']})") from None


def _token_list(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, list):
        return None
    try:
        return [TokenLogprob.model_validate(entry) for entry in raw]
    except ValidationError as exc:
        raise ValueError(f"logprobs are not in OpenAI's shape ({exc.errors()[0]['msg']})") from None


def _legacy_logprobs(raw: Any) -> Logprobs | None:
    """The completions API's column lists as per-token entries. A token without a logprob (the
    first of an echoed prompt) leaves the conversion out; the server's own is in ``response``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("tokens"), list):
        return None
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(values)
    if len(values) != len(raw["tokens"]) or any(v is None for v in values):
        return None
    content = [
        TokenLogprob(
            token=token,
            logprob=float(value),
            top_logprobs=[TopLogprob(token=t, logprob=float(v)) for t, v in top.items()] if top else None,
        )
        for token, value, top in zip(raw["tokens"], values, tops, strict=False)
    ]
    return Logprobs(content=content)
