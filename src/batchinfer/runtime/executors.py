"""The one seam where a job's chunks run: a ``ChunkExecutor`` takes a ``ChunkWork`` and hands back
a future of its counts. Two executors: ``ThreadChunks`` (Prefect task runs on threads of the job's
process, the default) and ``scaleout.DaskChunks`` (a Dask cluster, ``BATCHINFER_DASK_ADDRESS``).
The job asks ``chunk_executor`` for one and never which it got.

The chunk task is injected (``flows/batch_job.py`` passes ``tasks.infer.infer_chunk``), so this
layer does not import the top-level tasks that import it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from batchinfer.engines.base import InFlightCap
from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import AnyModelConfig
from batchinfer.pipeline.chunk_run import ChunkCounts
from batchinfer.pipeline.result_cache import CacheSpec
from batchinfer.runtime.deadline import DoneFuture
from batchinfer.settings import Settings

if TYPE_CHECKING:
    from prefect import Task

# Upper bound on chunk threads; the engine's ``max_parallel_chunks`` picks the actual window.
MAX_CHUNK_THREADS = 32


@dataclass(frozen=True)
class ChunkWork:
    """Everything one chunk task needs. ``input_path``/``result_path`` are local paths, or URLs on
    shared storage when the chunk runs on a Dask worker. ``max_in_flight``: the share of the
    model's cross-job limit that its job holds (``runtime.model_limits``), which the job's chunks
    in this process draw from together."""

    index: int
    input_path: str
    result_path: str
    model: AnyModelConfig
    context: EngineContext
    job_id: str | None = None
    max_in_flight: InFlightCap | None = None
    cache: CacheSpec | None = None  # the model's result cache (``cache: true``), else None
    stop_url: str | None = None  # on shared storage: the job's stop marker (``scaleout``)

    def at(self, input_path: str, result_path: str, stop_url: str) -> ChunkWork:
        """The same work with its files somewhere else (on shared storage), for another process:
        there the chunk shares its cap with nothing, so it keeps its own part of the job's, and
        learns that its job stopped from ``stop_url``."""
        cap = None if self.max_in_flight is None else self.max_in_flight.alone(self.index)
        return replace(
            self, input_path=input_path, result_path=result_path, max_in_flight=cap, stop_url=stop_url
        )


class ChunkExecutor(Protocol):
    """Runs chunks, as a context manager that holds whatever it runs them on."""

    def __enter__(self) -> ChunkExecutor: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def submit(self, work: ChunkWork) -> DoneFuture[ChunkCounts]: ...


class ThreadChunks:
    """Chunk task runs on the flow's own task runner: threads of the job's process."""

    def __init__(self, task: Task[[ChunkWork], ChunkCounts]) -> None:
        self._task = task

    def __enter__(self) -> ThreadChunks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def submit(self, work: ChunkWork) -> DoneFuture[ChunkCounts]:
        return self._task.submit(work)


def chunk_executor(settings: Settings, job_id: str, task: Task[[ChunkWork], ChunkCounts]) -> ChunkExecutor:
    """The executor the settings ask for: Dask when ``BATCHINFER_DASK_ADDRESS`` is set, else threads."""
    if not settings.scale_out.dask_address:
        return ThreadChunks(task)
    from batchinfer.runtime.scaleout import dask_chunks  # fsspec and prefect-dask only when asked

    return dask_chunks(settings, job_id, task)
