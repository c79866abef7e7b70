"""Turning a submit request into flow parameters, or a ``RequestError`` naming the field.

Shared by the HTTP adapter and ``batchinfer run`` so that both refuse the same things the same way.
"""

from __future__ import annotations

from pathlib import Path as LocalPath

from batchinfer.contract import Options, Path, PathType, SubmitJobRequest
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import LimitExceededError, RequestError
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import check_url, is_url
from batchinfer.pipeline.prompt_source import SourceRules, check_and_stage, local_input
from batchinfer.pipeline.tables import PromptTemplate, check_prompt_source, template_fields
from batchinfer.settings import Limits, Settings, env_name


def prepare_job(
    request: SubmitJobRequest,
    settings: Settings,
    catalog: ModelCatalog,
    output_dir: str | None = None,
) -> JobParameters:
    catalog.get(request.model)  # raises UnknownModelError listing the known ids
    options = request.options or Options()
    num_generations = request.num_generations or 1
    check_limits(options, num_generations, settings.limits.frozen())
    prompt_file = check_and_stage(
        request.prompt_file_path,
        settings.roots(),
        settings.uploads_dir,
        SourceRules.from_settings(settings),
    )
    prompt = PromptTemplate(template=request.prompt_template, system_prompt=request.system_prompt)
    check_prompt_table(request.prompt_file_path, prompt_file, prompt)
    output_url = request.output_url or settings.scale_out.output_url
    if output_url is not None:
        check_url(output_url, "output_url")
    if output_dir is not None and is_url(output_dir):
        check_url(output_dir, "output_dir")
    elif output_dir is not None:
        output_dir = str(check_output_dir(output_dir, prompt_file))
    return JobParameters(
        model=request.model,
        prompt_file=prompt_file,
        options=options,
        num_generations=num_generations,
        output_dir=output_dir,
        output_url=None if output_dir is not None else output_url,
        prompt_template=prompt.template,
        system_prompt=prompt.system_prompt,
        max_error_rate=request.max_error_rate,
    )


def check_prompt_table(given: Path, staged: Path, prompt: PromptTemplate) -> None:
    """A local table must make prompts with the request's template (its columns are read, not its
    rows); a template needs a table. A remote file is checked when the job reads it."""
    local = local_input(staged)
    if local is None:
        if prompt.template is not None:
            template_fields(prompt.template)  # a malformed template is refused now all the same
        return
    name = given.value if given.type is not PathType.raw_bytes else None
    check_prompt_source(local, name, prompt)


def check_limits(options: Options, num_generations: int, limits: Limits) -> None:
    """Refuse sampling requests past the configured limits, naming the field and the limit."""
    if num_generations > limits.max_num_generations:
        raise LimitExceededError(
            _over("num_generations", num_generations, limits.max_num_generations, "max_num_generations"),
            field="num_generations",
        )
    if options.max_tokens is not None and options.max_tokens > limits.max_max_tokens:
        raise LimitExceededError(
            _over("max_tokens", options.max_tokens, limits.max_max_tokens, "max_max_tokens"),
            field="options.max_tokens",
        )


def _over(name: str, value: int, limit: int, setting: str) -> str:
    return (
        f"{name} {value} is over the limit of {limit} ({env_name(setting)}); "
        "ask for less, or raise the limit where the server runs."
    )


def check_output_dir(output_dir: str, prompt_file: Path) -> LocalPath:
    """The resolved output dir, unless writing the job's files there could overwrite the input:
    the success or error file would be the input itself, or the input lies in the job's work dir."""
    layout = JobLayout(LocalPath(output_dir).expanduser().resolve())
    source = local_input(prompt_file)
    if source is None:  # a remote file is staged inside the job dir: ours to write
        return layout.root
    source = source.resolve()
    if source in (layout.success, layout.errors) or source.is_relative_to(layout.work):
        raise RequestError(
            f"Output dir {output_dir!r} would overwrite the input {prompt_file.value!r} "
            f"({layout.success.name}, {layout.errors.name} and {layout.work.name}/ are written "
            "there); choose another output dir.",
            field="output_dir",
            code=ErrorCode.output_overwrites_input,
        )
    return layout.root
