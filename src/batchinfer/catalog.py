"""The models file: which model ids a request may name, and how each one runs.

```yaml
models:
  - id: llama-8b
    engine: openai
    base_url: http://127.0.0.1:8000/v1
    model: meta-llama/Llama-3.1-8B-Instruct
```
The embedded default (``smollm2-135m``) is always present unless the file redefines that id.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from batchinfer.engines.configs import EMBEDDED_DEFAULT
from batchinfer.engines.registry import ModelConfig
from batchinfer.errors import EngineError, UnknownModelError


class ModelCatalog(BaseModel):
    models: list[ModelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> ModelCatalog:
        seen: set[str] = set()
        for model in self.models:
            if model.id in seen:
                raise ValueError(f"model id {model.id!r} is defined twice")
            seen.add(model.id)
        return self

    def ids(self) -> list[str]:
        return [m.id for m in self.models]

    def get(self, model_id: str) -> ModelConfig:
        for model in self.models:
            if model.id == model_id:
                return model
        raise UnknownModelError(model_id, self.ids())


def load_catalog(path: Path | None) -> ModelCatalog:
    """The models in ``path`` (YAML) plus the embedded default. A broken file is an ``EngineError``
    that names the file and the problem, raised at start-up rather than at the first request."""
    entries: list[object] = []
    if path is not None:
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise EngineError(f"Cannot read the models file {path}: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("models") or [], list):
            raise EngineError(f"The models file {path} must be a mapping with a 'models' list.")
        entries = list(document.get("models") or [])
    try:
        catalog = ModelCatalog.model_validate({"models": entries})
    except ValidationError as exc:
        raise EngineError(f"The models file {path} is invalid: {exc}") from exc
    if EMBEDDED_DEFAULT.id not in catalog.ids():
        catalog.models.insert(0, EMBEDDED_DEFAULT)
    return catalog
