"""A signal's `unit` against its OPC UA node's EngineeringUnits (`check-config --connect`).

The node's EngineeringUnits (OPC UA Part 8 `EUInformation`) say what unit its values are in:
`UnitId` is the UN/ECE Rec 20 common code packed into an integer (namespace
http://www.opcfoundation.org/UA/units/un/cefact), `DisplayName` its symbol. They are read as a
UCUM code with `config.tags.ucum_of` (Rec 20 codes through `config.units.REC20_TO_UCUM`, the
table MES records use too), else from a display name that is itself valid UCUM.

The rule (`check`), for a signal with a `unit` on a node whose unit is known:

- the same unit (`L` and `l`, `m3/h` and `m3.h-1` count as the same): fine;
- a different unit and no `scale`/`offset`: refused. The signal's `unit` is the unit the values
  arrive in, so the event would carry a wrong unit. The fix: `unit` = the node's unit, plus
  `to_unit` = the unit wanted, when the two convert (the agent then converts on purpose);
- `scale`/`offset` set (the signal converts on purpose, raw * scale + offset): fine when they
  are exactly the conversion from the node's unit to `unit`, or when the node's unit is
  dimensionless (raw counts or percent scaled to an engineering value); otherwise refused,
  with the scale and offset that would be right.

A signal without `unit` on a node that has one, or a node whose unit has no UCUM code, is not a
problem; the probe line says what was seen. Refusals are `UnitMismatch` results, which
`agent.cli.connect` reports as config errors (exit 2), on the line of the signal's `unit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from config import units
from config.tags import rec20_of_unit_id, ucum_of
from connectors.base import ProbeResult

if TYPE_CHECKING:
    from connectors.opcua.browse import EngineeringUnits


@dataclass(frozen=True, slots=True)
class UnitMismatch(ProbeResult):
    """A signal whose `unit` is not what its node's EngineeringUnits say: a config error."""


@dataclass(frozen=True, slots=True)
class NodeUnit:
    """The node's unit as UCUM (None: not known) and how to show it: `Cel (°C, UNECE CEL)`."""

    code: str | None
    shown: str


def node_unit(eu: EngineeringUnits) -> NodeUnit:
    code, _ = ucum_of(eu)
    display = eu.display_name or eu.description
    if code is None and display:
        try:
            code = units.unit(display.strip()).code
        except units.UnitError:
            code = None
    rec20 = rec20_of_unit_id(eu.unit_id)
    named = display if code is not None and display != code else ""
    details = [part for part in (named, f"UNECE {rec20}" if rec20 else "") if part]
    shown = (code or repr(display or f"UnitId {eu.unit_id}")) + (
        f" ({', '.join(details)})" if details else ""
    )
    return NodeUnit(code, shown)


def check(
    address: str,
    unit: str | None,
    scale: float,
    offset: float,
    eu: EngineeringUnits,
    seen: str,
) -> ProbeResult:
    """The probe result for one signal (`seen` is what the probe saw of the node)."""
    node = node_unit(eu)
    if node.code is None:
        return ProbeResult(address, None, f"{seen}, unit {node.shown}: no UCUM code, not checked")
    if unit is None:
        return ProbeResult(address, None, f"{seen}, unit {node.shown}; the signal sets no `unit`")
    if units.same_unit(node.code, unit):
        return ProbeResult(address, None, f"{seen}, unit {node.shown}")
    raw = scale != 1.0 or offset != 0.0
    try:
        expected: units.Conversion | None = units.conversion(node.code, unit)
    except units.UnitError:
        expected = None
    if raw and expected is not None and _close(expected, scale, offset):
        return ProbeResult(address, None, f"{seen}, unit {node.shown}, scaled to {unit}")
    if raw and expected is None and units.kind_of(node.code) == "fraction":
        return ProbeResult(address, None, f"{seen}, unit {node.shown}, raw value scaled to {unit}")
    said = f"unit = {unit!r}, but the node's EngineeringUnits are {node.shown}"
    if raw and expected is not None:
        why = (
            f"{said}, and scale = {scale:g}, offset = {offset:g} do not convert {node.code} to "
            f"{unit}: set scale = {expected.scale:.12g}, offset = {expected.offset:.12g}, or "
            f"unit = {node.code!r} with to_unit = {unit!r} and no scale/offset"
        )
    elif expected is not None:
        why = (
            f"{said}: the server sends {node.code}; set unit = {node.code!r}, and "
            f"to_unit = {unit!r} to have the agent convert it"
        )
    else:
        why = (
            f"{said}, which measure {units.dimension_name(node.code)}, not "
            f"{units.dimension_name(unit)}: set unit = {node.code!r} (is `node` the right "
            "variable?)"
        )
    return UnitMismatch(address, why, seen)


def _close(expected: units.Conversion, scale: float, offset: float) -> bool:
    return math.isclose(expected.scale, scale, rel_tol=1e-6) and math.isclose(
        expected.offset, offset, rel_tol=1e-6, abs_tol=1e-9
    )
