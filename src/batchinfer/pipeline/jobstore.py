"""Where a job's files are kept when they must outlive the machine that ran it: a folder on any store
fsspec reaches (``s3://``, ``gs://``, ``az://``, ``file://``, a network path), named by a URL.

The machine running a job works in a local folder (its ``JobLayout``) and publishes what others
need to the store as it goes: the line errors once validated, each chunk's result when it ends, the
progress file, and the three outputs at the end. Each file goes up whole, or not at all: one PUT
on an object store, a temp name renamed into place on a file system. Any machine that can read the
store then answers for the job: its status, its results so far, a resume or a retry elsewhere.
Pure: no Prefect.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from batchinfer.errors import RequestError
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, atomic_write, read_progress


def is_url(location: str) -> bool:
    """A location given as a URL (``file://``, ``s3://`` ...) rather than a local path."""
    return "://" in location


def check_url(url: str, field: str) -> None:
    """A 4xx naming ``field`` for a URL no installed fsspec file system can write."""
    try:
        url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise RequestError(
            f"{field} {url!r} names a store this installation cannot reach ({exc}). Install its "
            "fsspec file system (s3fs for s3://, gcsfs for gs://, adlfs for az://), or give a local path.",
            field=field,
        ) from None


@dataclass(frozen=True)
class JobStore:
    """A job's folder on a store. Its files have the relative names they have in a ``JobLayout``
    (``success.jsonl``, ``work/progress.json`` ...: ``JobLayout.name_of``)."""

    url: str

    def url_of(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def _key(self, name: str) -> tuple[AbstractFileSystem, str]:
        fs, root = url_to_fs(self.url)
        key = f"{str(root).rstrip('/')}/{name}"
        fs.invalidate_cache(key)  # another machine may have written it since this one last looked
        return fs, key

    def publish(self, local: Path, name: str) -> None:
        """Put the local file ``local`` on the store as ``name``, whole."""
        fs, key = self._key(name)
        put_whole(fs, local, key)

    def fetch(self, name: str, local: Path) -> bool:
        """Copy the store's ``name`` to ``local``, renamed into place whole; False if it has none."""
        fs, key = self._key(name)
        if not fs.exists(key):
            return False
        with fs.open(key, "rb") as source, atomic_write(local, "wb") as target:
            shutil.copyfileobj(source, target)
        return True

    def exists(self, name: str) -> bool:
        fs, key = self._key(name)
        return bool(fs.exists(key))

    def read(self, name: str) -> bytes:
        """The store's ``name`` whole, in one GET (``FileNotFoundError`` if it has none). For a
        file rewritten while a job runs (its progress): a reader through ``open`` that the rewrite
        overtakes fails (s3fs pins what it reads to the object it first saw), one GET cannot."""
        fs, key = self._key(name)
        return bytes(fs.cat_file(key))

    @contextlib.contextmanager
    def open(self, name: str, mode: str = "r") -> Iterator[IO[Any]]:
        """The store's ``name``, to read (``FileNotFoundError`` if it has none)."""
        fs, key = self._key(name)
        encoding = None if "b" in mode else "utf-8"
        with fs.open(key, mode, encoding=encoding) as handle:
            yield handle

    def remove(self, name: str) -> None:
        fs, key = self._key(name)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(key)

    def names(self, prefix: str) -> list[str]:
        """The names of the files under the folder ``prefix`` (``work/chunks``), none if it has none."""
        fs, key = self._key(prefix)
        try:
            found = fs.ls(key, detail=False)
        except FileNotFoundError:
            return []
        return [f"{prefix}/{str(path).rsplit('/', 1)[-1]}" for path in found]


def put_whole(fs: AbstractFileSystem, local: Path, key: str) -> None:
    """Copy ``local`` to ``key`` on ``fs`` so that it appears whole or not at all."""
    if isinstance(fs, LocalFileSystem):
        # A file system: write a temp name beside it, then rename it into place.
        parent, name = key.rsplit("/", 1)
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            fs.put_file(str(local), tmp)
            fs.mv(tmp, key)
        except BaseException:
            if fs.exists(tmp):
                fs.rm(tmp)
            raise
    else:
        # Object stores (s3, gcs, az) have no rename, but a single PUT is visible whole or not at all.
        fs.put_file(str(local), key)


def upload(local: Path, url: str) -> None:
    """Copy ``local`` to ``url``, whole or not at all."""
    fs, key = url_to_fs(url)
    put_whole(fs, local, key)


def download(url: str, local: Path) -> None:
    """Copy ``url`` to ``local``, renamed into place whole (a reader never sees half a file)."""
    fs, key = url_to_fs(url)
    with fs.open(key, "rb") as source, atomic_write(local, "wb") as target:
        shutil.copyfileobj(source, target)


@dataclass(frozen=True)
class JobPlace:
    """Where a job's files are, for whoever reads or writes them: its folder on the disk of the
    machine at hand (``layout``), and its folder on a store (``store``) when it has one. With a
    store, the store is the one source of truth; the layout is a working copy."""

    layout: JobLayout
    store: JobStore | None = None

    @property
    def root(self) -> str:
        """What the job's files are under, as a user would name it: the store's URL, or the folder."""
        return self.store.url if self.store is not None else str(self.layout.root)

    def read_progress(self) -> JobProgress | None:
        if self.store is None:
            return read_progress(self.layout)
        try:
            return JobProgress.model_validate_json(self.store.read(self.layout.name_of(self.layout.progress)))
        except FileNotFoundError:
            return None

    def present(self, paths: list[Path]) -> set[Path]:
        """Which of the job's ``paths`` exist (on its store, when it has one): one listing a folder."""
        if self.store is None:
            return {path for path in paths if path.exists()}
        folders = {self.layout.name_of(path.parent) for path in paths}
        names = {name for folder in folders for name in self.store.names(folder)}
        return {path for path in paths if self.layout.name_of(path) in names}

    def path_value(self, path: Path) -> tuple[str, str]:
        """(kind, value) naming one of the job's files for a reader anywhere: ("uri", its store URL)
        or ("filepath", its local path)."""
        if self.store is None:
            return "filepath", str(path)
        return "uri", self.store.url_of(self.layout.name_of(path))

    @contextlib.contextmanager
    def local_copies(self, paths: list[Path]) -> Iterator[JobLayout]:
        """A layout holding the job's ``paths`` (those that exist), to read with the code that reads
        a local job: its own layout, or, for a job on a store, a temp folder with copies (gone after:
        nothing of the job is left on this machine's disk)."""
        if self.store is None:
            yield self.layout
            return
        with tempfile.TemporaryDirectory(prefix="batchinfer-job-") as tmp:
            copy = JobLayout(Path(tmp))
            for path in paths:
                name = self.layout.name_of(path)
                self.store.fetch(name, copy.root / name)
            yield copy


def job_place(job_id: str, parameters: dict[str, Any], jobs_dir: Path) -> JobPlace:
    """Where a job's files are: its ``output_dir`` (a folder, or a URL: then the store, with a working
    copy under ``jobs_dir``), else ``<output_url>/<job_id>`` on a store, else ``<jobs_dir>/<job_id>``."""
    output_dir, output_url = parameters.get("output_dir"), parameters.get("output_url")
    working = JobLayout(jobs_dir / job_id)
    if output_dir and not is_url(output_dir):
        return JobPlace(JobLayout(Path(output_dir)))
    if output_dir:
        return JobPlace(working, JobStore(output_dir))
    if output_url:
        return JobPlace(working, JobStore(f"{output_url.rstrip('/')}/{job_id}"))
    return JobPlace(working)
