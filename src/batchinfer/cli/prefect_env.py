"""The environment of every Prefect that batchinfer starts or talks to, derived from what the user set.

Prefect reads its settings from the environment, then from the active profile of its profiles file
(``PREFECT_PROFILES_PATH``, else ``$PREFECT_HOME/profiles.toml``, else ``~/.prefect/profiles.toml``).
batchinfer adds defaults (``Settings.prefect_env``) only for what neither sets, derives the database
location from the Prefect home that applies, and creates the folders that location needs: a database
whose folder does not exist makes Prefect's server fail to start ("unable to open database file").

Prefect is imported nowhere here: it reads its settings once, when first imported, so this runs first.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from batchinfer.errors import ConfigError
from batchinfer.settings import PREFECT_DATABASE_URL_NAMES, Settings, env_name


def profiles_path(environ: Mapping[str, str]) -> Path:
    """Where Prefect looks for the user's profiles, as Prefect decides it."""
    if explicit := environ.get("PREFECT_PROFILES_PATH"):
        return Path(explicit).expanduser()
    home = environ.get("PREFECT_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".prefect") / "profiles.toml"


def active_profile(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of the user's active Prefect profile (``PREFECT_PROFILE``, else the file's
    ``active``); empty when there is no profiles file."""
    path = profiles_path(environ)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"Cannot read the Prefect profiles file {path} ({exc}); fix it, or point "
            "PREFECT_PROFILES_PATH at another one."
        ) from None
    name = environ.get("PREFECT_PROFILE") or document.get("active")
    profiles = document.get("profiles")
    values = profiles.get(name) if isinstance(profiles, dict) and name else None
    if not isinstance(values, dict):
        return {}
    return {str(key).upper(): str(value) for key, value in values.items() if value not in ("", None)}


def user_prefect_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """What the user set for Prefect: their ``PREFECT_*`` variables over their active profile."""
    variables = {name: value for name, value in environ.items() if name.startswith("PREFECT_") and value}
    return {**active_profile(environ), **variables}


def apply_prefect_env(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Put Prefect's defaults into ``environ`` (this process's, so children inherit them) and create
    the data dir, the Prefect home and the database's folder."""
    user = user_prefect_settings(environ)
    defaults = settings.prefect_env(user)
    user_profiles = profiles_path(environ)
    if "PREFECT_HOME" in defaults and user_profiles.is_file() and "PREFECT_PROFILES_PATH" not in environ:
        # Our PREFECT_HOME would move where Prefect looks for profiles: keep the user's.
        defaults["PREFECT_PROFILES_PATH"] = str(user_profiles)
    if user.get("PREFECT_API_URL") and not environ.get("PREFECT_API_URL"):
        # A profile's server: exported, so that every command sees it where it looks (the environment).
        defaults["PREFECT_API_URL"] = user["PREFECT_API_URL"]
    _create(settings.home, env_name("home"))
    _create(settings.prefect_home(user), "PREFECT_HOME")
    merged = {**user, **defaults}
    database = next((merged[name] for name in PREFECT_DATABASE_URL_NAMES if merged.get(name)), "")
    if (folder := sqlite_folder(database)) is not None:
        _create(folder, "the database URL (PREFECT_API_DATABASE_CONNECTION_URL)")
    environ.update(defaults)


def sqlite_folder(url: str) -> Path | None:
    """The folder of a SQLite database URL's file (None for another database, or in memory)."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.startswith("sqlite"):
        return None
    path = rest.split("?", 1)[0]
    return Path(path).expanduser().parent if path and path != ":memory:" else None


def _create(folder: Path, setting: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the folder {folder} ({exc.strerror or exc}); set {setting} to a folder "
            "you can write to."
        ) from None
