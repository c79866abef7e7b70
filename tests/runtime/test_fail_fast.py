"""When a job stops itself early (``runtime.fail_fast``): the tally of its outcomes, the code it
stops with, and the stop signal that carries it to every chunk."""

from __future__ import annotations

import pytest

from batchinfer.engines.base import RERUN_ON_RESUME
from batchinfer.records import Completion, ErrorDetail, Generation
from batchinfer.runtime.cancellation import StopSignal
from batchinfer.runtime.fail_fast import ERROR_RATE_EXCEEDED, FailFastRules, OutcomeTally

OK = Completion(generations=[Generation(role="assistant", text="fine", eot=True, finish_reason="stop")])


def failed(code: str) -> ErrorDetail:
    return ErrorDetail(code=code, message=f"the server said {code}")


def feed(tally: OutcomeTally, outcomes: list[ErrorDetail | Completion]) -> list[str | None]:
    return [tally.add(outcome) for outcome in outcomes]


@pytest.mark.parametrize(
    ("line_code", "job_code"),
    [
        ("http_401", "auth_failed"),
        ("http_403", "auth_failed"),
        ("http_404", "model_not_found"),
        ("quota_exhausted", "quota_exhausted"),
        ("certificate_untrusted", "certificate_untrusted"),
    ],
)
def test_the_first_answers_all_failing_for_good_stop_the_job_on_the_last_of_them(
    line_code: str, job_code: str
) -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=5))
    assert feed(tally, [failed(line_code)] * 5) == [None, None, None, None, job_code]
    assert tally.add(failed(line_code)) is None  # it trips once
    assert tally.tripped == job_code


@pytest.mark.parametrize(
    ("outcomes", "why"),
    [
        ([OK] + [failed("http_401")] * 30, "one answer succeeded: the key works"),
        ([failed("http_400")] * 30, "a bad request is the line's fault, not the job's"),
        ([failed("http_429"), failed("timeout"), failed("http_500")] * 10, "retryable failures"),
        ([failed("http_401")] * 4, "fewer than min_fatal, the job still running"),
    ],
)
def test_these_outcomes_never_stop_a_running_job(outcomes: list[ErrorDetail | Completion], why: str) -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=5))
    assert set(feed(tally, outcomes)) == {None}, why


def test_mixed_fatal_answers_stop_with_the_commonest() -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=5))
    feed(tally, [failed("http_404"), failed("http_401"), failed("http_401"), failed("http_403")])
    assert tally.add(failed("http_404")) == "auth_failed"


def test_without_min_fatal_fatal_answers_never_stop_the_job() -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=None))
    assert set(feed(tally, [failed("http_401")] * 50)) == {None}
    assert tally.final_verdict() is None


def test_a_small_job_whose_every_answer_failed_for_good_fails_with_that_code_at_the_end() -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=20))
    assert set(feed(tally, [failed("http_401")] * 3)) == {None}
    assert tally.final_verdict() == "auth_failed"


def test_a_small_job_with_other_failures_too_is_not_judged_fatal() -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=20))
    feed(tally, [failed("http_401"), failed("http_400")])
    assert tally.final_verdict() is None


@pytest.mark.parametrize(
    ("failures", "tripped_at"),
    [(60, 100), (51, 100), (50, None), (0, None)],
)
def test_an_error_rate_past_max_error_rate_stops_the_job_once_min_sample_ran(
    failures: int, tripped_at: int | None
) -> None:
    tally = OutcomeTally(FailFastRules(max_error_rate=0.5, min_sample=100))
    verdicts = feed(tally, [failed("http_400")] * failures + [OK] * (120 - failures))
    tripped = [i + 1 for i, verdict in enumerate(verdicts) if verdict == ERROR_RATE_EXCEEDED]
    assert tripped == ([tripped_at] if tripped_at else [])


def test_a_job_smaller_than_min_sample_is_judged_on_its_error_rate_at_the_end() -> None:
    tally = OutcomeTally(FailFastRules(max_error_rate=0.1, min_sample=100))
    assert set(feed(tally, [failed("http_400"), OK, OK])) == {None}
    assert tally.final_verdict() == ERROR_RATE_EXCEEDED


def test_a_max_error_rate_of_zero_fails_a_job_on_any_failure() -> None:
    tally = OutcomeTally(FailFastRules(max_error_rate=0.0, min_sample=100))
    feed(tally, [OK] * 9 + [failed("http_400")])
    assert tally.final_verdict() == ERROR_RATE_EXCEEDED


def test_the_jobs_error_says_what_to_fix_and_how_to_go_on() -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=2))
    feed(tally, [failed("http_401")] * 2)
    error = tally.error("job-1", "gpt-x")
    assert error.code == "auth_failed"
    assert "api_key_env" in str(error) and "'gpt-x'" in str(error)
    assert "batchinfer resume job-1" in str(error)


def test_an_untrusted_certificates_job_error_says_which_setting_trusts_its_ca() -> None:
    tally = OutcomeTally(FailFastRules(min_fatal=2))
    feed(tally, [failed("certificate_untrusted")] * 2)
    error = tally.error("job-1", "gpt-x")
    assert error.code == "certificate_untrusted"
    assert "SSL_CERT_FILE" in str(error) and "`ca_bundle`" in str(error)
    assert "batchinfer resume job-1" in str(error)


def test_the_rate_error_names_the_counts_and_the_setting() -> None:
    tally = OutcomeTally(FailFastRules(max_error_rate=0.2, min_sample=4))
    feed(tally, [failed("http_400")] * 3 + [OK])
    message = str(tally.error("job-1", "gpt-x"))
    assert "3 of its first 4 requests failed" in message and "max_error_rate 0.2" in message


def test_a_stop_signal_with_a_tally_stops_itself_and_marks_lines_cut_short_with_the_jobs_code() -> None:
    stop = StopSignal()
    stop.tally = OutcomeTally(FailFastRules(min_fatal=3))
    for _ in range(2):
        stop.observe(failed("http_404"))
    assert not stop.is_set()
    stop.observe(failed("http_404"))
    assert stop.is_set() and stop.failed_fast and stop.reason == "model_not_found"
    cut_short = stop.abandoned
    assert cut_short.code == "model_not_found" and "resuming the job runs this line" in cut_short.message


def test_a_stop_signal_set_by_a_cancel_is_not_a_fail_fast() -> None:
    stop = StopSignal()
    stop.tally = OutcomeTally(FailFastRules(min_fatal=3))
    stop.set("cancel requested")
    assert not stop.failed_fast and stop.abandoned.code == "cancelled"


@pytest.mark.parametrize(
    "code", ["http_401", "http_403", "http_404", "quota_exhausted", "auth_failed", "certificate_untrusted"]
)
def test_a_resume_runs_again_the_lines_that_failed_for_good_and_those_cut_short(code: str) -> None:
    assert code in RERUN_ON_RESUME


@pytest.mark.parametrize("code", ["http_400", "http_429", "timeout", "connection_error"])
def test_a_resume_keeps_the_lines_that_failed_otherwise(code: str) -> None:
    assert code not in RERUN_ON_RESUME
