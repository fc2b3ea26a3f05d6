"""The agent's TOML configuration, as a pydantic schema: `AgentConfig`, the root.

One file per section, each the one place its defaults are declared: `[agent]`
(`config.agent`), `[hub]` (`config.hub`), `[buffer]` (`config.buffer`), `[commands]`
(`config.commands`), `[contracts]` (`config.contracts`), `[units]`, `[lookups]` and `[assets]`
(`config.mapping`), and
`[[sources]]`: one entry per source, validated by the model its `type` names in the
source-type registry (`config.source_types`; the models are in `config.source_models`, the
connector's settings, which live next to their component (`connectors.opcua.config`), composed
with the mapping fields). The sections stay in `config/` rather than beside the agent's code
they configure because `config` may not import `agent` (`tests/unit/test_architecture.py`).

Every model forbids unknown keys (`config.fields.STRICT`), so a typo is an error that
`edge-agent check-config` names, never a setting silently ignored. This module checks what
spans sections: unique source names and the mapping's references across sections.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator

# The sections, importable from here as before the split (`config.schema.HubSection`).
from config.agent import AgentSection as AgentSection
from config.buffer import BufferSection as BufferSection
from config.commands import CommandsSection as CommandsSection
from config.contracts import ContractsSection as ContractsSection
from config.fields import STRICT
from config.hub import HubSection as HubSection
from config.mapping import (  # the mapping part of the schema lives in config/mapping.py
    AssetSection,
    LookupTable,
    Problem,
    UnitsSection,
    cross_check,
    raise_problems,
)
from config.mapping import SignalMapping as SignalMapping
from config.observability import WebSection

# The `[[sources]]` models and their union, importable from here as before the registry moved
# to config (`config.schema.OpcUaSource`).
from config.source_models import RECORD_FIELDS as RECORD_FIELDS
from config.source_models import MesHttpSource as MesHttpSource
from config.source_models import OpcUaSource as OpcUaSource
from config.source_models import check_record_fields as check_record_fields
from config.source_types import RECORD_SOURCES as RECORD_SOURCES
from config.source_types import Source
from config.sparkplug import SparkplugSection
from connectors.records import RecordSettings


class AgentConfig(BaseModel):
    """The whole file; see the module docstring."""

    model_config = STRICT

    agent: AgentSection
    hub: HubSection
    buffer: BufferSection = BufferSection()
    commands: CommandsSection = CommandsSection()
    contracts: ContractsSection = ContractsSection()
    web: WebSection = WebSection()  # /metrics and the status page (agent.web)
    sparkplug: SparkplugSection = SparkplugSection()  # agent.link.sparkplug
    units: UnitsSection = UnitsSection()
    lookups: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], LookupTable] = {}
    assets: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")],
                 AssetSection] = {}
    sources: Annotated[list[Source], Field(min_length=1)]

    # A field validator, not a model validator: its error then points at `sources` (key and
    # line) instead of at the file as a whole.
    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[Source]) -> list[Source]:
        names = [source.name for source in sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        return sources

    # Mapping references across sections (lookups, sibling signals, asset paths), each error
    # raised on its own key path (see config.mapping.cross_check).
    @model_validator(mode="after")
    def _mapping_references(self) -> AgentConfig:
        raise_problems(
            cross_check(
                lookups=self.lookups,
                assets=self.assets,
                sources=[
                    (source.name, [(signal.node, signal) for signal in source.signals])
                    for source in self.sources
                ],
            )
            + self._record_lookup_problems()
        )
        return self

    def _record_lookup_problems(self) -> list[Problem]:
        """Each record source's (or webhook route's) `lookups` name a `[lookups]` table."""
        problems: list[Problem] = []
        known = ", ".join(sorted(self.lookups)) or "none defined"
        for i, source in enumerate(self.sources):
            if isinstance(source, MesHttpSource):
                parts: list[tuple[tuple[str | int, ...], RecordSettings]] = [
                    (("sources", i, "routes", j), route) for j, route in enumerate(source.routes)
                ]
            elif isinstance(source, RecordSettings):
                parts = [(("sources", i), source)]
            else:
                continue
            for where, settings in parts:
                for field, name in settings.lookups.items():
                    if name not in self.lookups:
                        problems.append(Problem(
                            (*where, "lookups", field),
                            f"unknown lookup {name!r} (define [lookups.{name}]; known: {known})",
                            name,
                        ))
        return problems

    @property
    def client_id(self) -> str:
        return self.hub.client_id or f"edge-agent-{self.agent.site}-{self.agent.id}"
