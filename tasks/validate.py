"""The ``validate`` task: fetch the prompt file and split it into chunks and line errors."""

from __future__ import annotations

from pathlib import Path as LocalPath

from prefect import task
from prefect.cache_policies import NO_CACHE

from batchinfer.contract import Path, PathType
from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import SamplingParams
from batchinfer.pipeline.batch_checks import BatchRules
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.prompt_source import SourceRules, fetch
from batchinfer.pipeline.tables import PromptTemplate
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.settings import Settings


@task(name="validate", task_run_name="validate", cache_policy=NO_CACHE)
def validate(
    prompt_file: Path,
    job_dir: str,
    params: SamplingParams,
    chunk_size: int,
    defaults: RequestDefaults | None = None,
    endpoint: Endpoint | None = None,
    *,
    prompt: PromptTemplate | None = None,
    rules: BatchRules | None = None,
) -> ValidationSummary:
    layout = JobLayout(LocalPath(job_dir))
    settings = Settings()  # limits and URI rules, as configured where the job runs
    source_rules = SourceRules.from_settings(settings)
    source = fetch(prompt_file, settings.input_roots(), layout.staged_input, source_rules)
    limits = settings.limits.frozen()
    # A CSV table is known by its name: the one the user gave (a URI's is lost when it is staged).
    name = prompt_file.value if prompt_file.type is not PathType.raw_bytes else None
    return validate_prompt_file(
        source,
        layout,
        params,
        chunk_size,
        limits,
        defaults=defaults,
        endpoint=endpoint,
        prompt=prompt,
        name=name,
        dedupe=settings.jobs.deduplicate,
        rules=rules,
    )
