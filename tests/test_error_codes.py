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
CODE_FIRST = {"_LineRejected", "_Failed", "RetryableError"}


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


def raised(source: str) -> set[str]:
    """The code strings a module raises: ``code=...`` keywords, ``code = ...`` class attributes,
    ``*_CODE`` constants, and the first argument of the line-error signals."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    found.add(str(keyword.value.value))
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in CODE_FIRST and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
            if name in CODE_FIRST and node.args and isinstance(node.args[0], ast.JoinedStr):
                found.add("http_<status>")
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if any(n == "code" or n.endswith("_CODE") for n in names):
                found.add(str(node.value.value))
    return found


def raised_by_source() -> dict[str, str]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        if "testing" not in path.parts:
            for code in raised(path.read_text(encoding="utf-8")):
                found.setdefault(code, str(path.relative_to(ROOT)))
    return found


def test_the_docs_list_exactly_the_codes_of_the_table() -> None:
    assert set(documented()) == codes()


def test_docs_errors_md_is_what_the_enum_generates() -> None:
    assert DOCS.read_text(encoding="utf-8") == markdown(), "docs/errors.md is stale: run `make docs`"


def test_every_code_carries_its_uses_and_is_its_own_string() -> None:
    assert all(code.uses for code in ErrorCode)
    assert ErrorCode.timeout == "timeout" and f"{ErrorCode.timeout}" == "timeout"
    assert http(503) == "http_503" and ErrorCode.http_status_answer == "http_<status>"


def test_every_code_the_source_raises_is_in_the_table() -> None:
    missing = {code: where for code, where in raised_by_source().items() if code not in codes()}
    assert missing == {}, f"undocumented codes (add them to error_codes.ERROR_CODES): {missing}"


def test_the_scan_finds_a_new_code_wherever_it_is_raised() -> None:
    source = (
        'class NewError(RequestError):\n    code = "brand_new"\n'
        'X_CODE = "another_new"\n'
        'ErrorDetail(code="third_new", message="m")\n'
        '_LineRejected("fourth_new", "m")\n'
        '_Failed(f"http_{status}", "m")\n'
    )
    assert raised(source) == {"brand_new", "another_new", "third_new", "fourth_new", "http_<status>"}


def test_each_code_has_one_entry_per_level_and_a_status_only_where_it_answers() -> None:
    pairs = [(entry.code, entry.level) for entry in ERROR_CODES]
    assert len(pairs) == len(set(pairs))
    assert all(entry.http_status is None for entry in ERROR_CODES if entry.level in ("job", "client"))
    assert all(entry.meaning.endswith(".") for entry in ERROR_CODES)
