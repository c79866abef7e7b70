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

What does not cross the wire: a job's cancel signal (``batchinfer.runtime.cancellation``) lives in the job's
process, so a cancel stops the flow submitting chunks, while the chunks already on workers finish.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fsspec.core import url_to_fs

from batchinfer.engines.base import Engine, StopFlag
from batchinfer.errors import JobError
from batchinfer.pipeline.chunk_run import ChunkCounts, ChunkFiles, run_chunk
from batchinfer.pipeline.jobstore import download, is_url, upload
from batchinfer.runtime.executors import ChunkWork
from batchinfer.settings import Settings, env_name

if TYPE_CHECKING:
    from prefect import Task
    from prefect.futures import PrefectFuture
    from prefect_dask import DaskTaskRunner

SCALEOUT_CODE = "scaleout_error"


# --- on the worker ------------------------------------------------------------------------------


def run_chunk_at(work: ChunkWork, engine: Engine, stop: StopFlag | None = None) -> ChunkCounts:
    """``run_chunk`` for a chunk whose files are local paths or URLs on shared storage."""
    cache = None if work.cache is None else work.cache.open()
    if not is_url(work.input_path) and not is_url(work.result_path):
        files = ChunkFiles(work.index, Path(work.input_path), Path(work.result_path))
        return run_chunk(files, engine, stop, work.max_in_flight, cache)
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
    return bool(fs.exists(key))


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
        self.chunks_url = f"{shared_storage.rstrip('/')}/{job_id}/chunks"
        self._runner: DaskTaskRunner | None = None

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
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            self._runner.__exit__(exc_type, exc, tb)
            self._runner = None

    def submit(self, work: ChunkWork) -> StagedFuture:
        """Stage the chunk's files on shared storage and submit its task to the cluster."""
        if self._runner is None:
            raise RuntimeError("DaskChunks.submit outside its `with` block")
        staged = work.at(self.url(work.input_path), self.url(work.result_path))
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
    assert settings.dask_address
    if not settings.shared_storage:
        raise JobError(
            f"{env_name('dask_address')} is set ({settings.dask_address}) but "
            f"{env_name('shared_storage')} is not. Dask workers cannot read the job's directory: set "
            f"{env_name('shared_storage')} to an fsspec URL that this process and every worker can "
            "write (e.g. s3://bucket/batchinfer or file:///mnt/shared/batchinfer), or unset "
            f"{env_name('dask_address')} to run chunks on threads of the job's process.",
            code=SCALEOUT_CODE,
        )
    return DaskChunks(settings.dask_address, settings.shared_storage, job_id, task)
