"""A one-prompt job on `batchinfer serve`, submit to completed: the median of ``--runs`` jobs, once
for each way the runner may start a job's process (Prefect's own, and the opt-in fork server).

    python -m bench.serve_overhead [--runs 5] [--modes public,fork-server]

The same loopback model server (0 ms) for both; each mode gets a fresh ``serve`` and data dir, and
its first job is not counted (the first job after start-up also pays for the deployment's first
query). Prints one line per mode; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

from batchinfer.testing.served import ServeProcess, serve_env, user_prompt, write_jsonl
from bench.run import job_via_serve, start_fake_server

MODES = {"public": "false", "fork-server": "true"}  # BATCHINFER_FORK_FLOW_RUNS


def one_prompt_walls(mode: str, runs: int, base_url: str, tmp: Path) -> list[float]:
    home = tmp / mode
    home.mkdir()
    models = [{"id": "fake", "engine": "openai", "base_url": base_url, "model": "fake-model"}]
    models_file = home / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    one = write_jsonl(home / "one.jsonl", [user_prompt("one prompt")])
    env = serve_env(home, models_file, roots=[tmp], BATCHINFER_FORK_FLOW_RUNS=MODES[mode])
    served = ServeProcess(home=home, env=env).start()
    try:
        job_via_serve(served, "fake", one)  # warm-up, not counted
        return [job_via_serve(served, "fake", one)[1] for _ in range(runs)]
    finally:
        served.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args(argv)
    server, base_url = start_fake_server(0)
    try:
        with tempfile.TemporaryDirectory(prefix="batchinfer-overhead-") as tmp_text:
            for mode in args.modes.split(","):
                walls = one_prompt_walls(mode, args.runs, base_url, Path(tmp_text))
                runs = ", ".join(f"{w:.2f}" for w in walls)
                print(f"{mode}: median {statistics.median(walls):.2f} s over {len(walls)} jobs ({runs})")
    finally:
        server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
