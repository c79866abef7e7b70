"""Prefect's settings as Prefect itself reads them, and batchinfer's defaults for the rest.

Prefect reads its settings from the environment, ``.env`` and ``prefect.toml`` in the working
directory, ``[tool.prefect]`` in ``pyproject.toml`` and the active profile. batchinfer never reads
those files: it asks Prefect (``prefect.settings.Settings``) once which settings any of them sets,
and puts its own defaults (``Settings.prefect_env``) into this process's environment only for the
rest, so that every Prefect it starts or talks to, children included, sees the same settings. It
also creates the folders a local database needs: one whose folder does not exist makes Prefect's
server fail to start ("unable to open database file").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from batchinfer.errors import ConfigError
from batchinfer.settings import PREFECT_DATABASE_URL, Settings, env_name

# Where Prefect looks, in its order (the first that sets a value wins).
PREFECT_SOURCES = "the environment, .env, prefect.toml, pyproject.toml's [tool.prefect], the profile"


@dataclass(frozen=True)
class PrefectSetup:
    """What Prefect's settings decide for a command."""

    api_url: str | None  # from any of Prefect's sources; None: batchinfer starts a server of its own
    home: Path  # the Prefect home that applies: the local database goes inside it
    profile: str  # the active Prefect profile

    def why_a_server_of_our_own(self) -> str:
        return f"Prefect has no API URL (none in {PREFECT_SOURCES} {self.profile!r})"


def apply_prefect_env(settings: Settings) -> PrefectSetup:
    """Ask Prefect what is set, put batchinfer's defaults for the rest into ``os.environ`` (children
    inherit them), create the folders they need, and have Prefect in this process use them too."""
    # Before Prefect is first imported: its import may show a telemetry notice.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    user, profiles_path = _what_prefect_reads()
    defaults = settings.prefect_env(user)
    if "PREFECT_HOME" in defaults and "PREFECT_PROFILES_PATH" not in user and profiles_path.is_file():
        # Our PREFECT_HOME would move where Prefect looks for the user's profiles: keep their file.
        defaults["PREFECT_PROFILES_PATH"] = str(profiles_path)
    if url := user.get("PREFECT_API_URL"):
        # Exported, so that a child started in another working directory uses the same server.
        defaults["PREFECT_API_URL"] = url
    _create(settings.home, env_name("home"))
    home = settings.prefect_home(user)
    _create(home, "PREFECT_HOME")
    if (folder := sqlite_folder({**user, **defaults}.get(PREFECT_DATABASE_URL, ""))) is not None:
        _create(folder, PREFECT_DATABASE_URL)
    os.environ.update(defaults)
    return PrefectSetup(api_url=url or None, home=home, profile=_refresh())


def use_api_url(url: str) -> None:
    """From now on, this process and the children it starts use the Prefect API at ``url``."""
    os.environ["PREFECT_API_URL"] = url
    _refresh()


def _what_prefect_reads() -> tuple[dict[str, str], Path]:
    """The settings any of Prefect's sources sets (as environment variable names), and its
    profiles file, as Prefect reads them now."""
    try:
        from prefect.settings import Settings as PrefectSettings

        current = PrefectSettings()
    except Exception as exc:  # a prefect.toml that is not TOML, a value of the wrong type, ...
        message = " ".join(str(exc).split())
        raise ConfigError(f"Prefect cannot read its settings ({message}); fix {PREFECT_SOURCES}.") from None
    return current.to_environment_variables(exclude_unset=True), Path(current.profiles_path or "")


def _refresh() -> str:
    """Have Prefect in this process read the environment again (it read it when first imported);
    the active profile's name."""
    from prefect.context import get_settings_context, refresh_global_settings_context

    refresh_global_settings_context()
    return str(get_settings_context().profile.name)


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
