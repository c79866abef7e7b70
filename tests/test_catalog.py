"""The models file: which model ids a request may name, and how each one runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchinfer.catalog import load_catalog
from batchinfer.engines.configs import (
    DEFAULT_MODEL_ID,
    EMBEDDED_DEFAULT,
    OpenAIEngineConfig,
    TransformersEngineConfig,
)
from batchinfer.errors import EngineError, UnknownModelError

MODELS_YAML = """
models:
  - id: llama-8b
    engine: openai
    base_url: http://127.0.0.1:8000/v1
    model: meta-llama/Llama-3.1-8B-Instruct
    api_key_env: LLAMA_API_KEY
    max_concurrency: 64
  - id: tiny-local
    engine: transformers
    path: /models/tiny
    dtype: bfloat16
    threads: 2
"""


def models_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_without_a_file_the_catalog_holds_the_embedded_default() -> None:
    catalog = load_catalog(None)
    assert catalog.ids() == [DEFAULT_MODEL_ID]
    assert catalog.get(DEFAULT_MODEL_ID) == EMBEDDED_DEFAULT


def test_a_models_file_adds_openai_and_transformers_entries_to_the_default(tmp_path: Path) -> None:
    catalog = load_catalog(models_file(tmp_path, MODELS_YAML))
    assert catalog.ids() == [DEFAULT_MODEL_ID, "llama-8b", "tiny-local"]
    llama = catalog.get("llama-8b")
    assert isinstance(llama, OpenAIEngineConfig)
    assert (llama.base_url, llama.model, llama.api_key_env, llama.max_concurrency) == (
        "http://127.0.0.1:8000/v1",
        "meta-llama/Llama-3.1-8B-Instruct",
        "LLAMA_API_KEY",
        64,
    )
    tiny = catalog.get("tiny-local")
    assert isinstance(tiny, TransformersEngineConfig)
    assert (tiny.path, tiny.dtype, tiny.threads) == ("/models/tiny", "bfloat16", 2)


def test_a_file_may_redefine_the_default_id(tmp_path: Path) -> None:
    catalog = load_catalog(
        models_file(
            tmp_path,
            f"models:\n  - id: {DEFAULT_MODEL_ID}\n    engine: openai\n"
            "    base_url: http://x/v1\n    model: m\n",
        )
    )
    assert catalog.ids() == [DEFAULT_MODEL_ID]
    assert catalog.get(DEFAULT_MODEL_ID).engine == "openai"


@pytest.mark.parametrize("text", ["", "models:\n", "models: []\n", "# nothing\n"])
def test_an_empty_models_file_leaves_just_the_default(tmp_path: Path, text: str) -> None:
    assert load_catalog(models_file(tmp_path, text)).ids() == [DEFAULT_MODEL_ID]


# (case, file content, a word the message must hold besides the file name)
BROKEN_FILES = [
    (
        "a duplicate id",
        "models:\n  - {id: a, engine: openai, base_url: 'http://x/v1', model: m}\n"
        "  - {id: a, engine: openai, base_url: 'http://y/v1', model: m}\n",
        "twice",
    ),
    ("an unknown engine", "models:\n  - {id: a, engine: gpt5000}\n", "engine"),
    ("a missing engine", "models:\n  - {id: a}\n", "engine"),
    ("an unknown field", "models:\n  - {id: a, engine: transformers, colour: red}\n", "colour"),
    ("an openai entry without base_url", "models:\n  - {id: a, engine: openai, model: m}\n", "base_url"),
    ("bad YAML", "models: [\n  - id: a\n", "Cannot read"),
    ("not a mapping", "- id: a\n", "mapping"),
    ("models not a list", "models: {id: a}\n", "list"),
]


@pytest.mark.parametrize(("text", "word"), [c[1:] for c in BROKEN_FILES], ids=[c[0] for c in BROKEN_FILES])
def test_a_broken_models_file_is_an_engine_error_naming_the_file(
    tmp_path: Path, text: str, word: str
) -> None:
    path = models_file(tmp_path, text)
    with pytest.raises(EngineError) as raised:
        load_catalog(path)
    assert str(path) in raised.value.message
    assert word in raised.value.message


def test_a_missing_models_file_is_an_engine_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(EngineError) as raised:
        load_catalog(path)
    assert str(path) in raised.value.message


def test_an_unknown_model_error_lists_the_known_ids(tmp_path: Path) -> None:
    catalog = load_catalog(models_file(tmp_path, MODELS_YAML))
    with pytest.raises(UnknownModelError) as raised:
        catalog.get("gpt-9")
    error = raised.value
    assert error.field == "model"
    assert "'gpt-9'" in error.message
    for known in catalog.ids():
        assert known in error.message
