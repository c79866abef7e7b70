"""One behavioural spec that every engine passes: the ``Engine`` contract of ``engines/base.py``.

Each test runs once per engine: ``openai`` (against the fake OpenAI server), ``transformers`` (the
tiny model), ``ctranslate2`` (the tiny model converted; skipped without ctranslate2), ``llamacpp``
(the tiny model as a GGUF file; skipped without llama-cpp-python) and ``vllm`` (the tiny model on a
GPU; skipped without vllm or CUDA). Engine-specific behaviour
(retries, padding, seeds) stays in each engine's own test file; this one checks what a job relies
on whatever the engine: one outcome per request in order, ``n`` grouping, ``finish_reason``,
logprobs shape, ``max_tokens``, per-line errors, and the cancel contract.

And what a batch line asks for: one table of body fields, message fields and endpoints, each either
honoured (checked at the server, or in the output) or refused with a line error that names it. Each
engine says which it honours (``Case.honours``), so an engine that refused everything would fail.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from batchinfer.contract import MediaAttachment, MediaAttachmentDataType, MediaAttachmentType
from batchinfer.engines.base import Engine, InferenceOutcome, PromptRequest, SamplingParams
from batchinfer.engines.configs import (
    CTranslate2EngineConfig,
    EngineContext,
    LlamaCppEngineConfig,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)
from batchinfer.engines.registry import build_engine
from batchinfer.pipeline.parsing import parse_line
from batchinfer.records import ErrorDetail, Generation
from batchinfer.testing.engines import Flag, ask, completion
from batchinfer.testing.fake_openai import FakeOpenAIServer

ENGINES = ("openai", "transformers", "ctranslate2", "llamacpp", "vllm")
LOCAL_ENGINES = ENGINES[1:]
CONTEXT = 256  # every local engine's window here: the tiny model's max_position_embeddings
GREEDY = SamplingParams(max_tokens=6, temperature=0)
# What the line-level spec below checks, by name: body fields, message fields and endpoints.
SAMPLING = frozenset({"stop", "seed", "top_logprobs"})
SERVER_ONLY = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "metadata",
        "reasoning_effort",
        "tool_messages",
    }
)
EVERYTHING = SAMPLING | SERVER_ONLY | {"response_format", "completions", "embeddings", "responses"}


@dataclass
class Case:
    """An engine under test, and what differs about driving it."""

    name: str
    engine: Engine
    # Appended to the cancel test's prompts: text that keeps a request unanswered long enough for
    # the engine to notice the stop flag (the fake server's scripted hang); local engines check
    # the flag before generating, so they need none.
    unanswered_suffix: str = ""
    # What of the line-level spec the engine honours; the rest it must refuse, naming it.
    honours: frozenset[str] = SAMPLING
    # The server that records what it was sent, for engines that talk to one.
    server: FakeOpenAIServer | None = None


def _vllm_ready() -> str | None:
    """Why vllm cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (the [vllm] extra, GPU machines only)"
    import torch

    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU"
    return None


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> EngineContext:
    return EngineContext(cache_dir=tmp_path_factory.mktemp("conformance-cache"), threads=1)


@pytest.fixture(scope="module")
def hanging_server() -> Iterator[FakeOpenAIServer]:
    # Own server: a scripted hang keeps a handler asleep; 5 s so it ends soon after the module.
    with FakeOpenAIServer(hang_s=5.0, record_bodies=True) as server:
        yield server


def _openai(server: FakeOpenAIServer, context: EngineContext, tmp: Path) -> Case:
    config = OpenAIEngineConfig(
        id="fake", base_url=server.base_url, model="fake-model", timeout_s=10.0, backoff_s=0.01
    )
    return Case("openai", build_engine(config, context), " [fault:hang]", honours=EVERYTHING, server=server)


def _transformers(model_dir: Path, context: EngineContext, tmp: Path) -> Case:
    config = TransformersEngineConfig(id="tiny", path=str(model_dir), batch_size=4)
    honours = SAMPLING | {"response_format", "completions"}
    return Case("transformers", build_engine(config, context), honours=honours)


def _ctranslate2(model_dir: Path, context: EngineContext, tmp: Path) -> Case:
    if importlib.util.find_spec("ctranslate2") is None:
        pytest.skip("ctranslate2 is not installed (the [local] extra)")
    config = CTranslate2EngineConfig(id="tiny-ct2", path=str(model_dir), max_batch_size=4)
    # No response_format: CTranslate2 has no hook for a grammar's constrained decoding.
    return Case("ctranslate2", build_engine(config, context), honours=SAMPLING | {"completions"})


def _llamacpp(model_dir: Path, context: EngineContext, tmp: Path) -> Case:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (the [llamacpp] extra)")
    from tests.engines.test_llamacpp_engine import write_tiny_gguf

    gguf = write_tiny_gguf(model_dir, tmp / "tiny-f32.gguf")
    return Case(
        "llamacpp", build_engine(LlamaCppEngineConfig(id="tiny-gguf", path=str(gguf), n_ctx=CONTEXT), context)
    )


def _vllm(model_dir: Path, context: EngineContext, tmp: Path) -> Case:
    if (why := _vllm_ready()) is not None:
        pytest.skip(why)
    config = VLLMEngineConfig(
        id="tiny-vllm",
        model=str(model_dir),
        dtype="float32",
        max_model_len=CONTEXT,
        gpu_memory_utilization=0.2,
        enforce_eager=True,  # no CUDA graph capture: seconds, not a minute, for a test model
    )
    return Case("vllm", build_engine(config, context))


def _built(request: pytest.FixtureRequest, tiny_model_dir: Path, context: EngineContext, tmp: Path) -> Case:
    builders: dict[str, Callable[[], Case]] = {
        "openai": lambda: _openai(request.getfixturevalue("hanging_server"), context, tmp),
        "transformers": lambda: _transformers(tiny_model_dir, context, tmp),
        "ctranslate2": lambda: _ctranslate2(tiny_model_dir, context, tmp),
        "llamacpp": lambda: _llamacpp(tiny_model_dir, context, tmp),
        "vllm": lambda: _vllm(tiny_model_dir, context, tmp),
    }
    return builders[request.param]()


@pytest.fixture(scope="module", params=ENGINES)
def case(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    context: EngineContext,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Case]:
    built = _built(request, tiny_model_dir, context, tmp_path_factory.mktemp(f"conformance-{request.param}"))
    yield built
    built.engine.close()


@pytest.fixture(scope="module", params=LOCAL_ENGINES)
def local_case(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    context: EngineContext,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Case]:
    """An in-process engine: one whose model has a context window of its own (a server's is its
    business, answered as the server's own error)."""
    built = _built(request, tiny_model_dir, context, tmp_path_factory.mktemp(f"local-{request.param}"))
    yield built
    built.engine.close()


def tokens_of(generation: Generation) -> int:
    assert generation.logprobs is not None
    return len(generation.logprobs.content)


# -- the spec -------------------------------------------------------------------------------------


def test_one_outcome_per_request_in_request_order(case: Case) -> None:
    # Prompts of strictly growing length: their prompt_tokens must come back strictly growing.
    prompts = [" ".join(["the cat sees the river"] * (i + 1)) for i in range(5)]
    outcomes = case.engine.infer([ask(i, text) for i, text in enumerate(prompts)])
    assert len(outcomes) == len(prompts)
    counts = [completion(o).usage.prompt_tokens for o in outcomes]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    assert case.engine.infer([]) == []


def test_n_generations_are_grouped_per_request_in_order(case: Case) -> None:
    three = SamplingParams(max_tokens=4, temperature=0.9, n=3)
    two = SamplingParams(max_tokens=4, temperature=0.9, top_p=0.9, n=2)
    outcomes = case.engine.infer([ask(1, "a dog", three), ask(2, "my friend"), ask(3, "hi there", two)])
    assert [len(completion(o).generations) for o in outcomes] == [3, 1, 2]
    for outcome in outcomes:
        assert all(g.role == "assistant" for g in completion(outcome).generations)


def test_logprobs_are_one_per_generated_token_and_only_when_asked(case: Case) -> None:
    with_lp = SamplingParams(max_tokens=5, temperature=0, logprobs=True)
    sampled = SamplingParams(max_tokens=5, temperature=1.0, logprobs=True, n=2)
    outcomes = case.engine.infer(
        [ask(1, "the teacher", with_lp), ask(2, "a question"), ask(3, "data", sampled)]
    )
    one, none, two = (completion(o) for o in outcomes)
    assert tokens_of(one.generations[0]) == one.usage.completion_tokens
    assert all(isinstance(t.logprob, float) and t.logprob <= 0 for t in one.generations[0].logprobs.content)  # type: ignore[union-attr]
    assert sum(tokens_of(g) for g in two.generations) == two.usage.completion_tokens
    assert none.generations[0].logprobs is None


def test_max_tokens_caps_every_generation_and_finish_reason_says_why(case: Case) -> None:
    params = SamplingParams(max_tokens=2, temperature=1.0, n=3, logprobs=True)
    prompts = ["the capital", "France is near the city", "our model answers"]
    outcomes = case.engine.infer([ask(i, text, params) for i, text in enumerate(prompts)])
    lengths = 0
    for outcome in outcomes:
        result = completion(outcome)
        assert result.usage.completion_tokens <= params.max_tokens * params.n
        assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
        for generation in result.generations:
            assert tokens_of(generation) <= params.max_tokens
            assert generation.finish_reason in ("stop", "length")
            assert generation.eot is (generation.finish_reason == "stop")
            if generation.finish_reason == "length":
                assert tokens_of(generation) == params.max_tokens
                lengths += 1
    assert lengths > 0  # 9 answers of at most 2 tokens: some hit the cap


def test_a_bad_line_is_an_error_in_its_place_and_the_others_succeed(case: Case) -> None:
    video = MediaAttachment(
        attachment_type=MediaAttachmentType.video,
        data_type=MediaAttachmentDataType.raw_bytes,
        data=base64.b64encode(b"\x00\x00\x00\x18ftypmp42").decode(),
    )
    requests = [ask(1, "the cat"), ask(2, "watch this", attachments=[video]), ask(3, "a dog")]
    outcomes = case.engine.infer(requests)
    assert isinstance(outcomes[1], ErrorDetail) and outcomes[1].code == "unsupported_attachment"
    completion(outcomes[0])
    completion(outcomes[2])


def test_a_prompt_longer_than_the_context_is_an_error_in_its_place(local_case: Case) -> None:
    case = local_case
    too_long = " ".join(["the cat sees the river"] * CONTEXT)
    outcomes = case.engine.infer([ask(1, "the cat"), ask(2, too_long), ask(3, "a dog")])
    assert isinstance(outcomes[1], ErrorDetail) and outcomes[1].code == "context_length_exceeded"
    assert "max_tokens" in outcomes[1].message
    completion(outcomes[0])
    completion(outcomes[2])


def test_a_stop_already_set_cancels_every_line_promptly(case: Case) -> None:
    params = SamplingParams(max_tokens=64, temperature=1.0, n=2)
    requests = [ask(i, f"cancelled line {i}{case.unanswered_suffix}", params) for i in range(6)]
    started = time.monotonic()
    outcomes = case.engine.infer(requests, stop=Flag(True))
    assert time.monotonic() - started < 3
    assert len(outcomes) == len(requests)
    assert all(isinstance(o, ErrorDetail) and o.code == "cancelled" for o in outcomes), outcomes


# -- what a batch line asks for: honoured, or refused naming it ----------------------------------

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
ECHO_SCHEMA = {
    "type": "object",
    "properties": {"echo": {"type": "string", "maxLength": 8}},
    "required": ["echo"],
    "additionalProperties": False,
}
# (name, what the line's body adds): things only a model server gives meaning to.
SERVER_ONLY_FIELDS = [
    ("tools", {"tools": [TOOL]}),
    ("tool_choice", {"tool_choice": "none"}),
    ("parallel_tool_calls", {"parallel_tool_calls": False}),
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("frequency_penalty", {"frequency_penalty": 0.5}),
    ("logit_bias", {"logit_bias": {"1": 5}}),
    ("user", {"user": "user-1"}),
    ("metadata", {"metadata": {"team": "ml"}}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
]


def line(body: dict[str, Any], url: str = "/v1/chat/completions") -> PromptRequest:
    text = json.dumps({"custom_id": "c", "url": url, "body": {"model": "m", **body}})
    request = parse_line(text, 1, SamplingParams())
    assert isinstance(request, PromptRequest), request
    return request


def chat(text: str, **body: Any) -> PromptRequest:
    return line({"messages": [{"role": "user", "content": text}], "max_tokens": 6, "temperature": 0, **body})


def received(case: Case, marker: str) -> dict[str, Any]:
    """The last body the case's server got whose prompt holds ``marker``."""
    assert case.server is not None
    bodies = [body for _, body in case.server.bodies if marker in json.dumps(body)]
    assert bodies, f"the server never received {marker!r}"
    return bodies[-1]


def refused(outcome: InferenceOutcome, code: str, named: str) -> None:
    assert isinstance(outcome, ErrorDetail), outcome
    assert outcome.code == code and named in outcome.message, outcome


@pytest.mark.parametrize(("name", "fields"), SERVER_ONLY_FIELDS, ids=[f[0] for f in SERVER_ONLY_FIELDS])
def test_a_field_only_a_server_gives_meaning_reaches_it_or_is_refused_naming_it(
    case: Case, name: str, fields: dict[str, Any]
) -> None:
    marker = f"server-only {name}"
    (outcome,) = case.engine.infer([chat(marker, **fields)])
    if name in case.honours:
        completion(outcome)
        assert {k: received(case, marker)[k] for k in fields} == fields
    else:
        refused(outcome, "unsupported_parameter", f"body.{name}")


def test_an_earlier_tool_call_and_its_result_reach_the_server_intact_or_are_refused(case: Case) -> None:
    messages = [
        {"role": "user", "content": "tool history"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": "and so?"},
    ]
    (outcome,) = case.engine.infer([line({"messages": messages, "max_tokens": 4})])
    if "tool_messages" in case.honours:
        completion(outcome)
        assert received(case, "tool history")["messages"] == messages
    else:
        refused(outcome, "unsupported_parameter", "messages[1].tool_calls")


def test_stop_ends_the_answer_before_the_stop_sequence(case: Case) -> None:
    (plain,) = case.engine.infer([chat("stop here please")])
    text = completion(plain).generations[0].text or ""
    assert len(text.strip()) >= 3, text
    stop = text.strip()[-2:]
    (outcome,) = case.engine.infer([chat("stop here please", stop=[stop])])
    generation = completion(outcome).generations[0]
    assert (generation.text, generation.finish_reason) == (text[: text.index(stop)], "stop")
    if case.server is not None:
        assert received(case, "stop here please")["stop"] == [stop]


def test_a_seed_gives_the_same_sampled_answer_whatever_it_is_batched_with(case: Case) -> None:
    seeded = chat("seeded answer", temperature=1.0, seed=11)
    alone = completion(case.engine.infer([seeded])[0]).generations[0].text
    batched = case.engine.infer(
        [chat("another prompt", temperature=1.0), seeded, chat("third", temperature=1.0)]
    )
    assert completion(batched[1]).generations[0].text == alone
    if case.server is not None:
        assert received(case, "seeded answer")["seed"] == 11


def test_top_logprobs_give_that_many_alternatives_best_first_the_greedy_choice_among_them(case: Case) -> None:
    (outcome,) = case.engine.infer([chat("alternatives", logprobs=True, top_logprobs=3)])
    generation = completion(outcome).generations[0]
    assert generation.logprobs is not None and generation.logprobs.content
    for token in generation.logprobs.content:
        alternatives = token.top_logprobs or []
        assert len(alternatives) == 3
        assert [a.logprob for a in alternatives] == sorted((a.logprob for a in alternatives), reverse=True)
        assert alternatives[0].token == token.token and alternatives[0].logprob == pytest.approx(
            token.logprob
        )


def test_a_json_schema_response_format_gives_answers_that_validate_or_is_refused(case: Case) -> None:
    import jsonschema

    schema_format = {"type": "json_schema", "json_schema": {"name": "echo", "schema": ECHO_SCHEMA}}
    requests = [chat(f"json {i}", response_format=schema_format, max_tokens=40) for i in range(3)]
    outcomes = case.engine.infer(requests)
    if "response_format" not in case.honours:
        for outcome in outcomes:
            refused(outcome, "unsupported_parameter", "body.response_format")
        return
    for outcome in outcomes:
        jsonschema.validate(json.loads(completion(outcome).generations[0].text or ""), ECHO_SCHEMA)


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("completions", {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}),
        ("embeddings", {"input": ["first", "second"]}),
        ("responses", {"input": "hello", "max_output_tokens": 4}),
    ],
)
def test_each_endpoint_is_served_or_refused_naming_it(
    case: Case, endpoint: str, body: dict[str, Any]
) -> None:
    (outcome,) = case.engine.infer([line(body, url=f"/v1/{endpoint}")])
    if endpoint not in case.honours:
        refused(outcome, "unsupported_endpoint", f"/v1/{endpoint}")
        return
    result = completion(outcome)
    if endpoint == "embeddings":
        assert result.embeddings is not None and len(result.embeddings) == 2
    else:
        assert len(result.generations) == 1 and result.usage.prompt_tokens > 0
