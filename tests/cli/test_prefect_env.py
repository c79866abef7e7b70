"""Prefect's settings decided by Prefect: whatever the environment, .env, prefect.toml, pyproject.toml
or the active profile sets is kept, batchinfer's defaults fill in only the rest, and the folders they
need are created. Each case runs in a working directory and user home of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchinfer.cli.prefect_env import PrefectSetup, apply_prefect_env, sqlite_folder
from batchinfer.errors import ConfigError
from batchinfer.settings import PREFECT_DATABASE_URL, Settings

URL = "http://prefect.example:4200/api"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path) -> Iterator[None]:
    """No PREFECT_* setting of the test process's, a user home and working directory of the test's;
    afterwards the environment as it was (apply_prefect_env writes to it), read again by Prefect."""
    from prefect.context import refresh_global_settings_context

    saved, cwd = dict(os.environ), Path.cwd()
    for name in [name for name in os.environ if name.startswith("PREFECT_")]:
        del os.environ[name]
    os.environ["HOME"] = str(tmp_path / "user")  # where Prefect's settings look for ~/.prefect
    (tmp_path / "cwd").mkdir()
    os.chdir(tmp_path / "cwd")
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        refresh_global_settings_context()


def _applied(tmp_path: Path) -> PrefectSetup:
    return apply_prefect_env(Settings(home=tmp_path / "bi-home"))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_with_nothing_set_prefect_lives_in_the_data_dir_and_there_is_no_api_url(tmp_path: Path) -> None:
    setup = _applied(tmp_path)
    home = tmp_path / "bi-home" / "prefect"
    assert setup.api_url is None and setup.home == home
    assert os.environ["PREFECT_HOME"] == str(home)
    assert os.environ[PREFECT_DATABASE_URL] == f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    assert home.is_dir()


SOURCES = {
    "the environment": lambda cwd, user: os.environ.__setitem__("PREFECT_API_URL", URL),
    ".env": lambda cwd, user: _write(cwd / ".env", f"PREFECT_API_URL={URL}\n"),
    "prefect.toml": lambda cwd, user: _write(cwd / "prefect.toml", f'[api]\nurl = "{URL}"\n'),
    "pyproject.toml": lambda cwd, user: _write(
        cwd / "pyproject.toml", f'[tool.prefect.api]\nurl = "{URL}"\n'
    ),
    "the active profile": lambda cwd, user: _profile(user / "profiles.toml", "work", PREFECT_API_URL=URL),
}


def _profile(path: Path, name: str, **settings: str) -> Path:
    """A profiles file whose active profile ``name`` sets ``settings``, where PREFECT_PROFILES_PATH
    says (Prefect finds ~/.prefect from the home it was first imported with: not the test's)."""
    lines = [f'active = "{name}"', f"[profiles.{name}]", *(f'{k} = "{v}"' for k, v in settings.items())]
    _write(path, "\n".join(lines) + "\n")
    os.environ["PREFECT_PROFILES_PATH"] = str(path)
    return path


@pytest.mark.parametrize("source", list(SOURCES))
def test_an_api_url_from_any_of_prefects_sources_is_the_server_to_use(tmp_path: Path, source: str) -> None:
    SOURCES[source](tmp_path / "cwd", tmp_path / "user")
    setup = _applied(tmp_path)
    assert setup.api_url == URL
    assert os.environ["PREFECT_API_URL"] == URL, "exported, so that every child uses that server too"


def test_the_environment_wins_over_prefect_toml_as_in_prefect(tmp_path: Path) -> None:
    _write(tmp_path / "cwd" / "prefect.toml", '[api]\nurl = "http://from-toml/api"\n')
    os.environ["PREFECT_API_URL"] = URL
    assert _applied(tmp_path).api_url == URL


def test_a_users_prefect_home_in_prefect_toml_is_kept_and_the_database_goes_inside_it(tmp_path: Path) -> None:
    theirs = tmp_path / "somewhere" / "not-yet"
    _write(tmp_path / "cwd" / "prefect.toml", f'home = "{theirs}"\n')
    setup = _applied(tmp_path)
    assert setup.home == theirs
    assert "PREFECT_HOME" not in os.environ, "an environment variable would hide prefect.toml's home"
    assert os.environ[PREFECT_DATABASE_URL] == f"sqlite+aiosqlite:///{theirs / 'prefect.db'}"
    assert theirs.is_dir(), "the database's folder must exist, or Prefect cannot open it"
    assert not (tmp_path / "bi-home" / "prefect").exists()


@pytest.mark.parametrize("name", ["PREFECT_API_DATABASE_CONNECTION_URL", PREFECT_DATABASE_URL])
def test_a_users_database_url_is_kept_under_either_name_and_its_folder_created(
    tmp_path: Path, name: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'deep' / 'p.db'}"
    os.environ[name] = url
    _applied(tmp_path)
    assert os.environ[name] == url
    assert (PREFECT_DATABASE_URL in os.environ) == (name == PREFECT_DATABASE_URL), "no second database URL"
    assert (tmp_path / "db" / "deep").is_dir()


def test_a_profile_setting_counts_as_set(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://u@127.0.0.1/{tmp_path.name}"
    _profile(tmp_path / "profiles.toml", "pg", PREFECT_API_DATABASE_CONNECTION_URL=url)
    _applied(tmp_path)
    assert PREFECT_DATABASE_URL not in os.environ, "an environment variable would override the profile's"


def test_moving_prefect_home_keeps_the_users_profiles_file_in_the_home_they_had(tmp_path: Path) -> None:
    # In a process of its own, whose user home holds ~/.prefect/profiles.toml when Prefect is imported.
    profiles = tmp_path / "user" / ".prefect" / "profiles.toml"
    _write(profiles, f'active = "work"\n[profiles.work]\nPREFECT_API_URL = "{URL}"\n')
    script = (
        "import os; from batchinfer.cli.prefect_env import apply_prefect_env; "
        "from batchinfer.settings import Settings; "
        f"s = apply_prefect_env(Settings(home={str(tmp_path / 'bi')!r})); "
        "print(s.api_url, s.profile, os.environ['PREFECT_HOME'], os.environ['PREFECT_PROFILES_PATH'])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [URL, "work", str(tmp_path / "bi" / "prefect"), str(profiles)]


def test_a_prefect_toml_that_prefect_cannot_read_is_one_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "cwd" / "prefect.toml", "[api\nurl = 3\n")
    with pytest.raises(ConfigError, match=r"Prefect cannot read its settings \(.*prefect\.toml") as raised:
        _applied(tmp_path)
    assert "\n" not in raised.value.message


def test_a_data_dir_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="BATCHINFER_HOME"):
        apply_prefect_env(Settings(home=blocker / "home"))


@pytest.mark.parametrize(
    ("url", "folder"),
    [
        ("sqlite+aiosqlite:////data/p/prefect.db", Path("/data/p")),
        ("sqlite:///relative.db", Path(".")),
        ("sqlite+aiosqlite:///:memory:", None),
        ("postgresql+asyncpg://u:p@db/prefect", None),
    ],
)
def test_the_folder_of_a_sqlite_url_is_found(url: str, folder: Path | None) -> None:
    assert sqlite_folder(url) == folder
