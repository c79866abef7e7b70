"""Stopping a job early on failures that no retry fixes, instead of sending every line to fail.

A wrong API key answers 401 to the first request and to the 50,000th; so do an unknown model (404),
an exhausted quota (OpenAI's 429 ``insufficient_quota``) and a server whose TLS certificate is not
trusted (``certificate_untrusted``, never retried). ``OutcomeTally`` hears each request's
outcome as it lands (the OpenAI engine reports them through the job's ``StopSignal``) and says when
the job should stop:

- the first ``min_fatal`` answers of a run all failed one of those ways and none succeeded: stop with
  ``auth_failed``, ``model_not_found``, ``quota_exhausted`` or ``certificate_untrusted`` (the
  commonest of them);
- ``max_error_rate`` is set and, after ``min_sample`` outcomes, more than that share failed: stop with
  ``error_rate_exceeded``. A job too small to reach ``min_sample`` is judged once it has run.

The job then stops as for a cancel (the requests in flight are abandoned, finished lines are kept,
both output files written) and fails with that code. A resume runs again the lines cut short and the
lines that failed the fatal way (``engines.base.RERUN_ON_RESUME``): once the key is fixed, they may
succeed. Pure: no Prefect.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from batchinfer.engines.base import (
    AUTH_FAILED,
    CERTIFICATE_UNTRUSTED,
    ERROR_RATE_EXCEEDED,
    FATAL_LINE_CODES,
    InferenceOutcome,
)
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobError, resume_hint
from batchinfer.records import ErrorDetail

_HOW_TO_FIX = {
    AUTH_FAILED: "the server refuses the API key: set a valid key in the variable the model's "
    "`api_key_env` names (where the runner runs)",
    ErrorCode.model_not_found: "the server does not know the model: check the model's `model` name and its "
    "`base_url` (or `base_urls`) in the models file",
    ErrorCode.quota_exhausted: "the account's quota is used up: add credit or raise the quota with the "
    "provider",
    CERTIFICATE_UNTRUSTED: "the model server's TLS certificate is not trusted: set SSL_CERT_FILE (or "
    "SSL_CERT_DIR) to the bundle of the CA that signed it where the job runs, or the model's "
    "`ca_bundle` in the models file",
}


@dataclass(frozen=True)
class FailFastRules:
    """When a job stops itself early (see the module docstring)."""

    min_fatal: int | None = 20  # None: never stop on fatal answers
    max_error_rate: float | None = None
    min_sample: int = 100


@dataclass
class OutcomeTally:
    """One run's outcomes so far, from every chunk thread of the job; thread-safe."""

    rules: FailFastRules
    succeeded: int = 0
    failed: int = 0
    fatal: Counter[str] = field(default_factory=Counter)  # job code -> lines
    tripped: str | None = None  # the code the job stops with, once it must
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: InferenceOutcome) -> str | None:
        """Count ``outcome``; the code the job must stop with, the first time it must."""
        with self._lock:
            if self.tripped is not None:
                return None
            if isinstance(outcome, ErrorDetail):
                self.failed += 1
                if outcome.code in FATAL_LINE_CODES:
                    self.fatal[FATAL_LINE_CODES[outcome.code]] += 1
            else:
                self.succeeded += 1
            self.tripped = self._verdict(final=False)
            return self.tripped

    def final_verdict(self) -> str | None:
        """Once the run has finished: the code it fails with, if any (a small job's error rate)."""
        with self._lock:
            if self.tripped is None:
                self.tripped = self._verdict(final=True)
            return self.tripped

    def _verdict(self, final: bool) -> str | None:
        fatal, at_least = self.fatal.total(), self.rules.min_fatal
        # Early: enough fatal answers and no success. At the end: a small job that only failed so.
        only_fatal = self.succeeded == 0 and fatal > 0
        if at_least is not None and only_fatal and (fatal >= at_least or (final and fatal == self.failed)):
            return self.fatal.most_common(1)[0][0]
        rate = self.rules.max_error_rate
        done = self.succeeded + self.failed
        if rate is not None and done and (final or done >= self.rules.min_sample):
            return ERROR_RATE_EXCEEDED if self.failed / done > rate else None
        return None

    def error(self, job_id: str, model_id: str) -> JobError:
        """The job's error once tripped: what happened, how to fix it, how to go on."""
        code = self.tripped
        assert code is not None
        done = self.succeeded + self.failed
        if code == ERROR_RATE_EXCEEDED:
            what = (
                f"{self.failed} of its first {done} requests failed, more than max_error_rate "
                f"{self.rules.max_error_rate}: the error file says why for each; fix the cause or "
                "raise max_error_rate"
            )
        else:
            what = (
                f"Its first {self.fatal[code]} requests to model {model_id!r} failed and none "
                f"succeeded: {_HOW_TO_FIX[code]}"
            )
        return JobError(
            f"The job stopped early ({code}). {what}. {resume_hint(job_id)}",
            code=code,
        )


def not_sent(code: str) -> ErrorDetail:
    """The record of a line a fail-fast stop cut short."""
    return ErrorDetail(
        code=code,
        message=f"Not sent: the job stopped early ({code}, see the job's error); resuming the job "
        "runs this line.",
    )
