"""Deciding that a job failed because its model server was never reached.

When the server is down for the whole job, every prompt becomes a ``connection_error`` record; the
job still writes both output files (every line is in the error file, as always), but it ends
``failed`` with code ``model_unreachable`` instead of ``completed``, because a "completed" job with
no answer at all would hide an outage behind a green status. A job where some request got through
(or failed any other way) completes as usual: then the server was up and the records tell the story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobError

CONNECTION_ERROR = ErrorCode.connection_error


def model_unreachable(succeeded: int, inference_errors: Mapping[str, int]) -> bool:
    """True when no prompt succeeded and every request that was sent failed to connect.

    ``inference_errors`` counts the error codes of the lines that reached the engine (bad input
    lines never do, so they do not count either way).
    """
    failed = {code: count for code, count in inference_errors.items() if count}
    return succeeded == 0 and set(failed) == {CONNECTION_ERROR}


def unreachable_error(job_id: str, model_id: str, urls: Sequence[str], failed: int) -> JobError:
    """The job's error; it names every URL of the model (its replicas), or the model if none."""
    where = f"server of model {model_id!r}"
    if len(urls) == 1:
        where = f"server at {urls[0]}"
    elif urls:
        where = f"servers (replicas) at {', '.join(urls)}"
    return JobError(
        f"The model {where} could not be reached: all {failed} requests failed to connect "
        f"(see errors.jsonl). Check that the server is up and reachable from the runner, then "
        f"resume the job: `batchinfer resume {job_id}` or POST /batch_inference/resume_job?job_id="
        f"{job_id}.",
        code=ErrorCode.model_unreachable,
    )
