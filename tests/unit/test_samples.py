"""The annotated sample of each source type (`connectors/<name>/sample.toml`), held to what it
promises, like `config/example.toml` in test_config_loader.py.

A sample is a complete config: the least [agent] and [hub] a config needs, then one [[sources]]
entry of its type (it is loaded as it is: check-config, the fuzz test of the shipped examples).
Its comment lines follow example.toml's rules: `# key = value` is an optional key at its default,
`#   key = value` (more than one space) an optional key without a default, with an example.

- Every source type `AgentConfig.sources` accepts has a sample in its folder (`mes-files`:
  connectors/mes_files/sample.toml), no other folder has one, and each one loads through the
  real loader as a source of that type.
- The defaults a sample documents are the real ones: uncommenting every `# key = default` line
  changes nothing.
- A sample shows every key of its source type: each field of the source's model, and of the
  tables it holds (signals with their mapping keys, routes, columns), is a key of the sample
  once its commented lines are uncommented; a new setting without a sample line fails here.
"""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from config.loader import load_config
from config.schema import AgentConfig

REPO = Path(__file__).resolve().parents[2]
_DEFAULT_LINE = re.compile(r"(?m)^(\s*)# ([a-z_]+ = .+)$")
_COMMENTED_KEY_LINE = re.compile(r"(?m)^(\s*)#\s*([a-z_]+ = .+)$")


def source_models() -> dict[str, type[BaseModel]]:
    """Each source type's model, by its `type` tag, as `AgentConfig.sources` accepts them."""
    [source] = typing.get_args(AgentConfig.model_fields["sources"].annotation)
    union, *_ = typing.get_args(source)  # Annotated[A | B | ..., Field(discriminator="type")]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        [tag] = typing.get_args(model.model_fields["type"].annotation)
        models[tag] = model
    return models


# Source type -> its sample, in the type's folder (`mes-files`: connectors/mes_files/).
SAMPLES = {
    source_type: REPO / "connectors" / source_type.replace("-", "_") / "sample.toml"
    for source_type in source_models()
}


def test_every_source_type_has_one_sample() -> None:
    assert {"opcua", "simulated", "mes-files", "mes-http", "mes-sql"} <= set(SAMPLES)
    assert sorted(SAMPLES.values()) == sorted(REPO.glob("connectors/*/sample.toml"))


@pytest.mark.parametrize("source_type", sorted(SAMPLES))
def test_the_sample_loads_as_its_source_type(source_type: str) -> None:
    config = load_config(SAMPLES[source_type])

    [source] = config.sources
    assert source.type == source_type
    assert isinstance(source, source_models()[source_type])


@pytest.mark.parametrize("source_type", sorted(SAMPLES))
def test_the_defaults_the_sample_documents_are_the_real_defaults(
    source_type: str, tmp_path: Path
) -> None:
    text = SAMPLES[source_type].read_text(encoding="utf-8")
    uncommented, count = _DEFAULT_LINE.subn(r"\1\2", text)
    assert count >= 3
    original = tmp_path / "sample.toml"
    original.write_text(text, encoding="utf-8")
    copy = tmp_path / "uncommented.toml"
    copy.write_text(uncommented, encoding="utf-8")

    assert load_config(copy).model_dump() == load_config(original).model_dump()


@pytest.mark.parametrize("source_type", sorted(SAMPLES))
def test_the_sample_shows_every_key_of_its_source_type(source_type: str) -> None:
    text = SAMPLES[source_type].read_text(encoding="utf-8")
    every_key = tomllib.loads(_COMMENTED_KEY_LINE.sub(r"\1\2", text))
    [source] = every_key["sources"]

    missing = sorted(_missing_keys(source_models()[source_type], [source], "sources"))
    assert not missing, f"{SAMPLES[source_type]} shows no line for {', '.join(missing)}"


def _missing_keys(
    model: type[BaseModel], tables: list[dict[str, object]], where: str
) -> Iterator[str]:
    """Key paths of `model`'s fields that none of `tables` holds, descending into the fields
    that hold tables of a model (signals, routes, columns)."""
    for name, field in model.model_fields.items():
        present = [table[name] for table in tables if name in table]
        if not present:
            yield f"{where}.{name}"
            continue
        nested = _table_model(field.annotation)
        if nested is not None:
            yield from _missing_keys(nested, _tables(present), f"{where}.{name}")


def _table_model(annotation: object) -> type[BaseModel] | None:
    """The model of the tables a field holds: `list[Model]` or `dict[str, Model]`."""
    origin = typing.get_origin(annotation)
    if origin not in (list, dict):
        return None
    item = typing.get_args(annotation)[-1]
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def _tables(values: list[object]) -> list[dict[str, object]]:
    """The tables in the values of one key: each item of an array of tables, each value of a
    table of tables (`columns`)."""
    tables: list[dict[str, object]] = []
    for value in values:
        items = list(value.values()) if isinstance(value, dict) else value
        if isinstance(items, list):
            tables.extend(item for item in items if isinstance(item, dict))
    return tables
