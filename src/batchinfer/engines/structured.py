"""Structured output for the transformers engine: a line's ``response_format`` (``json_schema`` or
``json_object``) as a transformers ``LogitsProcessor`` that lets each row of a batch generate only
tokens that keep its answer valid JSON of the schema, then only the end of turn.

Why llguidance (``bench``-style comparison in the README, docs/batch-lines.md): one wheel with no
dependencies, the whole schema enforced (integer ranges included, which outlines-core drops), a
schema compiled in about a millisecond; xgrammar enforces as well but pulls in triton (~1 GB).
Its masks are filled with ``llguidance.numpy``: ``llguidance.torch`` runs ``torch.compile``, which
costs seconds on a CPU. llguidance, numpy and torch are imported when a constrained line runs.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from batchinfer.error_codes import ErrorCode
from batchinfer.records import ErrorDetail

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class JsonGrammars:
    """Compiled ``response_format``s of one model's tokenizer, each compiled once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_id: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_id = eos_id
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None  # wrapping the tokenizer costs ~0.3 s: once, on first use
        self._compiled: dict[str, Any] = {}

    def matcher(self, response_format: str) -> Any:
        """The llguidance matcher that a row's copy starts from, or an ``ErrorDetail`` saying
        what is wrong with the line's ``response_format``."""
        with self._lock:
            if response_format not in self._compiled:
                self._compiled[response_format] = self._compile(response_format)
            return self._compiled[response_format]

    def processor(self, matcher: Any) -> Any:
        return _JsonLogitsProcessor(matcher, self._vocab_size, self._eos_id)

    def _compile(self, response_format: str) -> Any:
        import llguidance
        import llguidance.hf

        schema = _schema_of(json.loads(response_format))
        if isinstance(schema, ErrorDetail):
            return schema
        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self._tokenizer,  # type: ignore[arg-type]  # a fast tokenizer, whatever its declared type
                n_vocab=self._vocab_size,
            )
        # Compact: no whitespace between JSON tokens, so an answer spends its tokens on content.
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            return ErrorDetail(
                code=ErrorCode.invalid_parameter,
                message=f"body.response_format: the JSON schema cannot be used ({matcher.get_error()}); "
                "fix the schema.",
            )
        return matcher


def _schema_of(response_format: dict[str, Any]) -> dict[str, Any] | ErrorDetail:
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
        return ErrorDetail(
            code=ErrorCode.invalid_parameter,
            message="body.response_format.json_schema.schema must be a JSON schema object.",
        )
    return ErrorDetail(
        code=ErrorCode.unsupported_parameter,
        message=f"body.response_format of type {kind!r} is not supported by the transformers engine; "
        "use json_schema, json_object or text.",
    )


class _JsonLogitsProcessor:
    """One ``generate`` call's constraint: a matcher per row, fed the token each row chose.

    A row whose answer is complete, or that ended its turn, may only generate the end of turn
    (which is also the padding): a row of all ``-inf`` would make sampling produce NaNs."""

    def __init__(self, matcher: Any, vocab_size: int, eos_id: int) -> None:
        self._proto = matcher
        self._vocab_size = vocab_size
        self._eos = eos_id
        self._rows: list[Any] | None = None
        self._done: list[bool] = []
        self._mask: Any = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        if self._rows is None:  # the first step, after the prompt: nothing chosen yet
            self._rows = [self._proto.deep_copy() for _ in range(scores.shape[0])]
            self._done = [False] * scores.shape[0]
            self._mask = np.zeros((scores.shape[0], (self._vocab_size + 31) // 32), dtype=np.int32)
        else:
            self._consume(input_ids[:, -1].tolist())
        self._fill_mask()
        allowed = np.unpackbits(self._mask.view(np.uint8), axis=1, bitorder="little")[:, : scores.shape[1]]
        return scores.masked_fill(torch.from_numpy(allowed).to(scores.device) == 0, float("-inf"))

    def _consume(self, chosen: list[int]) -> None:
        assert self._rows is not None
        for row, token in enumerate(chosen):
            if self._done[row]:
                continue
            matcher = self._rows[row]
            if token != self._eos:
                matcher.consume_token(token)
            self._done[row] = token == self._eos or matcher.is_error() or matcher.is_stopped()

    def _fill_mask(self) -> None:
        import llguidance.numpy

        assert self._rows is not None
        for row, matcher in enumerate(self._rows):
            if self._done[row]:
                self._mask[row] = 0
                self._mask.view("uint32")[row, self._eos // 32] = 1 << (self._eos % 32)
            else:
                llguidance.numpy.fill_next_token_bitmask(matcher, self._mask, row)
