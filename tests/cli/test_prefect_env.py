"""Prefect's environment, derived from what the user set: their PREFECT_* variables, their active
Prefect profile, and batchinfer's defaults only for the rest, with the folders they need created."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchinfer.cli.prefect_env import apply_prefect_env, sqlite_folder, user_prefect_settings
from batchinfer.errors import ConfigError
from batchinfer.settings import Settings

DB = "PREFECT_API_DATABASE_CONNECTION_URL"


def _profiles(path: Path, active: str, **settings: str) -> Path:
    lines = [f'active = "{active}"', f"[profiles.{active}]", *(f'{k} = "{v}"' for k, v in settings.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _applied(tmp_path: Path, **environ: str) -> dict[str, str]:
    env = {"HOME": str(tmp_path / "user"), **environ}
    apply_prefect_env(Settings(home=tmp_path / "bi-home"), env)
    return env


@pytest.fixture(autouse=True)
def _user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Path.home() is where Prefect looks for ~/.prefect/profiles.toml: never the real one here.
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def test_with_nothing_set_prefect_lives_in_the_data_dir_and_its_folder_exists(tmp_path: Path) -> None:
    env = _applied(tmp_path)
    home = tmp_path / "bi-home" / "prefect"
    assert env["PREFECT_HOME"] == str(home)
    assert env[DB] == f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    assert home.is_dir()


def test_a_users_prefect_home_is_kept_and_the_database_goes_inside_it(tmp_path: Path) -> None:
    theirs = tmp_path / "somewhere" / "not-yet"
    env = _applied(tmp_path, PREFECT_HOME=str(theirs))
    assert env["PREFECT_HOME"] == str(theirs)
    assert env[DB] == f"sqlite+aiosqlite:///{theirs / 'prefect.db'}"
    assert theirs.is_dir(), "the database's folder must exist, or Prefect cannot open it"
    assert not (tmp_path / "bi-home" / "prefect").exists()


@pytest.mark.parametrize(
    "name", ["PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"]
)
def test_a_users_database_url_is_kept_under_either_name_and_its_folder_created(
    tmp_path: Path, name: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'deep' / 'p.db'}"
    env = _applied(tmp_path, **{name: url})
    assert env[name] == url
    assert (DB in env) == (name == DB), "no second, disagreeing database URL"
    assert (tmp_path / "db" / "deep").is_dir()


def test_the_active_profiles_api_url_is_used_and_its_file_stays_the_one_prefect_reads(tmp_path: Path) -> None:
    profiles = _profiles(
        tmp_path / "user" / ".prefect" / "profiles.toml", "team", PREFECT_API_URL="http://p:1/api"
    )
    env = _applied(tmp_path)
    assert env["PREFECT_API_URL"] == "http://p:1/api"
    # batchinfer moved PREFECT_HOME, which would move where Prefect looks for profiles: pinned.
    assert env["PREFECT_PROFILES_PATH"] == str(profiles)


def test_a_profile_setting_counts_as_set_by_the_user(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://u@127.0.0.1/{tmp_path.name}"
    _profiles(tmp_path / "user" / ".prefect" / "profiles.toml", "pg", PREFECT_API_DATABASE_CONNECTION_URL=url)
    env = _applied(tmp_path)
    assert DB not in env, "an environment variable would override the profile's database"


def test_prefect_profile_and_profiles_path_choose_the_profile_as_prefect_does(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(
        'active = "a"\n[profiles.a]\nPREFECT_API_URL = "http://a/api"\n[profiles.b]\nPREFECT_API_URL = "http://b/api"\n',
        encoding="utf-8",
    )
    chosen = user_prefect_settings({"PREFECT_PROFILES_PATH": str(path), "PREFECT_PROFILE": "b"})
    assert chosen["PREFECT_API_URL"] == "http://b/api"
    assert (
        user_prefect_settings({"PREFECT_PROFILES_PATH": str(path), "PREFECT_API_URL": "http://env/api"})[
            "PREFECT_API_URL"
        ]
        == "http://env/api"
    ), "the environment wins over the profile, as in Prefect"


def test_a_data_dir_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="BATCHINFER_HOME"):
        apply_prefect_env(Settings(home=blocker / "home"), {})


def test_an_unreadable_profiles_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "profiles.toml"
    bad.write_text("active = [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="PREFECT_PROFILES_PATH"):
        user_prefect_settings({"PREFECT_PROFILES_PATH": str(bad)})


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
