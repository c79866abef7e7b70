"""Settings: typed, read from BATCHINFER_* variables; limits and security knobs included."""

from __future__ import annotations

import pytest

from batchinfer.settings import DEFAULT_URI_SCHEMES, GiB, Limits, MiB, Settings, env_name


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BATCHINFER_"):
            monkeypatch.delenv(name)


def test_the_limits_have_sane_defaults() -> None:
    settings = Settings()
    assert settings.limits() == Limits(
        max_prompt_file_bytes=GiB,
        max_line_bytes=MiB,
        max_lines=1_000_000,
        max_num_generations=16,
        max_max_tokens=32768,
    )
    assert settings.max_concurrent_jobs == 4
    assert settings.api_token is None
    assert settings.allowed_uri_schemes == list(DEFAULT_URI_SCHEMES)
    assert settings.allow_private_uris is False


def test_every_limit_and_knob_is_read_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "max_prompt_file_bytes": "1000",
        "max_line_bytes": "100",
        "max_lines": "10",
        "max_num_generations": "2",
        "max_max_tokens": "64",
        "max_concurrent_jobs": "7",
        "runner_poll_seconds": "2.5",
    }
    for field, value in values.items():
        monkeypatch.setenv(env_name(field), value)
    settings = Settings()
    for field, value in values.items():
        assert getattr(settings, field) == type(getattr(settings, field))(value), field


@pytest.mark.parametrize(
    "field", ["max_line_bytes", "max_lines", "max_concurrent_jobs", "max_num_generations"]
)
def test_a_limit_below_one_is_refused_at_start(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name(field), "0")
    with pytest.raises(ValueError, match=field):
        Settings()


def test_the_uri_allowlist_is_a_comma_separated_lowercased_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_ALLOWED_URI_SCHEMES", "s3, HTTPS,,file")
    assert Settings().allowed_uri_schemes == ["s3", "https", "file"]


def test_private_uris_are_allowed_by_a_boolean_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_ALLOW_PRIVATE_URIS", "true")
    assert Settings().allow_private_uris is True


def test_the_api_token_is_secret_and_an_empty_one_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_API_TOKEN", "hunter2")
    settings = Settings()
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv("BATCHINFER_API_TOKEN", "  ")
    assert Settings().api_token is None


def test_a_chunk_is_100_prompts_for_a_local_model_and_8_per_in_flight_slot_for_an_http_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchinfer.engines.configs import OpenAIEngineConfig, TransformersEngineConfig

    local = TransformersEngineConfig(id="tiny", path="/models/tiny")
    one = OpenAIEngineConfig(id="one", base_url="http://127.0.0.1:1/v1", model="m", max_concurrency=64)
    three = OpenAIEngineConfig(
        id="three", base_urls=[f"http://127.0.0.1:{p}/v1" for p in (1, 2, 3)], model="m", max_concurrency=4
    )
    assert [Settings().chunk_size_for(c) for c in (local, one, three)] == [100, 512, 100]
    monkeypatch.setenv("BATCHINFER_CHUNK_SIZE", "40")
    assert [Settings().chunk_size_for(c) for c in (local, one, three)] == [40, 40, 40]
