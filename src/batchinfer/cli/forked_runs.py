"""Flow runs of ``batchinfer serve`` forked from a process that has already imported what a job
needs, instead of each one spawned as a fresh Python that imports Prefect and the flow again.

Prefect's runner starts every flow run with ``multiprocessing``'s *spawn* method: a new
interpreter that unpickles the flow and so imports Prefect, pydantic and the engines first. That
takes ~2 s of the ~3.5 s a one-prompt job waits between submit and completed. A *fork server*
(``multiprocessing``'s ``forkserver`` method) is started once, imports those modules once, and
forks each flow run from there: a new process, as isolated as before (its own memory, killed
by pid, a crash ends only it), that starts in milliseconds. The fork server holds no threads
when it forks, so forking it is safe, which forking the runner itself (threads, an event loop)
would not be.

The runner hands a flow run its flow as a pickle. A flow that its module defines is pickled as
that reference (``flows_by_reference``), so the run executes the module's own flow object: by
value, cloudpickle would copy the function without the names its string annotations need
(``from __future__ import annotations``), and Prefect could not validate the parameters.

The seam: Prefect 3.9's ``run_flow_in_subprocess`` asks ``multiprocessing.get_context("spawn")``
for its process; this module hands that one call the fork-server context. Prefect is pinned
(pyproject.toml), and ``tests/cli/test_forked_runs.py`` fails if a Prefect upgrade moves the seam.
"""

from __future__ import annotations

import copyreg
import importlib
import multiprocessing
import multiprocessing.context
import pickle
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect import Flow

# What a job's flow-run process imports: Prefect (through the flow), the HTTP engine, and pyarrow,
# which gather uses for results.parquet.
FLOW_RUN_PRELOAD = ("batchinfer.flows.batch_job", "batchinfer.engines.openai_compat", "pyarrow.parquet")


class _ForkServerMultiprocessing(types.ModuleType):
    """``multiprocessing`` as Prefect's flow engine sees it: any context it asks for is the fork
    server's; every other name is the real module's."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        super().__init__("multiprocessing")
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def fork_flow_runs(preload: tuple[str, ...] = FLOW_RUN_PRELOAD) -> None:
    """From now on, this process's runner forks its flow runs from a fork server that has
    imported ``preload``. Call before the runner starts: the server starts now, so that the
    first job does not wait for its imports either."""
    from multiprocessing import forkserver

    from prefect import flow_engine

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    forkserver.ensure_running()
    flow_engine.multiprocessing = _ForkServerMultiprocessing(context)


def _import_flow(module: str, name: str) -> Flow[..., Any]:
    flow: Flow[..., Any] = getattr(importlib.import_module(module), name)
    return flow


def _reduce_flow(flow: Flow[..., Any]) -> Any:
    """A flow its module holds under its function's name, as that reference; any other flow
    (one made in ``__main__``, say) as Prefect and cloudpickle would pickle it."""
    module, name = flow.fn.__module__, flow.fn.__name__
    if getattr(sys.modules.get(module), name, None) is flow:
        return _import_flow, (module, name)
    return flow.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def flows_by_reference() -> None:
    """From now on, this process pickles a module's flows as references to them."""
    from prefect import Flow

    copyreg.pickle(Flow, _reduce_flow)
