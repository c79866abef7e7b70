"""``batchinfer keys``: a new key printed once, alone on the last line; lists that never show one;
revoke and rotate; mistakes as one line and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchinfer.cli.main import main
from batchinfer.control.keys import KEY_PREFIX, KeyStore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BATCHINFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_key_alone_on_its_last_line_and_stores_only_its_hash(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "create", "alice", "--max-running-jobs", "2")
    key = out.splitlines()[-1]
    assert code == 0 and key.startswith(KEY_PREFIX) and len(key) > 40 and " " not in key
    assert "max_running_jobs 2" in out
    record = KeyStore(home / "keys.sqlite3").authenticate(key)
    assert record is not None and record.name == "alice" and record.quota.max_running_jobs == 2
    assert key.encode() not in (home / "keys.sqlite3").read_bytes()


TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z")


def test_list_shows_names_roles_and_the_first_characters_never_a_key(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [
        run(capsys, "create", name, *flags)[1].splitlines()[-1] for name, *flags in (("a",), ("b", "--admin"))
    ]
    run(capsys, "revoke", "a")
    code, out, _ = run(capsys, "list")
    assert code == 0 and all(key not in out for key in keys)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    # Created and revoked: two times (counted as times: a key's first characters may hold a "Z").
    assert keys[0][:12] in rows["a"] and " user " in rows["a"] and len(TIME.findall(rows["a"])) == 2
    assert " admin " in rows["b"] and rows["b"].rstrip().endswith("-")


def test_rotate_gives_a_new_secret_and_refuses_the_old_one(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = run(capsys, "create", "alice")[1].splitlines()[-1]
    code, out, _ = run(capsys, "rotate", "alice")
    new = out.splitlines()[-1]
    store = KeyStore(home / "keys.sqlite3")
    assert code == 0 and new != old and store.authenticate(old) is None
    found = store.authenticate(new)
    assert found is not None and found.name == "alice"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["create", "alice"], "exists"),
        (["revoke", "nobody"], "No key named 'nobody'"),
        (["rotate", "nobody"], "No key named 'nobody'"),
        (["create", "bob", "--max-enqueued-tokens", "0"], "out of range"),
        (["create"], "required"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    run(capsys, "create", "alice")
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exited:  # argparse's own refusals
        code, err = int(exited.code or 0), capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_serve_listens_beyond_loopback_only_once_keys_are_required_and_says_which(home: Path) -> None:
    from batchinfer.cli.keys import access_line
    from batchinfer.cli.serve import bind_refusal
    from batchinfer.settings import Settings

    settings = Settings()
    assert "open" in access_line(settings) and "keys create" in access_line(settings)
    assert bind_refusal("0.0.0.0", settings) is not None
    KeyStore(settings.keys_path).create("alice")
    assert bind_refusal("0.0.0.0", settings) is None
    assert "needs a key" in access_line(settings)


def test_a_key_store_deleted_while_serve_runs_reads_as_no_keys(home: Path) -> None:
    store = KeyStore(home / "keys.sqlite3")
    store.create("alice")
    for path in home.glob("keys.sqlite3*"):
        path.unlink()
    assert not store.any_keys() and store.authenticate("bik_anything") is None
