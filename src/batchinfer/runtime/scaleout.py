"""Scale-out of one job's chunk tasks on a Dask cluster (``BATCHINFER_DASK_ADDRESS``).

Dask workers on other machines cannot see the job's directory, so the chunk files travel through
shared storage (``BATCHINFER_SHARED_STORAGE``, an fsspec URL):

1. the flow copies a chunk's input to ``<shared>/<job_id>/chunks/input-NNNNN.jsonl`` and submits
   ``infer_chunk`` with URLs for its input and result, through prefect-dask's ``DaskTaskRunner``;
2. on the worker, ``run_chunk_at`` stages the input into a local temp dir, runs the unchanged
   ``run_chunk`` there (so a result that already exists is reused, as on threads), and uploads the
   result whole;
3. when the flow takes the chunk's counts (``StagedFuture.result``), it first copies the result back
   to the path in the job dir that the threads path writes, so ``gather`` never knows the difference.

A job's stop (a cancel, its completion window, its deadline, stopping itself on failures no retry
fixes) lives in the job's process (``runtime.cancellation``); for the chunks already on workers it
crosses the wire as a marker, ``<shared>/<job_id>/stop``, that the flow writes the moment the job
stops and each worker's chunk looks for at most every ``STOP_POLL_S``: they stop sending within
seconds and keep what they finished, as chunks on threads do. A worker that dies mid-chunk costs
that chunk only: Dask runs it again on another worker, which finds no result and runs it whole.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fsspec.core import url_to_fs

from batchinfer.engines.base import Engine, StopFlag
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobError
from batchinfer.pipeline.chunk_run import ChunkCounts, ChunkFiles, run_chunk
from batchinfer.pipeline.jobstore import download, is_url, upload
from batchinfer.runtime.cancellation import stop_signal
from batchinfer.runtime.executors import ChunkWork
from batchinfer.settings import Settings, env_name

if TYPE_CHECKING:
    from prefect import Task
    from prefect.futures import PrefectFuture
    from prefect_dask import DaskTaskRunner

SCALEOUT_CODE = ErrorCode.scaleout_error
STOP_POLL_S = 0.5  # how often a chunk on a worker looks for its job's stop marker


# --- on the worker ------------------------------------------------------------------------------


def run_chunk_at(work: ChunkWork, engine: Engine, stop: StopFlag | None = None) -> ChunkCounts:
    """``run_chunk`` for a chunk whose files are local paths or URLs on shared storage."""
    cache = None if work.cache is None else work.cache.open()
    if not is_url(work.input_path) and not is_url(work.result_path):
        files = ChunkFiles(work.index, Path(work.input_path), Path(work.result_path))
        return run_chunk(files, engine, stop, work.max_in_flight, cache)
    if work.stop_url is not None:
        stop = SharedStop(work.stop_url, stop)
    with tempfile.TemporaryDirectory(prefix="batchinfer-chunk-") as tmp:
        local = ChunkFiles(work.index, Path(tmp) / "input.jsonl", Path(tmp) / "result.jsonl")
        download(work.input_path, local.input_path)
        if _exists(work.result_path):  # an earlier run's result: run_chunk reuses or completes it
            download(work.result_path, local.result_path)
        counts = run_chunk(local, engine, stop, work.max_in_flight, cache)
        if not counts.reused:  # reused: the file on shared storage is already this result
            upload(local.result_path, work.result_path)
        return counts


def _exists(url: str) -> bool:
    fs, key = url_to_fs(url)
    fs.invalidate_cache(key)
    return bool(fs.exists(key))


class SharedStop:
    """A chunk's stop flag on a worker: its own process's, or its job's stop marker on shared storage
    (looked for at most every ``STOP_POLL_S``; once seen, set for good)."""

    def __init__(self, marker_url: str, local: StopFlag | None = None) -> None:
        self.marker_url = marker_url
        self.local = local
        self._seen = False
        self._next_look = 0.0

    def is_set(self) -> bool:
        if self._seen or (self.local is not None and self.local.is_set()):
            return True
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + STOP_POLL_S
            self._seen = _exists(self.marker_url)
        return self._seen


# --- in the flow --------------------------------------------------------------------------------


class StagedFuture:
    """A chunk's future on Dask. ``result()`` copies the chunk's result from shared storage to its
    path in the job dir before handing back the counts: the window (``deadline.windowed``) calls it
    in the flow's thread, so the result is in place before the chunk counts as done."""

    def __init__(self, inner: PrefectFuture[ChunkCounts], result_url: str, local_result: Path) -> None:
        self._inner = inner
        self._result_url = result_url
        self._local_result = local_result

    def add_done_callback(self, fn: Callable[[Any], None], /) -> None:
        # Dask calls back from its own thread; the window only puts the future on a queue.
        self._inner.add_done_callback(lambda _inner: fn(self))

    def result(self) -> ChunkCounts:
        counts = self._inner.result()
        download(self._result_url, self._local_result)
        return counts


class DaskChunks:
    """Runs a job's chunk tasks on the Dask cluster at ``address``, their files under
    ``<shared_storage>/<job_id>/chunks/``. A context manager: it holds the cluster connection
    (a ``DaskTaskRunner``) for as long as the chunk window runs."""

    def __init__(
        self, address: str, shared_storage: str, job_id: str, task: Task[[ChunkWork], ChunkCounts]
    ) -> None:
        self.address = address
        self._task = task
        self.job_id = job_id
        self.chunks_url = f"{shared_storage.rstrip('/')}/{job_id}/chunks"
        self.stop_url = f"{shared_storage.rstrip('/')}/{job_id}/stop"
        self._runner: DaskTaskRunner | None = None
        self._done = threading.Event()

    def url(self, local: str | Path) -> str:
        """Where the job-dir file ``local`` lives on shared storage: the same name, so the cache
        key in a result's name keeps a result from another model or options from being reused."""
        return f"{self.chunks_url}/{Path(local).name}"

    def __enter__(self) -> DaskChunks:
        from prefect_dask import DaskTaskRunner  # only jobs that scale out need prefect-dask

        runner = DaskTaskRunner(address=self.address)
        runner.__enter__()
        try:
            runner.client  # noqa: B018 - connect now, so an unreachable cluster fails the job clearly
        except Exception as exc:
            runner.__exit__(type(exc), exc, exc.__traceback__)
            raise JobError(
                f"Cannot reach the Dask scheduler at {self.address} ({env_name('dask_address')}): "
                f"{exc}. Start it (`dask scheduler`) or unset {env_name('dask_address')} to run "
                "chunks on threads of the job's process.",
                code=SCALEOUT_CODE,
            ) from exc
        self._runner = runner
        self._raise_stop_on_workers()
        return self

    def _raise_stop_on_workers(self) -> None:
        """The marker goes up the moment the job stops (a thread waits for it); a marker of an
        earlier run of the job is taken down first, so that a resume runs."""
        with contextlib.suppress(FileNotFoundError):
            fs, key = url_to_fs(self.stop_url)
            fs.rm(key)
        stop = stop_signal(self.job_id)

        def watch() -> None:
            while not self._done.is_set():
                if stop.wait(timeout=0.2):
                    fs, key = url_to_fs(self.stop_url)
                    fs.pipe_file(key, (stop.reason or "stopped").encode())
                    return

        threading.Thread(target=watch, name=f"stop-marker-{self.job_id}", daemon=True).start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._runner is not None:
            self._runner.__exit__(exc_type, exc, tb)
            self._runner = None

    def submit(self, work: ChunkWork) -> StagedFuture:
        """Stage the chunk's files on shared storage and submit its task to the cluster."""
        if self._runner is None:
            raise RuntimeError("DaskChunks.submit outside its `with` block")
        staged = work.at(self.url(work.input_path), self.url(work.result_path), self.stop_url)
        upload(Path(work.input_path), staged.input_path)
        _mirror_result(Path(work.result_path), staged.result_path)
        future = self._runner.submit(self._task, parameters={"work": staged})
        return StagedFuture(future, staged.result_path, Path(work.result_path))


def _mirror_result(local: Path, url: str) -> None:
    """Make the shared copy of a chunk's result what the job dir holds, the one source of truth.

    A local result (from an earlier run, on threads or cancelled) goes up, so the worker reuses it or
    re-runs only its cancelled lines, as ``run_chunk`` does locally. No local result: any shared one
    goes, since the flow deletes results on purpose (a model server that was never reached) so
    that a resume asks again; at worst, a result the flow never copied back is computed again.
    """
    if local.exists():
        upload(local, url)
    elif _exists(url):
        fs, key = url_to_fs(url)
        fs.rm(key)


def dask_chunks(settings: Settings, job_id: str, task: Task[[ChunkWork], ChunkCounts]) -> DaskChunks:
    """The job's Dask scale-out (``BATCHINFER_DASK_ADDRESS`` is set)."""
    assert settings.scale_out.dask_address
    if not settings.scale_out.shared_storage:
        raise JobError(
            f"{env_name('dask_address')} is set ({settings.scale_out.dask_address}) but "
            f"{env_name('shared_storage')} is not. Dask workers cannot read the job's directory: set "
            f"{env_name('shared_storage')} to an fsspec URL that this process and every worker can "
            "write (e.g. s3://bucket/batchinfer or file:///mnt/shared/batchinfer), or unset "
            f"{env_name('dask_address')} to run chunks on threads of the job's process.",
            code=SCALEOUT_CODE,
        )
    return DaskChunks(settings.scale_out.dask_address, settings.scale_out.shared_storage, job_id, task)
