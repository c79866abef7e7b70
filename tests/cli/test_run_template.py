"""``batchinfer run``'s table flags: ``--prompt-column`` and ``--template`` become the job's one
``prompt_template``."""

from __future__ import annotations

import pytest

from batchinfer.cli.run import _template


@pytest.mark.parametrize(
    ("template", "column", "expected"),
    [
        (None, None, None),
        ("Summarise: {abstract}", None, "Summarise: {abstract}"),
        (None, "abstract", "{abstract}"),
        ("Summarise {title}: {prompt}", "abstract", "Summarise {title}: {abstract}"),
        ("{prompt:>5}", "abstract", "{abstract:>5}"),
    ],
)
def test_a_prompt_column_is_the_template_of_that_column_or_what_prompt_stands_for_in_one(
    template: str | None, column: str | None, expected: str | None
) -> None:
    assert _template(template, column) == expected
