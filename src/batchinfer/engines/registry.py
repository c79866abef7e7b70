"""Engine registry: engine name -> config class and builder. Builders import lazily, so that the
package (and the adapter) never pays for torch unless a local model actually runs.

One of the three process-wide registries (the others: ``runtime.cancellation``'s stop signals and
``runtime.reporting``'s progress listeners; docs/development.md lists them): the engines built in
this process, by model config, so that every chunk task of a job shares one loaded model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeAlias

from pydantic import Field

from batchinfer.engines.base import Engine
from batchinfer.engines.configs import (
    CTranslate2EngineConfig,
    EngineContext,
    LlamaCppEngineConfig,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)

AnyModelConfig: TypeAlias = (
    OpenAIEngineConfig
    | TransformersEngineConfig
    | CTranslate2EngineConfig
    | LlamaCppEngineConfig
    | VLLMEngineConfig
)
ModelConfig = Annotated[AnyModelConfig, Field(discriminator="engine")]


def _build_openai(config: OpenAIEngineConfig, context: EngineContext) -> Engine:
    from batchinfer.engines.openai_compat import OpenAIEngine

    return OpenAIEngine(config)


def _build_transformers(config: TransformersEngineConfig, context: EngineContext) -> Engine:
    from batchinfer.engines.transformers_local import TransformersEngine

    return TransformersEngine(config, context)


def _build_ctranslate2(config: CTranslate2EngineConfig, context: EngineContext) -> Engine:
    # ctranslate2 itself is imported only when the model loads.
    from batchinfer.engines.ctranslate2_local import CTranslate2Engine

    return CTranslate2Engine(config, context)


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
    "ctranslate2": _build_ctranslate2,
    "llamacpp": _build_llamacpp,
    "vllm": _build_vllm,
}

_cache: dict[str, Engine] = {}
_cache_lock = threading.Lock()


def build_engine(config: AnyModelConfig, context: EngineContext) -> Engine:
    """A new engine for ``config``."""
    return BUILDERS[config.engine](config, context)


def _key(config: AnyModelConfig, context: EngineContext) -> str:
    return config.model_dump_json() + context.model_dump_json()


def get_engine(config: AnyModelConfig, context: EngineContext) -> Engine:
    """The process-wide engine for ``config``: built once, shared by every chunk task in the process."""
    key = _key(config, context)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None:
            engine = _cache[key] = build_engine(config, context)
        return engine


@contextmanager
def engine_in_use(config: AnyModelConfig, context: EngineContext, engine: Engine) -> Iterator[Engine]:
    """Make ``engine`` this process's engine for ``config`` while the block runs: a test double at
    the model boundary for in-process jobs, or an engine warmed up beforehand."""
    key = _key(config, context)
    with _cache_lock:
        previous = _cache.get(key)
        _cache[key] = engine
    try:
        yield engine
    finally:
        with _cache_lock:
            if previous is None:
                _cache.pop(key, None)
            else:
                _cache[key] = previous


def close_engines() -> None:
    with _cache_lock:
        engines = list(_cache.values())
        _cache.clear()
    for engine in engines:
        engine.close()
