"""Settings of the OPC UA connector: what OT staff write under `[[sources]]`, `type = "opcua"`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OpcUaSignalSettings(BaseModel):
    """What the connector needs to know of one signal: where it is and how to watch it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: Annotated[
        str, Field(min_length=1, description="NodeId, e.g. ns=2;s=Line1.Filler.GoodCount")
    ]
    sampling_interval_ms: Annotated[float, Field(ge=0)] = 0.0
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 100

    @field_validator("node")
    @classmethod
    def _node_id_syntax(cls, node: str) -> str:
        from asyncua import ua

        try:
            ua.NodeId.from_string(node)
        except Exception as error:  # asyncua raises several types for bad strings
            raise ValueError(
                f"not an OPC UA NodeId: {node!r} "
                "(expected e.g. 'ns=2;s=Line1.Temp' or 'ns=3;i=1001')"
            ) from error
        return node


class OpcUaSettings(BaseModel):
    """Connection settings of one OPC UA server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: Annotated[str, Field(pattern=r"^opc\.tcp://[^/\s]+(:\d+)?(/.*)?$")]
    publishing_interval_ms: Annotated[float, Field(gt=0, le=60_000)] = 100.0
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 4.0
    watchdog_interval_s: Annotated[float, Field(gt=0, le=300)] = 1.0
