"""Settings: typed, read from BATCHINFER_* variables; limits and security knobs included."""

from __future__ import annotations

import pytest

from batchinfer.settings import (
    DEFAULT_URI_SCHEMES,
    SECTIONS,
    GiB,
    Limits,
    LimitSettings,
    MiB,
    Settings,
    env_name,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BATCHINFER_"):
            monkeypatch.delenv(name)


def test_the_limits_have_sane_defaults() -> None:
    settings = Settings()
    assert settings.limits.frozen() == Limits(
        max_prompt_file_bytes=GiB,
        max_line_bytes=MiB,
        max_lines=1_000_000,
        max_num_generations=16,
        max_max_tokens=32768,
    )
    assert settings.server.max_concurrent_jobs == 4
    assert settings.security.api_token is None
    assert settings.security.allowed_uri_schemes == list(DEFAULT_URI_SCHEMES)
    assert settings.security.allow_private_uris is False


def test_every_limit_and_knob_is_read_from_its_variable_into_its_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {
        ("limits", "max_prompt_file_bytes"): "1000",
        ("limits", "max_line_bytes"): "100",
        ("limits", "max_lines"): "10",
        ("limits", "max_num_generations"): "2",
        ("limits", "max_max_tokens"): "64",
        ("server", "max_concurrent_jobs"): "7",
        ("server", "runner_poll_seconds"): "2.5",
        ("jobs", "threads"): "3",
        ("jobs", "job_timeout_s"): "60.0",
        ("scale_out", "work_pool"): "gpu-pool",
        ("scale_out", "dask_address"): "tcp://10.0.0.1:8786",
        ("security", "allow_private_uris"): "True",
    }
    for (_, field), value in values.items():
        monkeypatch.setenv(env_name(field), value)
    settings = Settings()
    for (section, field), value in values.items():
        assert str(getattr(getattr(settings, section), field)) == value, field


def test_each_variable_names_one_setting_whatever_section_it_sits_in() -> None:
    names = [field for model in (Settings, *SECTIONS.values()) for field in model.model_fields]
    names = [name for name in names if name not in SECTIONS]
    assert len(names) == len(set(names)) and {"home", "max_lines", "api_token", "work_pool"} <= set(names)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_variable_named_like_a_section_is_not_read_as_one(
    section: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name(section), "http://batchinfer.internal:8000")  # BATCHINFER_SERVER, say
    monkeypatch.setenv("BATCHINFER_THREADS", "2")
    assert Settings().jobs.threads == 2


def test_settings_built_in_code_take_the_flat_names_and_the_rest_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCHINFER_MAX_LINES", "10")
    settings = Settings(max_num_generations=3, threads=2)
    limits = settings.limits
    assert (limits.max_num_generations, limits.max_lines, settings.jobs.threads) == (3, 10, 2)
    with pytest.raises(ValueError, match="max_lines inside limits"):
        Settings(max_lines=5, limits=LimitSettings())


@pytest.mark.parametrize(
    "field", ["max_line_bytes", "max_lines", "max_concurrent_jobs", "max_num_generations"]
)
def test_a_limit_below_one_is_refused_at_start(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name(field), "0")
    with pytest.raises(ValueError, match=field):
        Settings()


def test_the_uri_allowlist_is_a_comma_separated_lowercased_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_ALLOWED_URI_SCHEMES", "s3, HTTPS,,file")
    assert Settings().security.allowed_uri_schemes == ["s3", "https", "file"]


def test_private_uris_are_allowed_by_a_boolean_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_ALLOW_PRIVATE_URIS", "true")
    assert Settings().security.allow_private_uris is True


def test_the_api_token_is_secret_and_an_empty_one_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_API_TOKEN", "hunter2")
    settings = Settings()
    token = settings.security.api_token
    assert token is not None and token.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv("BATCHINFER_API_TOKEN", "  ")
    assert Settings().security.api_token is None


def test_a_chunk_is_100_prompts_for_a_local_model_and_8_per_in_flight_slot_for_an_http_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchinfer.engines.configs import OpenAIEngineConfig, TransformersEngineConfig

    local = TransformersEngineConfig(id="tiny", path="/models/tiny")
    one = OpenAIEngineConfig(id="one", base_url="http://127.0.0.1:1/v1", model="m", max_concurrency=64)
    three = OpenAIEngineConfig(
        id="three", base_urls=[f"http://127.0.0.1:{p}/v1" for p in (1, 2, 3)], model="m", max_concurrency=4
    )
    assert [Settings().jobs.chunk_size_for(c) for c in (local, one, three)] == [100, 512, 100]
    monkeypatch.setenv("BATCHINFER_CHUNK_SIZE", "40")
    assert [Settings().jobs.chunk_size_for(c) for c in (local, one, three)] == [40, 40, 40]
