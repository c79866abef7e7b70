"""How `serve`'s runner starts a job's process: forked from a fork server that has imported the
flow already, and handed the flow as a reference to the module's own flow object."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow

from batchinfer.cli.forked_runs import FLOW_RUN_PRELOAD, _reduce_flow
from batchinfer.testing.served import ServeProcess, prompt_texts, wait_for, write_prompts


def test_a_modules_flow_pickles_as_a_reference_to_that_very_flow() -> None:
    # In a process of its own: flows_by_reference changes how the whole process pickles flows.
    script = (
        "import cloudpickle; from batchinfer.cli.forked_runs import flows_by_reference; "
        "flows_by_reference(); from batchinfer.flows.batch_job import batch_job; "
        "data = cloudpickle.dumps(batch_job); "
        "print(len(data), cloudpickle.loads(data) is batch_job)"
    )
    size, same = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    # The module's object comes back (its annotations resolve, its state is shared), not a copy of
    # its function and everything that function refers to.
    assert same == "True"
    assert int(size) < 500


def test_a_flow_its_module_does_not_hold_pickles_as_prefect_would() -> None:
    @flow
    def made_here() -> int:
        return 1

    assert _reduce_flow(made_here) == made_here.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def test_the_fork_server_preloads_only_modules_that_exist() -> None:
    import importlib.util

    # multiprocessing skips a preload module it cannot import without a word: a typo here would
    # silently bring back the ~2 s import per job.
    assert all(importlib.util.find_spec(name) is not None for name in FLOW_RUN_PRELOAD)


@pytest.mark.e2e
def test_a_served_job_runs_in_a_process_forked_from_the_fork_server(
    served: ServeProcess, data_dir: Path
) -> None:
    fork_servers = [
        p for p in served.runner().children() if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    assert len(fork_servers) == 1, "the runner keeps one fork server, started before any job"
    job_id = served.submit_ok(
        {
            "model": "fake-slow",
            "prompt_file_path": {
                "type": "filepath",
                "value": str(write_prompts(data_dir, "forked", prompt_texts("forked", 400))),
            },
        }
    )["job_id"]
    # While the job runs, its process is a child of the fork server (not a fresh Python the runner spawned).
    wait_for(lambda: bool(fork_servers[0].children()), 60, "a job process under the fork server")
    job = served.wait(job_id)
    assert job["status"] == "completed", job
    assert job["metadata"]["request_counts"]["completed"] == 400
