"""`batchinfer resume JOB_ID`: which Prefect API it talks to, and its refusals. (Resuming a real job
from the command line is in tests/e2e/test_e2e_reliability.py.)"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from batchinfer.cli.resume import DEFAULT_PREFECT_API_URL, job_action_from_cli, prefect_api_url
from batchinfer.settings import Settings
from batchinfer.testing.served import free_port

FLAG, ENV = "http://flag:1/api", "http://env:2/api"


@pytest.mark.parametrize(
    ("flag", "environ", "chosen"),
    [
        (FLAG, {"PREFECT_API_URL": ENV}, FLAG),
        (None, {"PREFECT_API_URL": ENV}, ENV),
        (None, {}, DEFAULT_PREFECT_API_URL),
    ],
    ids=["the flag first", "then PREFECT_API_URL", "then serve's own server"],
)
def test_resume_talks_to_the_flag_then_the_environment_then_serves_local_prefect_server(
    flag: str | None, environ: dict[str, str], chosen: str
) -> None:
    assert prefect_api_url(flag, environ) == chosen


def test_resume_refuses_a_job_id_that_is_not_a_uuid_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert job_action_from_cli("resume", "not-a-uuid", DEFAULT_PREFECT_API_URL, Settings(home=tmp_path)) == 2
    assert "not a job id" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["resume", "cancel"])
def test_resume_and_cancel_without_a_reachable_prefect_server_say_where_they_looked(
    tmp_path: Path, command: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "batchinfer.cli", command, str(uuid.uuid4()), "--prefect-api-url", url],
        env={"BATCHINFER_HOME": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot reach the Prefect API at {url}" in result.stderr
    assert "Traceback" not in result.stderr
