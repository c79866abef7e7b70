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
    whose one line names the file, the line and the field, raised at start-up rather than at the
    first request."""
    entries: list[object] = []
    lines = _Lines(None)
    if path is not None:
        entries, lines = _read_entries(Path(path))
    try:
        catalog = ModelCatalog.model_validate({"models": entries})
    except ValidationError as exc:
        raise EngineError(_invalid(path, exc, lines)) from None
    if EMBEDDED_DEFAULT.id not in catalog.ids():
        catalog.models.insert(0, EMBEDDED_DEFAULT)
    return catalog


def _read_entries(path: Path) -> tuple[list[object], _Lines]:
    try:
        text = path.read_text(encoding="utf-8")
        document, root = yaml.safe_load(text) or {}, yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EngineError(
            f"Cannot read the models file {path}: invalid YAML{where}: {exc.problem}; fix the YAML."
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EngineError(f"Cannot read the models file {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("models") or [], list):
        raise EngineError(f"The models file {path} must be a mapping with a 'models' list.")
    return list(document.get("models") or []), _Lines(root)


class _Lines:
    """Line numbers of the entries and fields of a composed models file, for error messages."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._entries: list[yaml.Node] = []
        if isinstance(root, yaml.MappingNode):
            for key, value in root.value:
                if key.value == "models" and isinstance(value, yaml.SequenceNode):
                    self._entries = list(value.value)

    def of(self, index: int | None, field: str | None) -> int | None:
        """The line of entry ``index``'s ``field``, else of the entry; None if there is none."""
        if index is None or not 0 <= index < len(self._entries):
            return None
        entry = self._entries[index]
        if isinstance(entry, yaml.MappingNode):
            for key, _ in entry.value:
                if key.value == field:
                    return int(key.start_mark.line) + 1
        return int(entry.start_mark.line) + 1


def _invalid(path: Path | None, exc: ValidationError, lines: _Lines) -> str:
    """One line for the first problem (and how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    loc = list(first["loc"])[1:]  # without the leading "models"
    index = loc[0] if loc and isinstance(loc[0], int) else None
    fields = [str(part) for part in loc[1:] if not isinstance(part, int)]
    # A discriminated union puts the engine name in the location (models.0.openai.base_url), and
    # names no field when the engine itself is wrong.
    field = "engine" if first["type"].startswith("union_tag") else (fields[-1] if fields else None)
    if isinstance(named := (first.get("ctx") or {}).get("field"), str):
        field = named  # a model-level error that names its field (OpenAIEngineConfig's base_url)
    line = lines.of(index, field)
    where = f" at line {line}" if line else ""
    entry = "" if index is None else f"models[{index}]{f', field {field!r}' if field else ''}: "
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"The models file {path} is invalid{where}: {entry}{first['msg']}{more}. Fix it (README: Models)."
