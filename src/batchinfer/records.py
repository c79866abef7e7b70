"""Output records: what the success and error files hold, one JSON object a line, in input order."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from batchinfer.contract import Message


class TokenLogprob(BaseModel):
    token: str
    logprob: float


class Logprobs(BaseModel):
    """Log-probabilities of the chosen tokens, in OpenAI's ``choices[].logprobs`` shape."""

    content: list[TokenLogprob]


class Generation(Message):
    """One generated answer: a seed ``Message`` (role ``assistant``) plus why it stopped."""

    finish_reason: str | None = Field(
        default=None,
        description="'stop' (end of turn), 'length' (hit max_tokens), or engine-specific.",
    )
    logprobs: Logprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Completion(BaseModel):
    """What an engine returns for one prompt that worked."""

    generations: list[Generation]
    usage: Usage = Field(default_factory=Usage)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable reason, e.g. 'invalid_json', 'http_400'.")
    message: str = Field(description="What went wrong and how to fix it.")


class SuccessRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: int = Field(description="1-based line number in the input file.")
    custom_id: str | None = None
    generations: list[Generation]
    usage: Usage


class ErrorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: int | None = Field(description="1-based input line; null for a whole-file error.")
    custom_id: str | None = None
    error: ErrorDetail


def dump_record(record: SuccessRecord | ErrorRecord) -> str:
    """One JSONL line (no newline). Unset fields of a generation are dropped to keep lines lean;
    the record's own fields (``custom_id`` included) are always present. Built from pydantic's
    compiled serializer piece by piece: this runs once per prompt, on the hot path."""
    if isinstance(record, ErrorRecord):
        return record.model_dump_json()
    generations = ",".join(g.model_dump_json(exclude_none=True) for g in record.generations)
    return (
        f'{{"line":{record.line},"custom_id":{json.dumps(record.custom_id, ensure_ascii=False)},'
        f'"generations":[{generations}],"usage":{record.usage.model_dump_json()}}}'
    )
