"""batchinfer: batch inference on Prefect 3.

Importing the package is cheap: no Prefect, torch or transformers at import time. The client names
below are loaded on first use (module ``__getattr__``), so ``from batchinfer import submit_job``
costs httpx and pydantic, not the rest of batchinfer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it, imported when the name is first looked up.
_LAZY: dict[str, str] = {
    name: "batchinfer.client"
    for name in (
        "AsyncBatchInferClient",
        "BatchInferClient",
        "BatchInferClientError",
        "JobPage",
        "JobWaitTimeout",
        "cancel_job",
        "job_status",
        "list_jobs",
        "read_results",
        "submit_dataframe",
        "submit_job",
        "wait_for_job",
    )
}

__all__ = [
    "AsyncBatchInferClient",
    "BatchInferClient",
    "BatchInferClientError",
    "JobPage",
    "JobWaitTimeout",
    "__version__",
    "cancel_job",
    "job_status",
    "list_jobs",
    "read_results",
    "submit_dataframe",
    "submit_job",
    "wait_for_job",
]

if TYPE_CHECKING:  # what mypy and IDEs see; at run time __getattr__ provides these
    from batchinfer.client import (
        AsyncBatchInferClient,
        BatchInferClient,
        BatchInferClientError,
        JobPage,
        JobWaitTimeout,
        cancel_job,
        job_status,
        list_jobs,
        read_results,
        submit_dataframe,
        submit_job,
        wait_for_job,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # An AttributeError (not an ImportError) lets `from batchinfer import pipeline` go on to
        # import the submodule, as it does without a module __getattr__.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
