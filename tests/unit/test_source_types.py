"""The source-type registry (`agent.source_types`): one row per `[[sources]]` type, agreeing
with the config's `Source` union; connector modules imported only for configured types; and
the settings every type shares (`connectors.base.SourceSettings`)."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.source_types import SOURCE_TYPES
from config.schema import AgentConfig
from connectors.base import ConnectorSettings, SourceSettings

REPO = Path(__file__).resolve().parents[2]


def union_models() -> dict[str, type[Any]]:
    [source] = typing.get_args(AgentConfig.model_fields["sources"].annotation)
    union, *_ = typing.get_args(source)
    return {typing.get_args(model.model_fields["type"].annotation)[0]: model
            for model in typing.get_args(union)}


def test_the_registry_and_the_sources_union_name_the_same_models() -> None:
    assert {tag: row.settings for tag, row in SOURCE_TYPES.items()} == union_models()
    for row in SOURCE_TYPES.values():
        assert issubclass(row.settings, SourceSettings)


@pytest.mark.parametrize("source_type", sorted(SOURCE_TYPES))
def test_every_type_refuses_a_reconnect_minimum_above_its_maximum(source_type: str) -> None:
    model = SOURCE_TYPES[source_type].settings
    connector_settings = next(base for base in model.__mro__[1:]
                              if issubclass(base, ConnectorSettings)
                              and not issubclass(base, SourceSettings))
    with pytest.raises(ValidationError, match="reconnect_min_s must not be larger"):
        connector_settings.model_validate(
            {**_required_fields(source_type), "reconnect_min_s": 10, "reconnect_max_s": 5}
        )


def _required_fields(source_type: str) -> dict[str, Any]:
    """The least a type's connector settings need besides reconnect_*."""
    record = {"columns": {"order": {"column": "wo"}}}
    fields: dict[str, dict[str, Any]] = {
        "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"},
        "simulated": {},
        "mes-files": {"folder": "drop", **record},
        "mes-http": {"auth": "none", "routes": [{"path": "/mes", "event": "x", **record}]},
        "mes-sql": {"url": "sqlite:///mes.db", "table": "t", "cursor": ["id"]},
    }
    return fields[source_type]


def test_an_opcua_only_agent_imports_no_mes_client_library() -> None:
    """aiohttp and asyncpg (about 11 MiB) are loaded only for a webhook or a database source:
    the registry's builders import their connector when called."""
    script = f"""
import sys
from pathlib import Path
from agent.runtime import Agent
from agent.source_types import build_connector
from config.loader import load_config

config = load_config(Path({str(REPO / "connectors/opcua/sample.toml")!r}))
for source in config.sources:
    build_connector(source, None)  # an OPC UA connector never asks its host
heavy = sorted(name for name in ("aiohttp", "asyncpg") if name in sys.modules)
print(",".join(heavy) or "none")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, check=True, timeout=60)
    assert result.stdout.strip() == "none"
