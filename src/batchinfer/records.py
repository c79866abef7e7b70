"""Output records: what the success and error files hold, one JSON object a line, in input order."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batchinfer import jsonwire
from batchinfer.contract import Message


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """A chosen token and, when asked (``top_logprobs``), the most likely alternatives at its place."""

    top_logprobs: list[TopLogprob] | None = None


class Logprobs(BaseModel):
    """Log-probabilities of the chosen tokens, in OpenAI's ``choices[].logprobs`` shape."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class Generation(Message):
    """One generated answer: a seed ``Message`` (role ``assistant``) plus why it stopped.

    A tool call has ``tool_call: true`` and its calls in ``metadata.tool_calls`` (OpenAI's shape);
    everything else the server said about the message (``refusal``, ``reasoning_content``,
    ``annotations``, ...) is in ``metadata`` under its own name."""

    finish_reason: str | None = Field(
        default=None,
        description="'stop' (end of turn or a stop sequence), 'length' (hit max_tokens), "
        "'tool_calls', or engine-specific.",
    )
    logprobs: Logprobs | None = None


class Usage(BaseModel):
    """Token counts. Whatever else the server reports (``prompt_tokens_details``, ...) is kept."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


Embedding = list[float] | str  # a vector, or base64 when the request asked encoding_format=base64


class Completion(BaseModel):
    """What an engine returns for one prompt that worked: generations, or for an embeddings
    request one vector per input; ``response`` is the model server's own answer, whole."""

    generations: list[Generation] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    embeddings: list[Embedding] | None = None
    response: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable reason, e.g. 'invalid_json', 'http_400'.")
    message: str = Field(description="What went wrong and how to fix it.")
    param: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,  # only where a field is to blame (an OpenAI batch line's)
        description="The field of the line at fault, as OpenAI names it ('custom_id', 'body.model').",
    )


class SuccessRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: int = Field(description="1-based line number in the input file.")
    custom_id: str | None = None
    generations: list[Generation] = Field(description="The answers; empty for an embeddings line.")
    usage: Usage
    embeddings: list[Embedding] | None = Field(
        default=None, description="An embeddings line's vectors, one per input, in input order."
    )
    response: dict[str, Any] | None = Field(
        default=None,
        description="The model server's answer as it sent it (engines that talk to a server).",
    )
    cached: bool = Field(
        default=False,
        description="The answer came from the model's result cache (``cache: true``), not the model.",
    )


class ErrorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: int | None = Field(description="1-based input line; null for a whole-file error.")
    custom_id: str | None = None
    error: ErrorDetail


def dump_record(record: SuccessRecord | ErrorRecord) -> str:
    """One JSONL line (no newline). Unset fields of a generation are dropped to keep lines lean;
    the record's own fields (``custom_id`` included) are always present, ``embeddings`` and
    ``response`` when there are some, ``cached`` when true. Built from pydantic's compiled
    serializer piece by piece: this runs once per prompt, on the hot path."""
    if isinstance(record, ErrorRecord):
        return record.model_dump_json()
    generations = ",".join(g.model_dump_json(exclude_none=True) for g in record.generations)
    extra = ""
    if record.embeddings is not None:
        extra += f',"embeddings":{_json(record.embeddings)}'
    if record.response is not None:
        extra += f',"response":{_json(record.response)}'
    if record.cached:
        extra += ',"cached":true'
    return (
        f'{{"line":{record.line},"custom_id":{_json(record.custom_id)},'
        f'"generations":[{generations}],"usage":{record.usage.model_dump_json()}{extra}}}'
    )


def _json(value: Any) -> str:
    return jsonwire.dumps_text(value)
