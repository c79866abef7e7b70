"""Contract fuzzing: schemathesis writes requests from the seed contract itself
(``contract/batch_inference_api.yaml``, the seed's own, vendored) and sends them to a running
``batchinfer serve``.

What every answer must satisfy:

* never a 5xx (``not_a_server_error``): whatever a client sends, it gets a 200 or a clear 4xx;
* a 200 has the media type and the body that the seed documents for it (``content_type_conformance``,
  ``response_schema_conformance``: ``BatchInference``, its ``status`` enum, its ``Path``s, ...);
* anything else is a 4xx. The seed documents only 200, so schemathesis's ``status_code_conformance``
  would count each of our refusals (422 for a bad body or job id, 404 for an unknown job, ...) as a
  violation. Refusing a bad request is what README's "Errors" promises and the seed is silent on, so
  that check is left out and "200 or 4xx" asserted instead; likewise ``positive_data_acceptance``,
  since the seed accepts any ``model`` string and we refuse ids that are not in the models file.
  ``negative_data_rejection`` stays: a request the seed forbids (a number for ``model``, no
  ``job_id``) must be refused.

A model name drawn at random is never one the server knows, so the first test mostly meets the 422
for an unknown model. The second names a known model, to get past that and fuzz the rest of the body
(options, num_generations, the prompt file's Path) through to real 200s; the third checks the
answers of ``job_status`` in each state of a real job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
)

from batchinfer.testing.served import TERMINAL, ServeProcess, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e


SEED = Path(__file__).parents[2] / "contract" / "batch_inference_api.yaml"  # the vendored contract

# Bounded and reproducible: the same requests on every run, nothing remembered between runs.
FUZZ_CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261127,
        "generation": {"max-examples": 50, "deterministic": True, "database": "none"},
        # The seed has no links between operations for a stateful run to follow.
        "phases": {"stateful": {"enabled": False}},
        # Any 4xx is a refusal; the default list lacks e.g. 413, which a size limit answers with.
        "checks": {"negative_data_rejection": {"expected-statuses": ["4xx"]}},
        "request-timeout": 30,
    }
)
SCHEMA = schemathesis.openapi.from_path(SEED, config=FUZZ_CONFIG)
SUBMIT = SCHEMA["/batch_inference/submit_job"]["POST"]
STATUS = SCHEMA["/batch_inference/job_status"]["GET"]
CONFORMANCE = [not_a_server_error, content_type_conformance, response_schema_conformance]

KNOWN_MODEL = "fake"  # the loopback OpenAI-compatible server of tests/conftest.py
# Accepted at submit time, then refused by validation as a whole (its one line is an empty message
# list): whatever options the fuzzer drew, such a job fails within a second and never calls a model.
FAIL_FAST_FILE = {"type": "raw_bytes", "value": "[]\n"}
FUZZED_FIELDS = ("prompt_file_path", "options", "num_generations")


def _assert_200_or_4xx(response: schemathesis.Response) -> None:
    status = response.status_code
    assert status == 200 or 400 <= status < 500, f"{status}: {response.text[:500]}"


@SCHEMA.parametrize()
def test_requests_generated_from_the_seed_get_a_conforming_200_or_a_4xx_and_never_a_5xx(
    case: schemathesis.Case, served: ServeProcess
) -> None:
    response = case.call_and_validate(base_url=served.url, checks=[*CONFORMANCE, negative_data_rejection])
    _assert_200_or_4xx(response)


def _with_known_model(case: schemathesis.Case, fuzz_path: bool) -> schemathesis.Case:
    """The generated body with a known model; its prompt file is the fuzzer's, or one that fails fast.

    Properties the seed does not name are dropped: the seed allows them, we refuse them (422), and
    the first test already covers that; here they would only hide the fields we want to reach."""
    generated = case.body if isinstance(case.body, dict) else {}
    body: dict[str, Any] = {key: value for key, value in generated.items() if key in FUZZED_FIELDS}
    body["model"] = KNOWN_MODEL
    if not fuzz_path:
        body["prompt_file_path"] = FAIL_FAST_FILE
    case.body = body
    return case


@pytest.fixture(scope="module")
def accepted_jobs(served: ServeProcess) -> Iterator[list[str]]:
    """Ids of the jobs the fuzzer got accepted. They are all finished by the end of this module, so
    none is left in the runner's queue to slow down the tests that follow."""
    job_ids: list[str] = []
    yield job_ids
    for job_id in job_ids:
        served.wait(job_id, timeout_s=180)


@given(case=st.tuples(SUBMIT.as_strategy(), st.booleans()).map(lambda drawn: _with_known_model(*drawn)))
@example(
    case=SUBMIT.Case(
        body={
            "model": KNOWN_MODEL,
            "prompt_file_path": FAIL_FAST_FILE,
            "options": {"logprobs": True, "max_tokens": 1, "temperature": 0.0, "top_p": 1.0},
            "num_generations": 2,
        }
    )
)
# Each accepted submit starts a flow run, a few seconds of a core: keep their number small.
@settings(max_examples=8, derandomize=True, database=None, deadline=None)
def test_submits_naming_a_known_model_get_a_conforming_200_or_a_4xx_naming_the_field(
    case: schemathesis.Case, served: ServeProcess, accepted_jobs: list[str]
) -> None:
    response = case.call_and_validate(base_url=served.url, checks=CONFORMANCE)
    _assert_200_or_4xx(response)
    if response.status_code == 200:
        accepted_jobs.append(response.json()["job_id"])
        return
    detail = response.json()["detail"]
    if isinstance(detail, list):  # FastAPI's shape: the culprit is a field the fuzzer varied
        assert detail[0]["loc"][0] == "body" and detail[0]["loc"][1] in FUZZED_FIELDS, detail


def _statuses_until_done(served: ServeProcess, job_id: str, timeout_s: float = 180.0) -> list[str]:
    """Poll ``job_status``, checking every answer against the seed; the statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not seen or seen[-1] not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job_id} not done in {timeout_s} s: {seen}"
        response = STATUS.Case(query={"job_id": job_id}).call_and_validate(
            base_url=served.url, checks=CONFORMANCE
        )
        assert response.status_code == 200, response.text
        status = response.json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.2)
    return seen


def test_job_status_conforms_to_the_seed_in_every_state_of_a_job(
    served: ServeProcess, data_dir: Path, accepted_jobs: list[str]
) -> None:
    path = write_jsonl(data_dir / "contract-fuzz.jsonl", [user_prompt(f"contract {i}") for i in range(3)])
    body = {"model": KNOWN_MODEL, "prompt_file_path": {"type": "filepath", "value": str(path)}}
    submitted = SUBMIT.Case(body=body).call_and_validate(base_url=served.url, checks=CONFORMANCE)
    assert submitted.status_code == 200, submitted.text

    # The fuzzer's jobs (of the test above, when it ran) finish too, mostly failed (their prompt files
    # are unusable), with every answer on the way as documented.
    for job_id in accepted_jobs:
        assert _statuses_until_done(served, job_id)[-1] in TERMINAL
    seen = _statuses_until_done(served, submitted.json()["job_id"])
    assert seen[-1] == "completed", seen
