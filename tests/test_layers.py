"""The layers of ``src/batchinfer`` and who may import whom, checked on every module's imports
(top-level and inside functions), third-party packages included, and the size rules every function
in ``src/`` keeps.

    vocabulary (errors, settings, contract, records, endpoints, jobspec) <- everyone
    engines      vocabulary, the ML packages                  (no Prefect, no FastAPI)
    pipeline     vocabulary, engines                          (pure data work: no Prefect, no FastAPI)
    runtime      vocabulary, engines, pipeline, Prefect, Dask (inside a flow run)
    control      vocabulary, pipeline, Prefect                (a job seen from outside)
    api          vocabulary, engines, pipeline, control, Prefect, FastAPI (the only one with FastAPI)
    tasks/flows  vocabulary, engines, pipeline, runtime, Prefect (flows also tasks and control.names)
    client       vocabulary                                   (the Python client: the caller's side)
    cli          anything but testing;  testing: anything
Nothing below the CLI imports the HTTP adapter (``api``) or the client, and nothing but tests
imports ``testing``. The package itself (``batchinfer/__init__``) only names the client's functions.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchinfer import _LAZY

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "batchinfer": ROOT / "src" / "batchinfer",
    "batchinfer.flows": ROOT / "flows",
    "batchinfer.tasks": ROOT / "tasks",
}
LAYERS = ("engines", "pipeline", "runtime", "control", "api", "cli", "testing", "flows", "tasks", "client")
VOCABULARY = "vocabulary"
PACKAGE = "package"  # batchinfer/__init__: the public names, the client's among them
# Third-party packages that only some layers may use, by the group a rule names; others are free.
THIRD_PARTY = {
    "prefect": "prefect",
    "fastapi": "fastapi",
    "starlette": "fastapi",
    "multipart": "fastapi",
    "uvicorn": "uvicorn",
    "dask": "dask",
    "distributed": "dask",
    **dict.fromkeys(
        ("torch", "transformers", "ctranslate2", "llama_cpp", "vllm", "gguf", "llguidance"), "ml"
    ),
}
ALLOWED: dict[str, frozenset[str]] = {
    VOCABULARY: frozenset({VOCABULARY}),
    PACKAGE: frozenset({VOCABULARY, "client"}),
    "client": frozenset({VOCABULARY, "client"}),
    "engines": frozenset({VOCABULARY, "engines", "ml"}),
    "pipeline": frozenset({VOCABULARY, "engines", "pipeline"}),
    "runtime": frozenset({VOCABULARY, "engines", "pipeline", "runtime", "prefect", "dask"}),
    "control": frozenset({VOCABULARY, "pipeline", "control", "prefect"}),
    "api": frozenset({VOCABULARY, "engines", "pipeline", "control", "api", "prefect", "fastapi"}),
    "tasks": frozenset({VOCABULARY, "engines", "pipeline", "runtime", "tasks", "prefect"}),
    "flows": frozenset(
        {VOCABULARY, "engines", "pipeline", "runtime", "tasks", "flows", "control.names", "prefect"}
    ),
    "cli": frozenset({VOCABULARY, *LAYERS, *THIRD_PARTY.values()}) - {"testing", "fastapi"},
    "testing": frozenset({VOCABULARY, *LAYERS, *THIRD_PARTY.values()}),
}
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL_PARAMETERS = 6


def layer_of(module: str) -> str | None:
    """The layer of a module we own, the group of a third-party package a rule names (``prefect``,
    ``fastapi``, ...), None for anything else."""
    parts = module.split(".")
    if parts[0].startswith("prefect_"):  # Prefect's integrations (prefect-dask) are Prefect too
        return "prefect"
    if parts[0] != "batchinfer":
        return THIRD_PARTY.get(parts[0])
    if len(parts) == 1:
        return PACKAGE
    if parts[1] in LAYERS:
        return "control.names" if parts[1:3] == ["control", "names"] else parts[1]
    return VOCABULARY


def imported_modules(source: str) -> list[str]:
    """What a module imports; ``from batchinfer import x`` imports ``batchinfer.x``, a submodule or
    one of the package's names (a client function: the client's layer)."""
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "batchinfer" and node.level == 0:
            modules += [_LAZY.get(alias.name, f"batchinfer.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


def violations(module: str, source: str) -> list[str]:
    """``module -> imported`` for each import its layer may not make."""
    layer = layer_of(module)
    assert layer is not None
    allowed = ALLOWED["control" if layer == "control.names" else layer]
    found = []
    for imported in imported_modules(source):
        target = layer_of(imported)
        if target is None or target == layer:
            continue
        if target not in allowed and not (target == "control.names" and "control" in allowed):
            found.append(f"{module} -> {imported}")
    return found


@dataclass(frozen=True)
class Module:
    name: str
    path: Path


def our_modules() -> list[Module]:
    modules = []
    for package, directory in SOURCES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = path.relative_to(directory).with_suffix("").parts
            name = ".".join([package, *parts]).removesuffix(".__init__")
            modules.append(Module(name, path))
    return modules


MODULES = our_modules()


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_each_module_imports_only_what_its_layer_may(module: Module) -> None:
    assert violations(module.name, module.path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("batchinfer.pipeline.parsing", "import prefect"),
        ("batchinfer.pipeline.gather", "from batchinfer.runtime.cancellation import StopSignal"),
        ("batchinfer.runtime.job_run", "from batchinfer.api.app import create_app"),
        ("batchinfer.control.backend", "def f():\n    from batchinfer.cli.serve import serve"),
        ("batchinfer.engines.openai_compat", "from batchinfer.pipeline.jobfiles import JobLayout"),
        ("batchinfer.errors", "from batchinfer.engines.base import Engine"),
        ("batchinfer.cli.main", "from batchinfer.testing.fake_openai import FakeOpenAIServer"),
        ("batchinfer.flows.batch_job", "from batchinfer.control.backend import PrefectJobBackend"),
        ("batchinfer.pipeline.parsing", "import fastapi"),
        ("batchinfer.pipeline.gather", "from starlette.responses import Response"),
        ("batchinfer.engines.base", "from prefect import flow"),
        ("batchinfer.runtime.job_run", "from fastapi import FastAPI"),
        ("batchinfer.cli.serve", "from fastapi import FastAPI"),
        ("batchinfer.pipeline.chunk_run", "import torch"),
        ("batchinfer.control.backend", "from batchinfer.client import BatchInferClient"),
        ("batchinfer.api.routes", "def f():\n    from batchinfer.client import submit_job"),
        ("batchinfer.client", "from batchinfer.api.app import create_app"),
        ("batchinfer.runtime.reporting", "from batchinfer import submit_job"),
    ],
    ids=lambda value: value.split("\n")[-1].strip(),
)
def test_a_forbidden_import_is_caught(module: str, source: str) -> None:
    assert violations(module, source) == [f"{module} -> {imported_modules(source)[0]}"]


def test_an_allowed_import_passes() -> None:
    assert violations("batchinfer.api.app", "from batchinfer.control.backend import JobBackend") == []
    assert violations("batchinfer.flows.batch_job", "from batchinfer.control.names import FLOW_NAME") == []
    assert violations("batchinfer.api.app", "from fastapi import FastAPI") == []
    assert violations("batchinfer.cli.jobs", "from batchinfer.client import BatchInferClient") == []
    assert violations("batchinfer.engines.ctranslate2_local", "import torch") == []
    assert violations("batchinfer.pipeline.tables", "import pyarrow") == []  # no rule names pyarrow


def oversized(source: str, where: str) -> list[str]:
    """Functions over the size rules: ``where:name (N lines / N positional parameters)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        positional = [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
        if lines > MAX_FUNCTION_LINES or len(positional) > MAX_POSITIONAL_PARAMETERS:
            found.append(f"{where}:{node.name} ({lines} lines / {len(positional)} positional parameters)")
    return found


def test_no_function_is_over_60_lines_or_6_positional_parameters() -> None:
    found = [issue for m in MODULES for issue in oversized(m.path.read_text(encoding="utf-8"), m.name)]
    assert found == []


def test_the_size_rule_catches_a_long_function_and_a_long_signature() -> None:
    long_body = "def long():\n" + "    x = 1\n" * 60
    long_signature = "def many(a, b, c, d, e, f, g):\n    pass\n"
    assert oversized(long_body, "m") == ["m:long (61 lines / 0 positional parameters)"]
    assert oversized(long_signature, "m") == ["m:many (2 lines / 7 positional parameters)"]
    assert oversized("def fine(self, a, b, *, c, d, e, f, g):\n    pass\n", "m") == []
