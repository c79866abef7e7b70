"""batchinfer uses Prefect, it does not change it: no module of the package assigns to (or deletes,
or setattr()s, or mock-patches) an attribute of anything imported from Prefect. The fork server in
cli/ used to replace ``prefect.flow_engine.multiprocessing``; this scan keeps such a seam out of src/
(and flows/, tasks/, which install as part of the package)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("src/batchinfer", "flows", "tasks")


def _prefect_names(tree: ast.AST) -> set[str]:
    """The names a module binds to Prefect's modules or objects, wherever it imports them."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prefect":
                    names.add(alias.asname or "prefect")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _patches(node: ast.AST, prefect: set[str]) -> bool:
    """Whether ``node`` changes an attribute of something in ``prefect``."""
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
        return any(isinstance(t, ast.Attribute) and _root(t) in prefect for t in targets)
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        first = node.args[0]
        if isinstance(first, ast.Constant):  # mock.patch("prefect.x.y"), monkeypatch.setattr("prefect...")
            return name in ("patch", "setattr", "delattr") and str(first.value).startswith("prefect.")
        return name in ("setattr", "delattr", "object") and _root(first) in prefect
    return False


def patches_of_prefect(source: str) -> list[int]:
    """The lines of ``source`` that change an attribute of something imported from Prefect."""
    tree = ast.parse(source)
    prefect = _prefect_names(tree)
    return sorted(node.lineno for node in ast.walk(tree) if _patches(node, prefect))


def _package_modules() -> list[Path]:
    return sorted(path for folder in PACKAGE_DIRS for path in (ROOT / folder).rglob("*.py"))


def test_no_module_of_the_package_changes_an_attribute_of_prefect() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for path in _package_modules()
        if (lines := patches_of_prefect(path.read_text(encoding="utf-8")))
    }
    assert found == {}
    assert len(_package_modules()) > 50, "the scan found the package"


@pytest.mark.parametrize(
    "source",
    [
        "from prefect import flow_engine\nflow_engine.multiprocessing = object()\n",
        "def f():\n    import prefect.flow_engine\n    prefect.flow_engine.multiprocessing = None\n",
        "import prefect.runner as r\nsetattr(r, 'Runner', object)\n",
        "from prefect import Flow\nFlow.__reduce__ = lambda self: None\n",
        "from prefect.flows import Flow as F\ndel F.fn\n",
        "from unittest import mock\nmock.patch('prefect.flow_engine.run_flow', None).start()\n",
    ],
)
def test_the_scan_finds_a_change_to_prefect_however_it_is_written(source: str) -> None:
    assert patches_of_prefect(source) != []


def test_the_scan_leaves_alone_what_only_uses_prefect() -> None:
    source = (
        "from prefect import flow\nfrom prefect.runner import Runner\nimport multiprocessing\n"
        "runner = Runner(name='x')\nrunner.limit = 4\nmultiprocessing.set_executable('/bin/py')\n"
        "deployment = flow.to_deployment(name='x')\n"
    )
    assert patches_of_prefect(source) == []
