"""No way in: `serve` refuses a public bind without a token, outputs never overwrite inputs, and a
model's API key never reaches an error record or a log. (Bearer-token auth on the adapter is in
test_api.py; prompt-file roots, schemes and private addresses in test_prompt_source.py.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path as LocalPath

import pytest

from batchinfer.api.submission import check_output_dir
from batchinfer.cli.serve import bind_refusal
from batchinfer.contract import Message, Path, PathType
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.openai_compat import OpenAIEngine
from batchinfer.errors import RequestError
from batchinfer.records import ErrorDetail
from batchinfer.settings import Settings
from batchinfer.testing.loopback_http import QuietHandler, loopback_server

# ---- serve on a public address ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_serve_may_bind_a_loopback_address_without_a_token(host: str) -> None:
    assert bind_refusal(host, Settings(api_token=None)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.5", "203.0.113.7"])
def test_serve_refuses_a_non_loopback_address_without_a_token(host: str) -> None:
    refusal = bind_refusal(host, Settings(api_token=None))
    assert refusal is not None
    assert host in refusal and "BATCHINFER_API_TOKEN" in refusal


def test_serve_may_bind_any_address_with_a_token() -> None:
    assert bind_refusal("0.0.0.0", Settings(api_token="t0ken")) is None


def test_batchinfer_serve_on_0_0_0_0_without_a_token_exits_2_before_starting_anything(
    tmp_path: LocalPath,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHINFER_", "PREFECT_"))}
    env["BATCHINFER_HOME"] = str(tmp_path / "home")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "batchinfer.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to serve on '0.0.0.0'" in result.stderr
    assert "BATCHINFER_API_TOKEN" in result.stderr
    assert not (tmp_path / "home").exists()  # no data dir, no Prefect server, no runner
    assert time.monotonic() - started < 30


# ---- outputs never overwrite inputs -----------------------------------------------------------


def _input(path: LocalPath) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[]\n")
    return Path(type=PathType.filepath, value=str(path))


# case -> (the input file, relative to tmp; the output dir, relative to tmp)
OVERWRITES = {
    "the input is the success file": ("out/success.jsonl", "out"),
    "the input is the error file": ("out/errors.jsonl", "out"),
    "the input is in the work dir": ("out/work/input-00000.jsonl", "out"),
    "the same, through a dotdot path": ("out/success.jsonl", "out/sub/.."),
}


@pytest.mark.parametrize("case", list(OVERWRITES))
def test_an_output_dir_that_would_overwrite_the_input_is_refused(case: str, tmp_path: LocalPath) -> None:
    input_name, output = OVERWRITES[case]
    (tmp_path / "out" / "sub").mkdir(parents=True)
    prompt_file = _input(tmp_path / input_name)
    with pytest.raises(RequestError) as raised:
        check_output_dir(str(tmp_path / output), prompt_file)
    assert raised.value.field == "output_dir"
    assert "overwrite" in raised.value.message


def test_a_file_uri_input_is_checked_like_a_filepath(tmp_path: LocalPath) -> None:
    prompt_file = _input(tmp_path / "out" / "success.jsonl")
    uri = Path(type=PathType.uri, value=LocalPath(prompt_file.value).as_uri())
    with pytest.raises(RequestError):
        check_output_dir(str(tmp_path / "out"), uri)


@pytest.mark.parametrize(
    "prompt_file",
    [
        Path(type=PathType.filepath, value="/data/prompts.jsonl"),
        Path(type=PathType.uri, value="s3://bucket/success.jsonl"),
    ],
    ids=["an input elsewhere", "a remote input"],
)
def test_an_output_dir_that_cannot_touch_the_input_is_accepted_resolved(
    prompt_file: Path, tmp_path: LocalPath
) -> None:
    assert check_output_dir(str(tmp_path / "out" / ".." / "out"), prompt_file) == (tmp_path / "out").resolve()


def test_the_prompts_own_directory_is_a_fine_output_dir(tmp_path: LocalPath) -> None:
    prompt_file = _input(tmp_path / "prompts.jsonl")
    assert check_output_dir(str(tmp_path), prompt_file) == tmp_path.resolve()


# ---- a model's API key stays secret -----------------------------------------------------------

KEY = "sk-test-0123456789abcdef"


@contextmanager
def echoing_server(status: int) -> Iterator[str]:
    """A model server that answers every request with ``status`` and echoes the key it was sent,
    as some servers do in their 'invalid API key' messages."""

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            message = f"Incorrect API key provided: {self.headers.get('Authorization')}"
            self.reply(status, json.dumps({"error": {"message": message}}).encode())

    with loopback_server(Handler) as base:
        yield base + "/v1"


@pytest.mark.parametrize("status", [401, 500], ids=["a refusal", "a server error, retried"])
def test_an_api_key_echoed_by_the_server_appears_in_no_error_record_and_no_log(
    status: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BATCHINFER_TEST_SECRET_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with echoing_server(status) as base_url:
        config = OpenAIEngineConfig(
            id="keyed",
            base_url=base_url,
            model="m",
            api_key_env="BATCHINFER_TEST_SECRET_KEY",
            max_retries=1,
            backoff_s=0.01,
            max_backoff_s=0.01,
        )
        engine = OpenAIEngine(config)
        try:
            request = PromptRequest(
                line=1, messages=[Message(role="user", text="hi")], params=SamplingParams()
            )
            (outcome,) = engine.infer([request])
        finally:
            engine.close()
    assert isinstance(outcome, ErrorDetail)
    assert outcome.code == f"http_{status}"
    assert "Incorrect API key provided" in outcome.message  # the server's message is kept...
    assert KEY not in outcome.model_dump_json()  # ...without the key
    assert KEY not in caplog.text
    assert KEY not in repr(engine) and KEY not in config.model_dump_json()
