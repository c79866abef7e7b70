"""Turning a submit request into flow parameters, or a ``RequestError`` naming the field.

Shared by the HTTP adapter and ``batchinfer run`` so that both refuse the same things the same way.
"""

from __future__ import annotations

from batchinfer.catalog import ModelCatalog
from batchinfer.contract import Options, SubmitJobRequest
from batchinfer.jobview import JobParameters
from batchinfer.prompt_source import check_and_stage
from batchinfer.settings import Settings


def prepare_job(request: SubmitJobRequest, settings: Settings, catalog: ModelCatalog) -> JobParameters:
    catalog.get(request.model)  # raises UnknownModelError listing the known ids
    prompt_file = check_and_stage(request.prompt_file_path, settings.roots(), settings.uploads_dir)
    return JobParameters(
        model=request.model,
        prompt_file=prompt_file,
        options=request.options or Options(),
        num_generations=request.num_generations or 1,
    )
