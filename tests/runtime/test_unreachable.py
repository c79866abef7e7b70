"""When a job counts as "model unreachable": nothing succeeded and every request failed to connect."""

from __future__ import annotations

import pytest

from batchinfer.runtime.unreachable import model_unreachable, unreachable_error

# (case, lines that succeeded, error codes of the requests that failed, unreachable?)
CASES = [
    ("every request refused", 0, {"connection_error": 120}, True),
    ("one answer got through", 1, {"connection_error": 119}, False),
    ("some timed out: the server is there", 0, {"connection_error": 100, "timeout": 20}, False),
    ("the server answered errors", 0, {"http_500": 120}, False),
    ("no request at all", 0, {}, False),
    ("zero counts are no failures", 0, {"connection_error": 0}, False),
]


@pytest.mark.parametrize(
    ("succeeded", "errors", "unreachable"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_job_is_model_unreachable_only_when_no_request_ever_connected(
    succeeded: int, errors: dict[str, int], unreachable: bool
) -> None:
    assert model_unreachable(succeeded, errors) is unreachable


def test_the_unreachable_error_names_the_server_the_count_and_how_to_resume() -> None:
    error = unreachable_error("job-1", "llama", ["http://10.0.0.5:8000/v1"], 120)
    assert error.code == "model_unreachable"
    assert "http://10.0.0.5:8000/v1" in error.message
    assert "all 120 requests failed to connect" in error.message
    assert "batchinfer resume job-1" in error.message


def test_without_a_base_url_the_unreachable_error_names_the_model() -> None:
    assert "model 'local'" in unreachable_error("job-1", "local", [], 3).message


def test_the_unreachable_error_of_a_model_with_replicas_names_every_one() -> None:
    urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    message = unreachable_error("job-1", "llama", urls, 40).message
    assert all(url in message for url in urls) and "replicas" in message
