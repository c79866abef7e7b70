"""Resolving the contract's Path (filepath, uri, raw_bytes): submit-time checks and run-time fetch."""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path as LocalPath
from typing import Any

import pytest

from batchinfer.contract import Path, PathType
from batchinfer.errors import FileTooLargeError, PromptFileError
from batchinfer.pipeline import prompt_source
from batchinfer.pipeline.prompt_source import (
    SourceRules,
    check_and_stage,
    check_local_file,
    decode_raw_bytes,
    display_uri,
    fetch,
)
from batchinfer.testing.forward_proxy import ForwardProxy
from batchinfer.testing.loopback_http import QuietHandler, loopback_server
from batchinfer.testing.tls import PrivateCA

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


def stage(path: Path, root: LocalPath, uploads: LocalPath, rules: SourceRules | None = None) -> Path:
    return check_and_stage(path, [root], uploads, rules)


def refused(
    path: Path, root: LocalPath, uploads: LocalPath, rules: SourceRules | None = None
) -> PromptFileError:
    with pytest.raises(PromptFileError) as raised:
        stage(path, root, uploads, rules)
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


def test_an_unreadable_filepath_is_refused() -> None:
    """As root, no file is unreadable: then the check runs in a child process that has given up
    root (setuid to nobody), over a world-traversable directory, as a service account would."""
    with tempfile.TemporaryDirectory(prefix="unreadable-") as where:
        field, message = _unreadable_file_refusal(LocalPath(where))
    assert (field, "readable" in message) == ("prompt_file_path.value", True), message


def _unreadable_file_refusal(base: LocalPath) -> tuple[str, str]:
    base.chmod(0o755)
    root = (base / "allowed").resolve()
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # mkdir's mode goes through the umask
    prompts = root / "prompts.jsonl"
    prompts.write_text(JSONL)
    prompts.chmod(0)
    try:
        return _refusal_as_unprivileged(prompts, root, base / "uploads")
    finally:
        prompts.chmod(0o644)


def _refusal_as_unprivileged(prompts: LocalPath, root: LocalPath, uploads: LocalPath) -> tuple[str, str]:
    """The refusal's field and message, from a process that cannot read past file permissions."""
    if os.geteuid() != 0:
        error = refused(Path(type=PathType.filepath, value=str(prompts)), root, uploads)
        return error.field, error.message
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, then the check; it reports through the pipe, whatever happens
        answer = "|not refused"
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            stage(Path(type=PathType.filepath, value=str(prompts)), root, uploads)
        except PromptFileError as exc:
            answer = f"{exc.field}|{exc.message}"
        except BaseException as exc:
            answer = f"|{exc!r}"
        finally:
            os.write(writer, answer.encode())
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as result:
        answer = result.read()
    os.waitpid(pid, 0)
    field, _, message = answer.partition("|")
    return field, message


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


# ---- the URI allowlist and private addresses --------------------------------------------------


@pytest.mark.parametrize("uri", ["data:,[]", "memory://p.jsonl", "HTTPX://x/p", "file2:///p"])
def test_a_scheme_off_the_allowlist_is_refused_naming_the_setting(
    uri: str, root: LocalPath, uploads: LocalPath
) -> None:
    error = refused(Path(type=PathType.uri, value=uri), root, uploads)
    assert (error.field, error.code) == ("prompt_file_path.value", "scheme_not_allowed")
    assert "BATCHINFER_ALLOWED_URI_SCHEMES" in error.message


def test_the_allowlist_is_configurable(root: LocalPath, uploads: LocalPath, prompts: LocalPath) -> None:
    only_s3 = SourceRules(schemes=frozenset({"s3"}))
    assert stage(Path(type=PathType.uri, value="s3://b/k"), root, uploads, only_s3)
    error = refused(Path(type=PathType.uri, value=prompts.as_uri()), root, uploads, only_s3)
    assert error.code == "scheme_not_allowed"


def test_a_file_uri_naming_another_host_is_refused(root: LocalPath, uploads: LocalPath) -> None:
    error = refused(Path(type=PathType.uri, value="file://fileserver/share/p.jsonl"), root, uploads)
    assert error.field == "prompt_file_path.value"


PRIVATE_URIS = {
    "loopback": "http://127.0.0.1:8000/p.jsonl",
    "loopback, another /8 address": "http://127.1.2.3/p.jsonl",
    "loopback by name": "http://localhost/p.jsonl",
    "loopback as one decimal number": "http://2130706433/p.jsonl",
    "IPv6 loopback": "http://[::1]:8000/p.jsonl",
    "IPv4-mapped IPv6 loopback": "http://[::ffff:127.0.0.1]/p.jsonl",
    "private 10/8": "https://10.0.0.1/p.jsonl",
    "private 192.168/16": "https://192.168.1.10/p.jsonl",
    "private 172.16/12": "http://172.20.0.1/p.jsonl",
    "link-local (cloud metadata)": "http://169.254.169.254/latest/meta-data/",
    "unspecified": "http://0.0.0.0/p.jsonl",
    "carrier-grade NAT": "http://100.64.0.1/p.jsonl",
    "multicast": "http://224.0.0.1/p.jsonl",
    "IPv6 unique local": "http://[fd00::1]/p.jsonl",
}


@pytest.mark.parametrize("case", list(PRIVATE_URIS))
def test_an_http_uri_to_a_non_public_address_is_refused_unless_allowed(
    case: str, root: LocalPath, uploads: LocalPath
) -> None:
    path = Path(type=PathType.uri, value=PRIVATE_URIS[case])
    error = refused(path, root, uploads)
    assert (error.field, error.code) == ("prompt_file_path.value", "private_address")
    assert "BATCHINFER_ALLOW_PRIVATE_URIS" in error.message
    assert stage(path, root, uploads, SourceRules(allow_private=True)) == path


@pytest.mark.parametrize("uri", ["http://93.184.215.14/p.jsonl", "https://[2606:4700::1111]/p.jsonl"])
def test_an_http_uri_to_a_public_address_is_accepted(uri: str, root: LocalPath, uploads: LocalPath) -> None:
    path = Path(type=PathType.uri, value=uri)
    assert stage(path, root, uploads) == path


@pytest.mark.parametrize("uri", ["http://:80/p.jsonl", "http://93.184.215.14:99999/p.jsonl"])
def test_an_http_uri_without_a_host_or_with_a_bad_port_is_refused(
    uri: str, root: LocalPath, uploads: LocalPath
) -> None:
    assert refused(Path(type=PathType.uri, value=uri), root, uploads).field == "prompt_file_path.value"


def test_display_uri_drops_credentials_and_query() -> None:
    shown = display_uri("https://user:pa55@host.example/p.jsonl?X-Amz-Signature=abc#frag")
    assert shown == "https://host.example/p.jsonl"


# ---- the size limit and compressed content ----------------------------------------------------


def test_a_local_file_over_the_size_limit_is_a_413_naming_the_setting(
    prompts: LocalPath, root: LocalPath, uploads: LocalPath
) -> None:
    small = SourceRules(max_bytes=len(JSONL) - 1)
    for path in (
        Path(type=PathType.filepath, value=str(prompts)),
        Path(type=PathType.uri, value=prompts.as_uri()),
    ):
        error = refused(path, root, uploads, small)
        assert isinstance(error, FileTooLargeError)
        assert (error.http_status, error.code, error.field) == (
            413,
            "file_too_large",
            "prompt_file_path.value",
        )
        assert "BATCHINFER_MAX_PROMPT_FILE_BYTES" in error.message
    assert stage(
        Path(type=PathType.filepath, value=str(prompts)), root, uploads, SourceRules(max_bytes=len(JSONL))
    )


@pytest.mark.parametrize("encoding", ["text", "base64"])
def test_raw_bytes_over_the_size_limit_are_a_413_and_not_staged(
    encoding: str, root: LocalPath, uploads: LocalPath
) -> None:
    value = JSONL * 10 if encoding == "text" else base64.b64encode((JSONL * 10).encode()).decode()
    error = refused(
        Path(type=PathType.raw_bytes, value=value), root, uploads, SourceRules(max_bytes=len(JSONL))
    )
    assert isinstance(error, FileTooLargeError)
    assert not uploads.exists()


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(gzip.compress(JSONL.encode())).decode(),
        gzip.compress(JSONL.encode()).decode("latin-1"),  # the bytes pasted in as code points
    ],
    ids=["base64 of gzip", "gzip bytes as code points"],
)
def test_gzip_raw_bytes_are_refused_with_decompress_first(
    value: str, root: LocalPath, uploads: LocalPath
) -> None:
    error = refused(Path(type=PathType.raw_bytes, value=value), root, uploads)
    assert (error.field, error.code) == ("prompt_file_path.value", "compressed_content")
    assert "decompress first" in error.message


# ---- fetch over http ----------------------------------------------------------------------------

Route = tuple[int, dict[str, str], bytes]


@contextmanager
def http_files(routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A loopback server answering GET path -> (status, headers, body); yields its base URL."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            self.reply(status, body, {"Content-Type": "application/octet-stream", **headers})

    with loopback_server(Handler, tls) as base:
        yield base


LOOPBACK_OK = SourceRules(allow_private=True)


def test_fetch_downloads_an_http_file_next_to_the_job(root: LocalPath, tmp_path: LocalPath) -> None:
    staged_input = tmp_path / "job" / "work" / "input.jsonl"
    with http_files({"/p.jsonl": (200, {}, JSONL.encode())}) as base:
        local = fetch(Path(type=PathType.uri, value=f"{base}/p.jsonl"), [root], staged_input, LOOPBACK_OK)
    assert local == staged_input and local.read_text() == JSONL


def test_an_https_file_comes_through_the_environments_proxy_trusting_its_ca(
    root: LocalPath,
    tmp_path: LocalPath,
    network_env: pytest.MonkeyPatch,
    forward_proxy: ForwardProxy,
    private_ca: PrivateCA,
) -> None:
    network_env.setenv("HTTPS_PROXY", forward_proxy.url)
    network_env.setenv("SSL_CERT_FILE", str(private_ca.pem))
    staged_input = tmp_path / "in.jsonl"
    with http_files({"/p.jsonl": (200, {}, JSONL.encode())}, tls=private_ca.server_context) as base:
        fetch(Path(type=PathType.uri, value=f"{base}/p.jsonl"), [root], staged_input, LOOPBACK_OK)
        host = base.removeprefix("https://")
    assert staged_input.read_text() == JSONL
    assert list(forward_proxy.tunnels.elements()) == [host]  # one CONNECT, to the file's server


def test_an_https_file_whose_certificate_is_not_trusted_says_which_variable_trusts_it(
    root: LocalPath, tmp_path: LocalPath, network_env: pytest.MonkeyPatch, private_ca: PrivateCA
) -> None:
    with (
        http_files({"/p.jsonl": (200, {}, JSONL.encode())}, tls=private_ca.server_context) as base,
        pytest.raises(PromptFileError, match=r"certificate is not trusted .*SSL_CERT_FILE") as raised,
    ):
        fetch(Path(type=PathType.uri, value=f"{base}/p.jsonl"), [root], tmp_path / "i", LOOPBACK_OK)
    assert raised.value.field == "prompt_file_path.value"


def test_fetch_follows_a_redirect_between_allowed_hosts(root: LocalPath, tmp_path: LocalPath) -> None:
    staged_input = tmp_path / "in.jsonl"
    routes = {"/old": (302, {"Location": "/new"}, b""), "/new": (200, {}, JSONL.encode())}
    with http_files(routes) as base:
        fetch(Path(type=PathType.uri, value=f"{base}/old"), [root], staged_input, LOOPBACK_OK)
    assert staged_input.read_text() == JSONL


def test_fetch_stops_a_download_past_the_size_limit_and_leaves_no_file(
    root: LocalPath, tmp_path: LocalPath
) -> None:
    staged_input = tmp_path / "work" / "input.jsonl"
    rules = SourceRules(allow_private=True, max_bytes=1000)
    with (
        http_files({"/big": (200, {}, b"x" * 5000)}) as base,
        pytest.raises(FileTooLargeError) as raised,
    ):
        fetch(Path(type=PathType.uri, value=f"{base}/big"), [root], staged_input, rules)
    assert raised.value.code == "file_too_large"
    assert "BATCHINFER_MAX_PROMPT_FILE_BYTES" in raised.value.message
    assert list(staged_input.parent.iterdir()) == []


def test_fetch_of_a_missing_http_file_says_it_could_not_download(
    root: LocalPath, tmp_path: LocalPath
) -> None:
    with http_files({}) as base, pytest.raises(PromptFileError, match="Could not download") as raised:
        missing = Path(type=PathType.uri, value=f"{base}/nope?token=s3cret")
        fetch(missing, [root], tmp_path / "i", LOOPBACK_OK)
    assert "s3cret" not in raised.value.message


def test_fetch_rechecks_private_addresses_at_run_time(root: LocalPath, tmp_path: LocalPath) -> None:
    with (
        http_files({"/p.jsonl": (200, {}, JSONL.encode())}) as base,
        pytest.raises(PromptFileError) as raised,
    ):
        fetch(Path(type=PathType.uri, value=f"{base}/p.jsonl"), [root], tmp_path / "i")
    assert raised.value.code == "private_address"


def test_a_public_url_that_redirects_to_a_private_address_is_refused(
    root: LocalPath, tmp_path: LocalPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_resolve = prompt_source._resolve
    public_port = 0

    # Pretend the first server is on the internet: its port resolves to a public address.
    def resolve(host: str, port: int) -> list[Any]:
        if port == public_port:
            return [ipaddress.ip_address("93.184.215.14")]
        return real_resolve(host, port)

    monkeypatch.setattr(prompt_source, "_resolve", resolve)
    with (
        http_files({"/p.jsonl": (200, {}, b"internal secrets\n")}) as internal,
        http_files({"/go": (302, {"Location": f"{internal}/p.jsonl"}, b"")}) as public,
        pytest.raises(PromptFileError) as raised,
    ):
        public_port = int(public.rsplit(":", 1)[1])
        fetch(Path(type=PathType.uri, value=f"{public}/go"), [root], tmp_path / "i")
    assert raised.value.code == "private_address"
    assert not (tmp_path / "i").exists()
