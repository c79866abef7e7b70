"""Resolving the contract's Path (filepath, uri, raw_bytes): submit-time checks and run-time fetch."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path as LocalPath

import pytest

from batchinfer.contract import Path, PathType
from batchinfer.errors import PromptFileError
from batchinfer.prompt_source import check_and_stage, check_local_file, decode_raw_bytes, fetch

JSONL = '[{"role": "user", "text": "hi"}]\n'


@pytest.fixture
def root(tmp_path: LocalPath) -> LocalPath:
    root = tmp_path / "allowed"
    root.mkdir()
    return root.resolve()


@pytest.fixture
def outside(tmp_path: LocalPath) -> LocalPath:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = outside / "secret.jsonl"
    target.write_text(JSONL)
    return target


@pytest.fixture
def prompts(root: LocalPath) -> LocalPath:
    path = root / "prompts.jsonl"
    path.write_text(JSONL)
    return path


@pytest.fixture
def uploads(tmp_path: LocalPath) -> LocalPath:
    return tmp_path / "uploads"


def stage(path: Path, root: LocalPath, uploads: LocalPath) -> Path:
    return check_and_stage(path, [root], uploads)


def refused(path: Path, root: LocalPath, uploads: LocalPath) -> PromptFileError:
    with pytest.raises(PromptFileError) as raised:
        stage(path, root, uploads)
    assert raised.value.message
    assert raised.value.location == "body"
    return raised.value


# ---- filepath ---------------------------------------------------------------------------------


def test_an_absolute_filepath_under_the_roots_is_accepted_and_resolved(
    prompts: LocalPath, root: LocalPath, uploads: LocalPath
) -> None:
    staged = stage(Path(type=PathType.filepath, value=str(prompts)), root, uploads)
    assert staged == Path(type=PathType.filepath, value=str(prompts.resolve()))
    assert not uploads.exists()  # nothing copied


def test_a_filepath_with_dotdot_inside_the_roots_is_normalised(
    prompts: LocalPath, root: LocalPath, uploads: LocalPath
) -> None:
    (root / "sub").mkdir()
    staged = stage(Path(type=PathType.filepath, value=f"{root}/sub/../prompts.jsonl"), root, uploads)
    assert staged.value == str(prompts)


def _link_out(root: LocalPath, outside: LocalPath) -> str:
    link = root / "link.jsonl"
    link.symlink_to(outside)
    return str(link)


def _a_dir(root: LocalPath, outside: LocalPath) -> str:
    (root / "a_dir").mkdir()
    return str(root / "a_dir")


# case -> the filepath value, built from (root, a file outside the roots)
BAD_FILEPATHS: dict[str, Callable[[LocalPath, LocalPath], str]] = {
    "relative": lambda root, outside: "prompts.jsonl",
    "empty": lambda root, outside: "",
    "missing": lambda root, outside: str(root / "nope.jsonl"),
    "a directory": _a_dir,
    "outside the roots": lambda root, outside: str(outside),
    "dotdot out of the roots": lambda root, outside: f"{root}/../elsewhere/secret.jsonl",
    "a symlink inside the roots pointing outside": _link_out,
}


@pytest.mark.parametrize("case", list(BAD_FILEPATHS))
def test_a_bad_filepath_is_refused_naming_the_value_field(
    case: str, root: LocalPath, outside: LocalPath, uploads: LocalPath, prompts: LocalPath
) -> None:
    value = BAD_FILEPATHS[case](root, outside)
    error = refused(Path(type=PathType.filepath, value=value), root, uploads)
    assert error.field == "prompt_file_path.value"


def test_an_unreadable_filepath_is_refused(prompts: LocalPath, root: LocalPath, uploads: LocalPath) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read any file: os.access says readable")
    prompts.chmod(0)
    try:
        error = refused(Path(type=PathType.filepath, value=str(prompts)), root, uploads)
    finally:
        prompts.chmod(0o644)
    assert error.field == "prompt_file_path.value"
    assert "readable" in error.message


def test_a_uri_given_as_type_filepath_is_refused_naming_the_type_field(
    prompts: LocalPath, root: LocalPath, uploads: LocalPath
) -> None:
    error = refused(Path(type=PathType.filepath, value=prompts.as_uri()), root, uploads)
    assert error.field == "prompt_file_path.type"


# ---- uri --------------------------------------------------------------------------------------


def test_a_file_uri_under_the_roots_is_accepted_unchanged(
    prompts: LocalPath, root: LocalPath, uploads: LocalPath
) -> None:
    path = Path(type=PathType.uri, value=prompts.as_uri())
    assert stage(path, root, uploads) == path


def test_a_file_uri_with_percent_escapes_is_decoded(root: LocalPath, uploads: LocalPath) -> None:
    spaced = root / "my prompts.jsonl"
    spaced.write_text(JSONL)
    assert "%20" in spaced.as_uri()
    stage(Path(type=PathType.uri, value=spaced.as_uri()), root, uploads)


@pytest.mark.parametrize("case", ["missing", "outside the roots"])
def test_a_file_uri_is_checked_like_a_filepath(
    case: str, root: LocalPath, outside: LocalPath, uploads: LocalPath
) -> None:
    target = root / "nope.jsonl" if case == "missing" else outside
    error = refused(Path(type=PathType.uri, value=target.as_uri()), root, uploads)
    assert error.field == "prompt_file_path.value"


@pytest.mark.parametrize(
    "uri", ["https://example.com/prompts.jsonl", "http://example.com/p.jsonl", "s3://bucket/p.jsonl"]
)
def test_a_remote_uri_is_accepted_at_submit_without_fetching(
    uri: str, root: LocalPath, uploads: LocalPath
) -> None:
    path = Path(type=PathType.uri, value=uri)
    assert stage(path, root, uploads) == path


@pytest.mark.parametrize("uri", ["ftp://example.com/p.jsonl", "gopher://x/p", "javascript://x"])
def test_an_unsupported_uri_scheme_is_refused_naming_the_value_field(
    uri: str, root: LocalPath, uploads: LocalPath
) -> None:
    error = refused(Path(type=PathType.uri, value=uri), root, uploads)
    assert error.field == "prompt_file_path.value"
    assert "not supported" in error.message


@pytest.mark.parametrize("value", ["/data/prompts.jsonl", "prompts.jsonl", "C:\\data\\p.jsonl", ""])
def test_a_plain_path_given_as_type_uri_is_refused_naming_the_type_field(
    value: str, root: LocalPath, uploads: LocalPath
) -> None:
    error = refused(Path(type=PathType.uri, value=value), root, uploads)
    assert error.field == "prompt_file_path.type"


# ---- raw_bytes --------------------------------------------------------------------------------


def test_raw_jsonl_text_is_staged_by_its_hash_as_a_filepath(root: LocalPath, uploads: LocalPath) -> None:
    staged = stage(Path(type=PathType.raw_bytes, value=JSONL), root, uploads)
    digest = hashlib.sha256(JSONL.encode()).hexdigest()
    assert staged == Path(type=PathType.filepath, value=str(uploads / f"{digest}.jsonl"))
    assert LocalPath(staged.value).read_text() == JSONL


def test_base64_raw_bytes_are_decoded_and_staged(root: LocalPath, uploads: LocalPath) -> None:
    encoded = base64.b64encode(JSONL.encode()).decode()
    staged = stage(Path(type=PathType.raw_bytes, value=encoded), root, uploads)
    assert LocalPath(staged.value).read_bytes() == JSONL.encode()
    assert LocalPath(staged.value).name == hashlib.sha256(JSONL.encode()).hexdigest() + ".jsonl"


def test_a_batch_line_object_as_raw_bytes_is_taken_as_text() -> None:
    text = '{"custom_id": "a", "body": {"messages": []}}\n'
    assert decode_raw_bytes(text) == text.encode()


def test_staging_is_idempotent(root: LocalPath, uploads: LocalPath) -> None:
    first = stage(Path(type=PathType.raw_bytes, value=JSONL), root, uploads)
    mtime = LocalPath(first.value).stat().st_mtime_ns
    again = stage(
        Path(type=PathType.raw_bytes, value=base64.b64encode(JSONL.encode()).decode()), root, uploads
    )
    assert again == first
    assert LocalPath(first.value).stat().st_mtime_ns == mtime
    assert [p.name for p in uploads.iterdir()] == [LocalPath(first.value).name]


@pytest.mark.parametrize(
    "value",
    ["", "   \n", "hello, world", "not base64!", "abc"],
    ids=["empty", "whitespace", "prose", "bad base64 characters", "bad base64 padding"],
)
def test_raw_bytes_that_are_neither_jsonl_nor_base64_or_empty_are_refused(
    value: str, root: LocalPath, uploads: LocalPath
) -> None:
    error = refused(Path(type=PathType.raw_bytes, value=value), root, uploads)
    assert error.field == "prompt_file_path.value"
    assert not uploads.exists() or list(uploads.iterdir()) == []


# ---- fetch ------------------------------------------------------------------------------------


def test_fetch_of_a_file_uri_returns_the_local_file(
    prompts: LocalPath, root: LocalPath, tmp_path: LocalPath
) -> None:
    staged_input = tmp_path / "job" / "work" / "input.jsonl"
    local = fetch(Path(type=PathType.uri, value=prompts.as_uri()), [root], staged_input)
    assert local == prompts
    assert not staged_input.exists()


def test_fetch_rechecks_a_local_file_that_has_gone(
    prompts: LocalPath, root: LocalPath, tmp_path: LocalPath
) -> None:
    prompts.unlink()
    with pytest.raises(PromptFileError) as raised:
        fetch(Path(type=PathType.filepath, value=str(prompts)), [root], tmp_path / "in.jsonl")
    assert raised.value.field == "prompt_file_path.value"


def test_fetch_of_raw_bytes_stages_the_content_beside_the_job(root: LocalPath, tmp_path: LocalPath) -> None:
    staged_input = tmp_path / "job" / "work" / "input.jsonl"
    local = fetch(Path(type=PathType.raw_bytes, value=JSONL), [root], staged_input)
    assert local.parent == staged_input.parent
    assert local.read_text() == JSONL


def test_check_local_file_accepts_a_file_in_any_of_several_roots(root: LocalPath, outside: LocalPath) -> None:
    assert check_local_file(str(outside), [root, outside.parent.resolve()]) == outside.resolve()
