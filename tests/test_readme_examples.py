"""The docs hold up: the "Programmatic use" snippets (docs/api.md) are regions of
examples/programmatic.py, copied verbatim, and that example runs, against a real `batchinfer serve`
(the client, sync and async) and as the flow called in-process on serve's Prefect server; every
relative link of the README and of docs/ names a file that exists; the README stays short."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from batchinfer.testing.served import ServeProcess, user_prompt, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "programmatic.py"
README = ROOT / "README.md"
PROGRAMMATIC = ROOT / "docs" / "api.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
HEADING = "## Programmatic use"
README_MAX_LINES = 200
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXPECTED_REGIONS = {"answers", "submit", "async", "flow"}

# `# [readme:NAME]` ... `# [/readme:NAME]`, each marker on a line of its own.
REGION = re.compile(r"^# \[readme:(?P<name>[\w-]+)\]\n(?P<body>.*?)^# \[/readme:(?P=name)\]$", re.M | re.S)


def regions() -> dict[str, str]:
    """Each region's code as the README shows it: the lines between the markers, trailing blank
    lines dropped (ruff puts two after a function; a code block needs none)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    found = {m["name"]: m["body"].rstrip("\n") + "\n" for m in REGION.finditer(text)}
    assert len(found) == text.count("# [readme:") == text.count("# [/readme:"), "unbalanced markers"
    return found


def test_the_example_marks_every_snippet_the_readme_shows() -> None:
    assert set(regions()) == EXPECTED_REGIONS


def test_the_api_page_has_a_programmatic_use_section() -> None:
    assert HEADING in PROGRAMMATIC.read_text(encoding="utf-8").splitlines(), (
        f"docs/api.md has no {HEADING!r} heading; merge the section built from examples/programmatic.py"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_REGIONS))
def test_each_snippet_appears_verbatim_in_the_readme_as_a_python_block(name: str) -> None:
    block = f"```python\n{regions()[name]}```\n"
    assert block in PROGRAMMATIC.read_text(encoding="utf-8"), (
        f"docs/api.md does not show region [readme:{name}] of {EXAMPLE.name} verbatim; copy it again"
    )


def relative_links(page: Path) -> list[str]:
    """The page's links to files of this repository (web links and in-page anchors left out)."""
    targets = [m.group(1) for m in LINK.finditer(page.read_text(encoding="utf-8"))]
    return [t.split("#")[0] for t in targets if not t.startswith(("http:", "https:", "mailto:", "#"))]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_names_a_file_that_exists(page: Path) -> None:
    broken = [link for link in relative_links(page) if not (page.parent / link).exists()]
    assert broken == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[fine](page.md) [web](https://example.com) [gone](missing.md#anchor) [top](#top)")
    assert relative_links(page) == ["page.md", "missing.md"]


def test_the_readme_reads_in_five_minutes() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.e2e
def test_the_example_runs_the_client_the_async_client_and_the_flow_to_completion(
    served: ServeProcess, data_dir: Path, tmp_path: Path
) -> None:
    first = [f"readme first {i}" for i in range(3)]
    second = [f"readme second {i}" for i in range(2)]
    tag = uuid.uuid4().hex[:8]
    files = [
        write_jsonl(data_dir / f"readme-{tag}-{n}.jsonl", [user_prompt(t) for t in texts])
        for n, texts in enumerate([first, second])
    ]
    env = {
        **served.env,  # the server's models file, data dir and roots: the in-process flow needs them
        "BATCHINFER_URL": served.url,
        "PREFECT_API_URL": served.prefect_api_url,  # record the flow run on serve's Prefect server
        "PREFECT_HOME": str(tmp_path / "prefect"),  # and keep Prefect's local state out of ~
    }
    argv = [sys.executable, str(EXAMPLE), *map(str, files), "--model", "fake"]
    run = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    sections = dict(_sections(run.stdout))
    assert list(sections) == ["client", "async client", "flow in process"]
    answers = [f"echo: {t}" for t in first]
    assert _answers(sections["client"]) == answers
    assert _answers(sections["async client"]) == answers + [f"echo: {t}" for t in second]
    assert _answers(sections["flow in process"]) == answers
    assert len(re.findall(r"^job \S+ completed: ", run.stdout, re.M)) == 3
    assert "flow run completed: {'total': 3, 'completed': 3, 'failed': 0}" in sections["flow in process"]


def _sections(output: str) -> list[tuple[str, str]]:
    """The example's output, split at its `== part` headers."""
    parts = re.split(r"^== (.+)$", output, flags=re.M)[1:]
    return list(zip(parts[::2], parts[1::2], strict=True))


def _answers(section: str) -> list[str]:
    """The answers printed in a section, in print order (`line N: answer`)."""
    return re.findall(r"^line \d+: (.*)$", section, re.M)
