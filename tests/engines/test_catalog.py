"""The models file: which model ids a request may name, and how each one runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchinfer.engines.catalog import load_catalog
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


TWO_MODELS = "models:\n  - id: a\n    engine: openai\n    base_url: http://x/v1\n    model: m\n  - id: b\n"
LOCATED = [
    ("a field out of range",
     TWO_MODELS + "    engine: openai\n    base_url: u\n    model: m\n    max_concurrency: 0\n",
     "line 10", "models[1], field 'max_concurrency'"),
    ("a missing field", TWO_MODELS + "    engine: openai\n    model: m\n", "line 6", "field 'base_url'"),
    ("an unknown engine", TWO_MODELS + "    engine: gpt5000\n", "line 7", "field 'engine'"),
    ("bad YAML", "models:\n  - id: a\n  engine: [\n", "line 3", "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "where"), [c[1:] for c in LOCATED], ids=[c[0] for c in LOCATED])
def test_a_broken_models_file_is_one_line_naming_the_file_the_line_and_the_field(
    tmp_path: Path, text: str, line: str, where: str
) -> None:
    path = models_file(tmp_path, text)
    with pytest.raises(EngineError) as raised:
        load_catalog(path)
    message = raised.value.message
    assert str(path) in message and line in message and where in message
    assert "\n" not in message


def test_prices_are_optional_fields_that_stay_out_of_the_configs_json(tmp_path: Path) -> None:
    text = (
        "models:\n  - {id: a, engine: openai, base_url: 'http://x/v1', model: m,\n"
        "     price_per_million_input_tokens: 0.15, price_per_million_output_tokens: 0.6}\n"
    )
    model = load_catalog(models_file(tmp_path, text)).get("a")
    assert (model.price_per_million_input_tokens, model.price_per_million_output_tokens) == (0.15, 0.6)
    # The JSON keys the engine cache and the chunk results: a new price must not redo finished work.
    assert "price" not in model.model_dump_json()


REPLICAS_YAML = """
models:
  - id: llama-3x
    engine: openai
    base_urls: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1, http://10.0.0.3:8000/v1]
    model: meta-llama/Llama-3.1-8B-Instruct
    max_concurrency: 32
"""


def test_an_openai_model_may_list_its_replicas_in_base_urls_with_max_concurrency_per_replica(
    tmp_path: Path,
) -> None:
    llama = load_catalog(models_file(tmp_path, REPLICAS_YAML)).get("llama-3x")
    assert isinstance(llama, OpenAIEngineConfig)
    assert llama.base_url is None
    assert llama.replica_urls == [f"http://10.0.0.{i}:8000/v1" for i in (1, 2, 3)]
    assert (llama.max_concurrency, llama.total_concurrency) == (32, 96)


def test_a_one_server_models_json_is_unchanged_by_base_urls(tmp_path: Path) -> None:
    # The JSON keys the engine cache and the chunk results: jobs resumed across the upgrade reuse them.
    llama = load_catalog(models_file(tmp_path, MODELS_YAML)).get("llama-8b")
    assert isinstance(llama, OpenAIEngineConfig) and llama.replica_urls == ["http://127.0.0.1:8000/v1"]
    assert "base_urls" not in llama.model_dump_json()
    assert OpenAIEngineConfig.model_validate_json(llama.model_dump_json()) == llama


ONE_MODEL = "models:\n  - id: a\n    engine: openai\n    model: m\n"
BAD_REPLICAS = [
    ("no url at all", ONE_MODEL, "field 'base_url': base_url or base_urls is required"),
    ("an empty list", ONE_MODEL + "    base_urls: []\n",
     "field 'base_urls': List should have at least 1 item"),
    ("both", ONE_MODEL + "    base_url: http://x/v1\n    base_urls: [http://y/v1]\n",
     "field 'base_urls': give base_url (one server) or base_urls (replicas), not both"),
    ("a url twice", ONE_MODEL + "    base_urls: [http://x/v1, http://x/v1]\n",
     "field 'base_urls': base_urls lists the same URL twice"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "where"), [c[1:] for c in BAD_REPLICAS], ids=[c[0] for c in BAD_REPLICAS])
def test_a_models_file_without_exactly_one_way_to_name_the_servers_is_refused_naming_the_field(
    tmp_path: Path, text: str, where: str
) -> None:
    path = models_file(tmp_path, text)
    with pytest.raises(EngineError) as raised:
        load_catalog(path)
    assert str(path) in raised.value.message and "models[0]" in raised.value.message
    assert where in raised.value.message


NETWORK_YAML = ONE_MODEL + "    base_url: https://llm.internal/v1\n"
GOOD_NETWORK = [
    ("an http proxy", "    proxy: http://proxy.corp:3128\n", {"proxy": "http://proxy.corp:3128"}),
    ("a proxy without a scheme, as curl takes one", "    proxy: corp:3128\n", {"proxy": "corp:3128"}),
    ("no proxy at all", "    proxy: none\n", {"proxy": "none"}),
    ("a CA bundle", "    ca_bundle: /etc/corp/ca.pem\n", {"ca_bundle": "/etc/corp/ca.pem"}),
    ("no verification", "    verify: false\n", {"verify": False}),
]  # fmt: skip


@pytest.mark.parametrize(("text", "fields"), [c[1:] for c in GOOD_NETWORK], ids=[c[0] for c in GOOD_NETWORK])
def test_a_models_network_settings_are_read_and_key_its_caches_only_when_set(
    tmp_path: Path, text: str, fields: dict[str, object]
) -> None:
    model = load_catalog(models_file(tmp_path, NETWORK_YAML + text)).get("a")
    assert {name: getattr(model, name) for name in fields} == fields
    assert all(f'"{name}"' in model.model_dump_json() for name in fields)  # a change starts afresh
    plain = load_catalog(models_file(tmp_path, NETWORK_YAML)).get("a").model_dump_json()
    assert not any(f'"{name}"' in plain for name in ("proxy", "ca_bundle", "verify"))  # as before them


BAD_NETWORK = [
    ("a socks proxy", "    proxy: socks5://proxy.corp:1080\n",
     "field 'proxy': a socks5:// proxy, and only http:// proxies are supported"),
    ("a proxy without a host", "    proxy: 'http://:3128'\n", "field 'proxy': a proxy URL without a host"),
    ("a proxy's password in the file", "    proxy: http://alice:secret@proxy.corp:3128\n",
     "field 'proxy': a proxy's password does not go in the models file"),
    ("an empty ca_bundle", "    ca_bundle: ''\n", "field 'ca_bundle'"),
    ("verify not a boolean", "    verify: sometimes\n", "field 'verify'"),
    ("a ca_bundle that verify: false leaves unused", "    ca_bundle: /ca.pem\n    verify: false\n",
     "field 'verify': verify: false checks no certificate, so ca_bundle would be unused"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "where"), [c[1:] for c in BAD_NETWORK], ids=[c[0] for c in BAD_NETWORK])
def test_a_network_setting_that_cannot_be_used_is_refused_naming_the_field(
    tmp_path: Path, text: str, where: str
) -> None:
    path = models_file(tmp_path, NETWORK_YAML + text)
    with pytest.raises(EngineError) as raised:
        load_catalog(path)
    assert str(path) in raised.value.message and where in raised.value.message
    assert "secret" not in raised.value.message  # a password is never repeated
