"""Test doubles at the engine boundary, and the helpers every engine test uses, written once.

``EchoEngine`` answers ``echo: <last message>`` and fails a prompt holding ``fail``; it can also
be slow (``delay_s`` per call), call back on each call (``on_call``, e.g. to cancel the job), fail
every line alike (``fail_all``) or return too few outcomes (``drop``, a broken engine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from batchinfer.contract import Message
from batchinfer.engines.base import InferenceOutcome, InFlightCap, PromptRequest, SamplingParams, StopFlag
from batchinfer.records import Completion, ErrorDetail, Generation, Usage

GREEDY = SamplingParams(max_tokens=6, temperature=0)


def ask(line: int, text: str, params: SamplingParams = GREEDY, **extra: Any) -> PromptRequest:
    """A one-message user prompt, as validation would have made it."""
    return PromptRequest(line=line, messages=[Message(role="user", text=text, **extra)], params=params)


def completion(outcome: InferenceOutcome | object) -> Completion:
    """The outcome, which must be an answer (the assertion shows the error otherwise)."""
    assert isinstance(outcome, Completion), outcome
    return outcome


def error(outcome: InferenceOutcome | object) -> ErrorDetail:
    assert isinstance(outcome, ErrorDetail), outcome
    return outcome


class Flag:
    """A stop flag a test sets by hand."""

    def __init__(self, value: bool = False) -> None:
        self.value = value

    def is_set(self) -> bool:
        return self.value


class AfterCalls:
    """A stop flag that turns set after it has been asked ``calls`` times."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def is_set(self) -> bool:
        self.calls -= 1
        return self.calls < 0


class EchoEngine:
    """An ``Engine`` that echoes. ``calls`` records the lines of each ``infer`` call."""

    max_parallel_chunks = 1

    def __init__(
        self,
        drop: int = 0,
        delay_s: float = 0.0,
        on_call: Callable[[int], None] | None = None,
        fail_all: ErrorDetail | None = None,
    ) -> None:
        self.calls: list[list[int]] = []
        self.drop = drop
        self.delay_s = delay_s
        self.on_call = on_call
        self.fail_all = fail_all

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,
    ) -> list[InferenceOutcome]:
        self.calls.append([r.line for r in requests])
        if self.on_call is not None:
            self.on_call(len(self.calls))
        if self.delay_s:
            time.sleep(self.delay_s)
        outcomes = [self._answer(request) for request in requests]
        return outcomes[: len(outcomes) - self.drop]

    def _answer(self, request: PromptRequest) -> InferenceOutcome:
        text = request.messages[-1].text if request.messages else str((request.body or {}).get("prompt"))
        if self.fail_all is not None:
            return self.fail_all
        if "fail" in (text or ""):
            return ErrorDetail(code="http_400", message="the server refused it")
        generation = Generation(role="assistant", text=f"echo: {text}", eot=True, finish_reason="stop")
        usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
        return Completion(generations=[generation] * request.params.n, usage=usage)

    def close(self) -> None:
        pass
