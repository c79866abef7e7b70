"""The adapter's OpenAPI document carries everything the seed contract defines, under the seed's names."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchinfer.api.app import create_app
from batchinfer.engines.catalog import load_catalog
from batchinfer.settings import Settings

SEED_COMPONENTS = [
    "Message",
    "MediaAttachment",
    "MediaAttachmentType",
    "MediaAttachmentDataType",
    "BatchInference",
    "Options",
    "Path",
]


# The contract, vendored: these tests always run. A test below checks it against the seed's copy.
CONTRACT = Path(__file__).parents[2] / "contract" / "batch_inference_api.yaml"
SEED_COPY = Path(__file__).parents[3] / "shared" / "seed" / "batch_inference_api.yaml"


def test_the_vendored_contract_is_the_seeds_own_copy() -> None:
    if not SEED_COPY.exists():  # a clone without ../shared beside it: nothing to compare with
        pytest.skip(f"the seed's copy is not at {SEED_COPY}")
    assert CONTRACT.read_bytes() == SEED_COPY.read_bytes()


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    return yaml.safe_load(CONTRACT.read_text(encoding="utf-8"))


@contextlib.asynccontextmanager
async def no_backend() -> AsyncIterator[None]:
    yield None  # never entered: the app is not started


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("home")
    return create_app(Settings(home=home), load_catalog(None), no_backend).openapi()  # type: ignore[arg-type]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def enum_values(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Enum values reachable through $ref, anyOf, oneOf and allOf."""
    schema = resolve(document, schema)
    values = set(schema.get("enum", []))
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            values |= enum_values(document, option)
    return values


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(path, method) for path, item in document["paths"].items() for method in item]


def test_every_seed_path_and_method_is_served(seed: dict[str, Any], ours: dict[str, Any]) -> None:
    assert set(operations(seed)) <= set(operations(ours))


def test_every_seed_query_parameter_is_present_with_its_location_and_requiredness(
    seed: dict[str, Any], ours: dict[str, Any]
) -> None:
    for path, method in operations(seed):
        ours_params = {(p["name"], p["in"]): p for p in ours["paths"][path][method].get("parameters", [])}
        for param in seed["paths"][path][method].get("parameters", []):
            ours_param = ours_params.get((param["name"], param["in"]))
            assert ours_param is not None, (
                f"{method.upper()} {path}: no {param['in']} parameter {param['name']}"
            )
            assert bool(ours_param.get("required")) == bool(param.get("required")), param["name"]


@pytest.mark.parametrize("name", SEED_COMPONENTS)
def test_each_seed_component_schema_exists_with_every_property_and_enum_value(
    name: str, seed: dict[str, Any], ours: dict[str, Any]
) -> None:
    seed_schema = seed["components"]["schemas"][name]
    assert name in ours["components"]["schemas"], f"no component schema named {name}"
    our_schema = ours["components"]["schemas"][name]
    assert set(seed_schema.get("enum", [])) <= enum_values(ours, our_schema)
    for prop, seed_prop in seed_schema.get("properties", {}).items():
        assert prop in our_schema.get("properties", {}), f"{name} lacks property {prop}"
        missing = enum_values(seed, seed_prop) - enum_values(ours, our_schema["properties"][prop])
        assert not missing, f"{name}.{prop} lacks enum values {missing}"


def test_the_seed_lists_the_components_this_test_checks(seed: dict[str, Any]) -> None:
    assert set(seed["components"]["schemas"]) == set(SEED_COMPONENTS)


def test_the_submit_body_has_every_seed_body_property(seed: dict[str, Any], ours: dict[str, Any]) -> None:
    seed_body = seed["paths"]["/batch_inference/submit_job"]["post"]["requestBody"]
    our_body = ours["paths"]["/batch_inference/submit_job"]["post"]["requestBody"]
    assert our_body.get("required") is True
    seed_schema = seed_body["content"]["application/json"]["schema"]
    our_schema = resolve(ours, our_body["content"]["application/json"]["schema"])
    assert set(seed_schema["properties"]) <= set(our_schema["properties"])


@pytest.mark.parametrize(
    ("path", "method"), [("/batch_inference/submit_job", "post"), ("/batch_inference/job_status", "get")]
)
def test_response_200_of_both_operations_is_a_batch_inference(
    path: str, method: str, ours: dict[str, Any]
) -> None:
    schema = ours["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/BatchInference"}


def test_the_seed_says_the_same_about_its_responses(seed: dict[str, Any]) -> None:
    for path, method in operations(seed):
        schema = seed["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/BatchInference"}
