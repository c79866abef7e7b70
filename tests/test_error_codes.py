"""One vocabulary of error codes (``error_codes.ErrorCode``): docs/errors.md is generated from it, and
every code the source raises is in it, so no code reaches a client undocumented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from batchinfer.error_codes import ERROR_CODES, ErrorCode, codes, http, markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "errors.md"
SOURCE = ROOT / "src" / "batchinfer"
# Calls whose first argument is a line error's code.


def documented() -> dict[str, set[str]]:
    """Code -> the levels under which docs/errors.md lists it."""
    found: dict[str, set[str]] = {}
    level = ""
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            level = line
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            found.setdefault(match.group(1), set()).add(level)
    return found


def literals(source: str) -> list[tuple[int, str]]:
    """(line, code) of every string literal in ``source`` that spells a code: code should name the
    member instead. Docstrings, f-string text and ``Literal[...]`` types are prose and types, not code."""
    tree = ast.parse(source)
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skipped.add(body[0].value)  # a docstring
        if isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "Literal"
        ):
            skipped.update(ast.walk(node))
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in codes() and node not in skipped
    )


def literals_in_source() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for path in sorted(
        [*SOURCE.rglob("*.py"), *(ROOT / "flows").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]
    ):
        if path.name != "error_codes.py" and (hits := literals(path.read_text(encoding="utf-8"))):
            found[str(path.relative_to(ROOT))] = hits
    return found


def test_the_docs_list_exactly_the_codes_of_the_table() -> None:
    assert set(documented()) == codes()


def test_docs_errors_md_is_what_the_enum_generates() -> None:
    assert DOCS.read_text(encoding="utf-8") == markdown(), "docs/errors.md is stale: run `make docs`"


def test_every_code_carries_its_uses_and_is_its_own_string() -> None:
    assert all(code.uses for code in ErrorCode)
    assert ErrorCode.timeout == "timeout" and f"{ErrorCode.timeout}" == "timeout"
    assert http(503) == "http_503" and ErrorCode.http_status_answer == "http_<status>"


def test_no_module_spells_a_code_as_a_string_literal() -> None:
    assert literals_in_source() == {}, "raise ErrorCode members, not strings"


def test_the_scan_finds_a_code_spelled_as_a_string_wherever_it_is() -> None:
    source = (
        '"""A docstring may say timeout."""\n'
        'class E(RequestError):\n    code = "unauthorized"\n'
        'ErrorDetail(code="invalid_json", message=f"a timeout of {x}")\n'
        'RetryableError("timeout", "m")\n'
        'if code in ("cancelled", ErrorCode.expired): pass\n'
        'Kind = Literal["expired"]\n'
    )
    assert literals(source) == [(3, "unauthorized"), (4, "invalid_json"), (5, "timeout"), (6, "cancelled")]


def test_each_code_has_one_entry_per_level_and_a_status_only_where_it_answers() -> None:
    pairs = [(entry.code, entry.level) for entry in ERROR_CODES]
    assert len(pairs) == len(set(pairs))
    assert all(entry.http_status is None for entry in ERROR_CODES if entry.level in ("job", "client"))
    assert all(entry.meaning.endswith(".") for entry in ERROR_CODES)
