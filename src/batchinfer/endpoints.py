"""The OpenAI endpoints a batch line may name, and how a job's own options fill a line's body.

A job runs one endpoint (checked at validation): every line of an OpenAI batch file names it in
``url``, as OpenAI's Batch API and ``vllm run-batch`` read it; a line in the seed's format (a list of
messages) is a chat line. Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict

from batchinfer.contract import Options


class Endpoint(str, Enum):
    """An OpenAI-compatible endpoint, spelled as OpenAI's Batch API spells it."""

    chat = "/v1/chat/completions"
    completions = "/v1/completions"
    embeddings = "/v1/embeddings"
    responses = "/v1/responses"


# The body field that holds the prompt, per endpoint: a line without it is refused.
PROMPT_FIELD = {
    Endpoint.chat: "messages",
    Endpoint.completions: "prompt",
    Endpoint.embeddings: "input",
    Endpoint.responses: "input",
}


def endpoint_of(url: Any) -> Endpoint | None:
    """The endpoint a batch line's ``url`` names (``/v1/embeddings`` or ``/embeddings``), else None."""
    if not isinstance(url, str):
        return None
    path = url if url.startswith("/v1/") else "/v1" + url
    try:
        return Endpoint(path)
    except ValueError:
        return None


def endpoint_list() -> str:
    return ", ".join(f"'{e.value}'" for e in Endpoint)


class RequestDefaults(BaseModel):
    """The options a job was submitted with (``options`` and ``num_generations``), where it set them.

    They fill the fields a batch line leaves out, never one it gives: the line is the request and
    the job only supplies what the line did not say. A field nobody set is left to the model
    server's own default, as OpenAI's Batch API and ``vllm run-batch`` leave it.
    """

    model_config = ConfigDict(frozen=True)

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    logprobs: bool | None = None
    n: int | None = None

    @classmethod
    def from_options(cls, options: Options, num_generations: int) -> RequestDefaults:
        """The job's ``options`` where it set them, and ``num_generations``."""
        return cls(**options.model_dump(exclude_none=True), n=num_generations)

    def fill(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``body`` with the job's options added where it has none, and the job options that mean
        nothing for ``endpoint`` (the caller refuses the line, naming them)."""
        fields, inapplicable = self._as_body_fields(endpoint)
        if "max_completion_tokens" in body:  # its newer name: sending both is an error at OpenAI
            fields.pop("max_tokens", None)
        filled = dict(body)
        for name, value in fields.items():
            if value is not None and name not in filled:
                filled[name] = value
        return filled, inapplicable

    def _as_body_fields(self, endpoint: Endpoint) -> tuple[dict[str, Any], list[str]]:
        logprobs = True if self.logprobs else None
        n = self.n if self.n and self.n > 1 else None
        sampling = {"temperature": self.temperature, "top_p": self.top_p}
        if endpoint is Endpoint.chat:
            return {"max_tokens": self.max_tokens, **sampling, "logprobs": logprobs, "n": n}, []
        if endpoint is Endpoint.completions:
            # The completions API's logprobs is a count of alternatives; 0 is the chosen tokens only.
            return {
                "max_tokens": self.max_tokens,
                **sampling,
                "logprobs": 0 if logprobs else None,
                "n": n,
            }, []
        set_here: dict[str, Any] = {"options.logprobs": logprobs, "num_generations": n}
        if endpoint is Endpoint.responses:
            fields = {"max_output_tokens": self.max_tokens, **sampling}
            return fields, [name for name, value in set_here.items() if value is not None]
        set_here.update({f"options.{k}": v for k, v in (("max_tokens", self.max_tokens), *sampling.items())})
        return {}, [name for name, value in set_here.items() if value is not None]
