"""The vllm engine. vLLM needs an NVIDIA GPU, so this file has two halves:

* everywhere: the engine's own logic (chat template + tokenizing, per-request SamplingParams in one
  call, logprobs and usage from vLLM's outputs, context-length errors, isolating a prompt vLLM
  refuses, cancel between calls) against a stand-in ``vllm`` module whose ``LLM`` answers like
  vLLM's does (``RequestOutput``-shaped objects), with the tiny model's real tokenizer;
* on a GPU with vllm installed: the real ``vllm.LLM`` on the tiny model, agreeing with the
  transformers engine on greedy tokens. Skipped elsewhere.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.engines.configs import EngineContext, TransformersEngineConfig, VLLMEngineConfig
from batchinfer.engines.registry import build_engine
from batchinfer.engines.vllm_offline import VLLMEngine
from batchinfer.errors import EngineError
from batchinfer.records import Completion, ErrorDetail
from batchinfer.testing.engines import AfterCalls, completion
from batchinfer.testing.engines import ask as shared_ask

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


GREEDY = SamplingParams(max_tokens=4, temperature=0)


def ask(line: int, text: str, params: SamplingParams = GREEDY) -> PromptRequest:
    return shared_ask(line, text, params)  # with this file's GREEDY


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> EngineContext:
    return EngineContext(cache_dir=tmp_path_factory.mktemp("cache"), threads=1)


# -- configuration ------------------------------------------------------------------------------


def test_a_models_file_can_name_the_vllm_engine() -> None:
    catalog = ModelCatalog.model_validate(
        {"models": [{"id": "qwen", "engine": "vllm", "model": "/models/qwen", "max_model_len": 4096}]}
    )
    config = catalog.get("qwen")
    assert isinstance(config, VLLMEngineConfig)
    assert config.trust_remote_code is False and config.tensor_parallel_size == 1


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown without vllm")
def test_without_vllm_the_engine_says_how_to_install_it(context: EngineContext) -> None:
    with pytest.raises(EngineError, match=r"\[vllm\]"):
        build_engine(VLLMEngineConfig(id="v", model="/models/x"), context)


# -- the engine's logic, against a stand-in vllm ------------------------------------------------


@dataclass
class FakeLLM:
    """Answers like ``vllm.LLM.generate``: per prompt, ``n`` outputs of ``max_tokens`` token ids
    (the prompt's first ids, so each answer is traceable to its prompt), ``finish_reason`` length,
    and per-position logprob dicts holding the chosen token. A prompt containing ``poison`` makes
    the whole call raise ``ValueError``, as vLLM's input validation does."""

    model: str
    kwargs: dict[str, Any]
    tokenizer: Any = None
    calls: list[list[Any]] = field(default_factory=list)
    poison: int | None = None

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    @property
    def llm_engine(self) -> Any:
        max_len = self.kwargs.get("max_model_len") or 256
        return types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=max_len))

    def generate(self, prompts: list[dict[str, list[int]]], params: list[Any], use_tqdm: bool) -> list[Any]:
        assert isinstance(params, list) and len(params) == len(prompts)  # one SamplingParams each
        if self.poison is not None and any(self.poison in p["prompt_token_ids"] for p in prompts):
            raise ValueError("token id out of range")
        self.calls.append(params)
        results = []
        for prompt, sp in zip(prompts, params, strict=True):
            ids = prompt["prompt_token_ids"][: sp.max_tokens]
            outputs = []
            for _ in range(sp.n):
                logprobs = None
                if sp.logprobs is not None:
                    logprobs = [
                        {t: types.SimpleNamespace(logprob=-0.25, decoded_token=f"<{t}>")} for t in ids
                    ]
                outputs.append(
                    types.SimpleNamespace(
                        text=self.tokenizer.decode(ids),
                        token_ids=ids,
                        finish_reason="length",
                        logprobs=logprobs,
                    )
                )
            results.append(types.SimpleNamespace(outputs=outputs))
        return results


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    logprobs: int | None = None
    stop: list[str] | None = None
    seed: int | None = None


@pytest.fixture
def fake_vllm(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeLLM]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    built: list[FakeLLM] = []

    def make_llm(model: str, **kwargs: Any) -> FakeLLM:
        llm = FakeLLM(model=model, kwargs=kwargs, tokenizer=tokenizer)
        built.append(llm)
        return llm

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM = make_llm  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    yield built


def fake_engine(context: EngineContext, **overrides: Any) -> VLLMEngine:
    config = VLLMEngineConfig(id="v", model="/models/tiny", max_model_len=64, **overrides)
    engine = build_engine(config, context)
    assert isinstance(engine, VLLMEngine)
    return engine


def test_a_chunk_is_one_call_with_each_requests_own_sampling_params(
    fake_vllm: list[FakeLLM], context: EngineContext
) -> None:
    engine = fake_engine(context, seed=7, enforce_eager=True)
    three = SamplingParams(max_tokens=3, temperature=0.7, top_p=0.9, n=3, logprobs=True)
    outcomes = engine.infer([ask(1, "a dog", three), ask(2, "the cat sees the river"), ask(3, "hi", three)])
    (llm,) = fake_vllm
    assert llm.kwargs["seed"] == 7 and llm.kwargs["enforce_eager"] is True
    assert llm.kwargs["trust_remote_code"] is False
    assert len(llm.calls) == 1  # differing params do not split the chunk
    assert [p.n for p in llm.calls[0]] == [3, 1, 3]
    assert llm.calls[0][1].top_p == 1.0  # greedy: top_p is meaningless, vLLM wants 1
    first, second, _ = (completion(o) for o in outcomes)
    assert [len(c.generations) for c in (first, second)] == [3, 1]
    assert first.usage.completion_tokens == 9 and first.usage.total_tokens == first.usage.prompt_tokens + 9
    assert first.generations[0].finish_reason == "length" and first.generations[0].eot is False
    assert first.generations[0].logprobs is not None
    assert [t.logprob for t in first.generations[0].logprobs.content] == [-0.25] * 3
    assert second.generations[0].logprobs is None
    # Prompts were rendered with the tiny model's ChatML template before tokenizing.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_prompt_too_long_and_an_attachment_are_errors_in_place(
    fake_vllm: list[FakeLLM], context: EngineContext
) -> None:
    engine = fake_engine(context)
    long = " ".join(["the cat sees the river"] * 40)
    outcomes = engine.infer([ask(1, "the cat"), ask(2, long), ask(3, "a dog")])
    assert isinstance(outcomes[1], ErrorDetail) and outcomes[1].code == "context_length_exceeded"
    completion(outcomes[0])
    completion(outcomes[2])
    assert len(fake_vllm[0].calls[0]) == 2  # the long prompt never reached vLLM


def test_a_prompt_vllm_refuses_fails_alone(fake_vllm: list[FakeLLM], context: EngineContext) -> None:
    engine = fake_engine(context)
    engine.load()
    llm = fake_vllm[0]
    llm.poison = llm.tokenizer("zzz", add_special_tokens=False)["input_ids"][0]
    outcomes = engine.infer([ask(1, "the cat"), ask(2, "zzz"), ask(3, "a dog")])
    assert isinstance(outcomes[1], ErrorDetail) and outcomes[1].code == "invalid_request"
    completion(outcomes[0])
    completion(outcomes[2])


def test_cancel_is_checked_between_calls_of_batch_size(
    fake_vllm: list[FakeLLM], context: EngineContext
) -> None:
    engine = fake_engine(context, batch_size=2)

    outcomes = engine.infer([ask(i, f"line {i}") for i in range(5)], stop=AfterCalls(1))
    assert [isinstance(o, Completion) for o in outcomes] == [True, True, False, False, False]
    assert [o.code for o in outcomes[2:] if isinstance(o, ErrorDetail)] == ["cancelled"] * 3
    # Without a stop flag the chunk is one call whatever batch_size says.
    engine.infer([ask(i, f"line {i}") for i in range(5)])
    assert [len(c) for c in fake_vllm[0].calls] == [2, 5]


# -- the real thing, on a GPU -------------------------------------------------------------------


@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (the [vllm] extra, GPU machines only)")
def test_vllm_and_transformers_agree_on_greedy_tokens(tiny_model_dir: Path, context: EngineContext) -> None:
    if not _cuda():
        pytest.skip("vllm needs a CUDA GPU")
    greedy = SamplingParams(max_tokens=4, temperature=0, logprobs=True)
    requests = [ask(i, text, greedy) for i, text in enumerate(["What is the capital of France?", "a dog"])]
    hf = build_engine(TransformersEngineConfig(id="tiny", path=str(tiny_model_dir)), context)
    gpu = build_engine(
        VLLMEngineConfig(
            id="tiny-vllm",
            model=str(tiny_model_dir),
            dtype="float32",
            max_model_len=256,
            gpu_memory_utilization=0.2,
            enforce_eager=True,
        ),
        context,
    )
    try:
        expected, got = hf.infer(requests), gpu.infer(requests)
    finally:
        gpu.close()
        hf.close()
    for want, have in zip(expected, got, strict=True):
        ref, out = completion(want), completion(have)
        assert out.usage.prompt_tokens == ref.usage.prompt_tokens
        ref_lp, out_lp = ref.generations[0].logprobs, out.generations[0].logprobs
        assert ref_lp is not None and out_lp is not None
        first = min(len(ref_lp.content), len(out_lp.content), 2)
        for a, b in zip(ref_lp.content[:first], out_lp.content[:first], strict=True):
            assert b.token == a.token
            assert b.logprob == pytest.approx(a.logprob, abs=1e-2)
