"""What the fake OpenAI-compatible server answers, per endpoint: pure functions of the request body.

Every answer is derived from the request's prompt text (``"echo: <text>"``), so a test can check
that each output landed on its own input line, and it carries what real servers send beside the
text, so a test can check that nothing of it is lost on the way back:

* chat: ``system_fingerprint``, ``refusal``, usage details; a tool call (``finish_reason``
  ``tool_calls``) when the request offers ``tools``; JSON content (``{"echo": text}``) under a
  JSON ``response_format``; per-token ``logprobs`` with ``top_logprobs`` alternatives when asked;
  the answer cut at a ``stop`` sequence; a refusal for a prompt holding ``[refuse]``.
* completions: one choice per prompt and ``n``, legacy ``logprobs`` columns when asked.
* embeddings: a deterministic vector per input (``dimensions`` long, default 8; base64 on ask).
* responses: a ``message`` output item, or a ``function_call`` item when ``tools`` are offered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from typing import Any

CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES = "chat", "completions", "embeddings", "responses"
FINGERPRINT = "fp_fake"
REFUSAL = "I can't help with that."
_DEFAULT_DIMENSIONS = 8


def text_of(content: Any) -> str:
    """A message's text: the string itself, or its text parts joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return ""


def words(text: str) -> int:
    return len(text.split())


def prompt_text(kind: str, body: Any) -> str:
    """The text an answer echoes (and fault scripts read); ``ValueError`` for a body that is not
    this endpoint's request."""
    if not isinstance(body, dict):
        raise ValueError("the body is not a JSON object")
    if kind == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ValueError("messages must be a list")
        return _last_user_text(messages)
    if kind == RESPONSES:
        given = body.get("input")
        if isinstance(given, str):
            return given
        if not isinstance(given, list):
            raise ValueError("input must be a string or a list of items")
        return _last_user_text(given)
    field = "prompt" if kind == COMPLETIONS else "input"
    inputs = _inputs(body.get(field), field)
    return inputs[0]


def _last_user_text(messages: list[Any]) -> str:
    last_user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {})
    return text_of(last_user.get("content"))


def _inputs(given: Any, field: str) -> list[str]:
    """A prompt or input as a list of texts (token arrays are written out as their numbers)."""
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given:
        if all(isinstance(item, int) for item in given):
            return [" ".join(map(str, given))]
        return [item if isinstance(item, str) else " ".join(map(str, item)) for item in given]
    raise ValueError(f"{field} must be a string or a non-empty list")


def _answer_text(body: dict[str, Any], text: str, index: int) -> tuple[str, str]:
    """The answer and its finish_reason, after ``max_tokens`` (in words) and ``stop``."""
    answer = f"echo: {text}" + (f" #{index}" if index else "")
    for stop in _stops(body.get("stop")):
        if stop and stop in answer:
            return answer[: answer.index(stop)], "stop"
    limit = body.get("max_tokens", body.get("max_completion_tokens", body.get("max_output_tokens")))
    if limit is not None and words(answer) > int(limit):
        return " ".join(answer.split()[: int(limit)]), "length"
    return answer, "stop"


def _stops(stop: Any) -> list[str]:
    return [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]


def _token_logprobs(answer: str, top: int) -> list[dict[str, Any]]:
    entries = []
    for k, token in enumerate(answer.split()):
        logprob = -0.1 * (k + 1)
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        alternatives += [
            {"token": f"alt{j}", "logprob": logprob - j, "bytes": list(f"alt{j}".encode())}
            for j in range(1, top)
        ]
        entries.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives[:top],
            }
        )
    return entries


def _tool_name(body: dict[str, Any]) -> str | None:
    """The function the answer calls: the one tool_choice names, else the first tool offered."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        named = choice.get("function", {}).get("name") or choice.get("name")
        if named:
            return str(named)
    first = tools[0]
    return str(first.get("function", {}).get("name") or first.get("name") or "tool")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def chat_answer(
    body: dict[str, Any], text: str, number: int, model: str, max_choices: int | None
) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    n = min(n, max_choices) if max_choices is not None else n
    tool = _tool_name(body)
    json_wanted = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    choices, completion_tokens = [], 0
    for i in range(n):
        answer, finish = _answer_text(body, text, i)
        message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
        if "[refuse]" in text:
            message.update(content=None, refusal=REFUSAL)
        elif tool is not None:
            call = {"name": tool, "arguments": json.dumps({"echo": text})}
            message.update(
                content=None, tool_calls=[{"id": f"call_{number}_{i}", "type": "function", "function": call}]
            )
            finish = "tool_calls"
        elif json_wanted:
            message["content"] = answer = json.dumps({"echo": text})
        choice: dict[str, Any] = {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": _token_logprobs(answer, int(body.get("top_logprobs") or 0)),
                "refusal": None,
            }
        completion_tokens += words(answer)
        choices.append(choice)
    prompt_tokens = sum(words(text_of(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", model),
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def completions_answer(
    body: dict[str, Any], number: int, model: str, max_choices: int | None
) -> dict[str, Any]:
    prompts = _inputs(body.get("prompt"), "prompt")
    n = int(body.get("n") or 1)
    n = min(n, max_choices) if max_choices is not None else n
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for prompt in prompts:
        for i in range(n):
            answer, finish = _answer_text(body, prompt, i)
            choice: dict[str, Any] = {
                "index": len(choices),
                "text": answer,
                "finish_reason": finish,
                "logprobs": None,
            }
            if body.get("logprobs") is not None:
                entries = _token_logprobs(answer, int(body["logprobs"]))
                choice["logprobs"] = {
                    "tokens": [e["token"] for e in entries],
                    "token_logprobs": [e["logprob"] for e in entries],
                    "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries],
                    "text_offset": [answer.find(e["token"]) for e in entries],
                }
            completion_tokens += words(answer)
            choices.append(choice)
    return {
        "id": f"cmpl-fake-{number}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", model),
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": _usage(sum(map(words, prompts)), completion_tokens),
    }


def embedding_of(text: str, dimensions: int = _DEFAULT_DIMENSIONS) -> list[float]:
    """A deterministic unit-range vector for ``text``: the same text, the same vector."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    return [round(byte / 127.5 - 1, 6) for byte in digest[:dimensions]]


def embeddings_answer(body: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = _inputs(body.get("input"), "input")
    dimensions = int(body.get("dimensions") or _DEFAULT_DIMENSIONS)
    data = []
    for index, text in enumerate(inputs):
        vector: list[float] | str = embedding_of(text, dimensions)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(map(words, inputs))
    return {
        "object": "list",
        "model": body.get("model", model),
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def responses_answer(body: dict[str, Any], text: str, number: int, model: str) -> dict[str, Any]:
    tool = _tool_name(body)
    answer, finish = _answer_text(body, text, 0)
    item: dict[str, Any]
    if tool is not None:
        item = {
            "type": "function_call",
            "id": f"fc_fake_{number}",
            "call_id": f"call_{number}",
            "name": tool,
            "arguments": json.dumps({"echo": text}),
            "status": "completed",
        }
    else:
        part = {"type": "output_text", "text": answer, "annotations": []}
        item = {
            "type": "message",
            "id": f"msg_fake_{number}",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
    incomplete = finish == "length" and tool is None
    prompt_tokens, output_tokens = words(text), words(answer)
    return {
        "id": f"resp_fake_{number}",
        "object": "response",
        "created_at": int(time.time()),
        "model": body.get("model", model),
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": [item],
        "usage": {
            "input_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
