"""Engine registry: engine name -> config class and builder. Builders import lazily, so that the
package (and the adapter) never pays for torch unless a local model actually runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, TypeAlias

from pydantic import Field

from batchinfer.engines.base import Engine
from batchinfer.engines.configs import (
    EngineContext,
    LlamaCppEngineConfig,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)

AnyModelConfig: TypeAlias = (
    OpenAIEngineConfig | TransformersEngineConfig | LlamaCppEngineConfig | VLLMEngineConfig
)
ModelConfig = Annotated[AnyModelConfig, Field(discriminator="engine")]


def _build_openai(config: OpenAIEngineConfig, context: EngineContext) -> Engine:
    from batchinfer.engines.openai_compat import OpenAIEngine

    return OpenAIEngine(config)


def _build_transformers(config: TransformersEngineConfig, context: EngineContext) -> Engine:
    from batchinfer.engines.transformers_local import TransformersEngine

    return TransformersEngine(config, context)


def _build_llamacpp(config: LlamaCppEngineConfig, context: EngineContext) -> Engine:
    # Optional extra [llamacpp]: llama_cpp itself is imported only when the model loads.
    from batchinfer.engines.llamacpp_local import LlamaCppEngine

    return LlamaCppEngine(config, context)


def _build_vllm(config: VLLMEngineConfig, context: EngineContext) -> Engine:
    # Optional extra [vllm]: vllm itself is imported only when the model loads.
    from batchinfer.engines.vllm_offline import VLLMEngine

    return VLLMEngine(config, context)


BUILDERS: dict[str, Callable[..., Engine]] = {
    "openai": _build_openai,
    "transformers": _build_transformers,
    "llamacpp": _build_llamacpp,
    "vllm": _build_vllm,
}

_cache: dict[str, Engine] = {}
_cache_lock = threading.Lock()


def build_engine(config: AnyModelConfig, context: EngineContext) -> Engine:
    """A new engine for ``config``."""
    return BUILDERS[config.engine](config, context)


def get_engine(config: AnyModelConfig, context: EngineContext) -> Engine:
    """The process-wide engine for ``config``: built once, shared by every chunk task in the process."""
    key = config.model_dump_json() + context.model_dump_json()
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None:
            engine = _cache[key] = build_engine(config, context)
        return engine


def close_engines() -> None:
    with _cache_lock:
        engines = list(_cache.values())
        _cache.clear()
    for engine in engines:
        engine.close()
