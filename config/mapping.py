"""The mapping part of the config: how plant signals become canonical events.

What an OT engineer writes (see README "Mapping: from plant signals to one language"):

- per signal (`[[sources.signals]]`): `event`, `asset`, `name`, the source `unit` and an
  enterprise `to_unit`, `scale`/`offset`/`clamp`/`decimals` for raw PLC values, `states` for
  machine.state, `rollover` for counters, `trigger` (threshold with hysteresis, or a boolean)
  for quality.alert and machine.downtime, `reason` and `workorder` naming sibling signals of the
  same asset, `lookup` naming a master-data table, `context` for signals that say which work
  order or product the asset is on;
- `[units]`: the enterprise unit of each kind of quantity (`temperature = "Cel"`), applied to
  every signal with a unit of that kind and no `to_unit`;
- `[lookups.NAME]`: master-data tables (inline `entries` and/or a CSV `file`) and what to do
  with a code that is not in them (`unmapped = "flag"` or `"dead-letter"`);
- `[assets."line1"]`: the ISA-95 path (enterprise/site/area/line[/cell]) of an asset; a signal's
  asset resolves to the longest configured prefix, e.g. "line1/filler" under "line1".

Invariants:
- Everything that can be checked without a live server is checked at load time and reported on
  the key it concerns (file, line and key path via `config.loader`): unknown units, units that
  cannot be converted, keys that do not apply to the signal's event, references to unknown
  lookups or sibling signals, unreadable lookup files. `cross_check` does the checks that need
  more than one section; `AgentConfig` raises its findings with their exact key paths.
- Lookup files are read here, once, at load time (relative to the config file's directory when
  the loader passes `config_dir` in the validation context); the mapper never does I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from config import units
from config.fields import STRICT
from config.masterdata import CsvTableError, read_csv_table
from events.kinds import EventKind, MachineState

AssetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]
LookupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SignalRef = Annotated[str, Field(min_length=1, max_length=200)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


RECORD_ONLY_EVENTS = (
    EventKind.WORKORDER_RELEASED,
    EventKind.QUALITY_HOLD,
    EventKind.INVENTORY_ADJUSTED,
    EventKind.MATERIAL_CONSUMED,
    EventKind.SHIPMENT_CONFIRMED,
    EventKind.ASN_RECEIVED,
    EventKind.INVOICE_POSTED,
    EventKind.MATERIAL_PRODUCED,
)
NUMERIC_EVENTS = (EventKind.TELEMETRY, EventKind.QUALITY_ALERT, EventKind.MACHINE_DOWNTIME)
TRIGGERED_EVENTS = (EventKind.QUALITY_ALERT, EventKind.MACHINE_DOWNTIME)


@dataclass(frozen=True, slots=True)
class Problem:
    """A finding on one key: where (its key path) and what is wrong."""

    loc: tuple[str | int, ...]
    message: str
    value: object


class Trigger(BaseModel):
    """When a quality.alert or machine.downtime is active (its start) and when it ends.

    `above = 80.0, hysteresis = 2.0`: starts when the value goes above 80, ends when it falls
    below 78. `below = 5.0`: starts below 5. `when = true`: a boolean signal, active while it has
    that value. Limits are in the unit the event carries (after `to_unit` conversion).
    """

    model_config = STRICT

    above: FiniteFloat | None = None
    below: FiniteFloat | None = None
    hysteresis: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    when: bool | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Trigger:
        given = [key for key in ("above", "below", "when") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `above`, `below` (a number limit) or `when` (true/false for "
                f"a boolean signal); got {', '.join(given) or 'none'}"
            )
        if self.when is not None and self.hysteresis:
            raise ValueError("`hysteresis` applies to `above`/`below` limits, not to `when`")
        return self


class WorkorderFields(BaseModel):
    """Sibling signals (by name, same asset) whose latest values form a workorder.completed."""

    model_config = STRICT

    order: SignalRef
    good: SignalRef | None = None
    scrap: SignalRef | None = None
    product: SignalRef | None = None


class SignalMapping(BaseModel):
    """How one signal becomes canonical events (pure; see `agent.flow.mapping`)."""

    model_config = STRICT

    event: EventKind | None = None
    asset: AssetName
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    unit: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    to_unit: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    scale: FiniteFloat = 1.0
    offset: FiniteFloat = 0.0
    clamp: tuple[FiniteFloat, FiniteFloat] | None = None
    decimals: Annotated[int, Field(ge=0, le=12)] | None = None
    states: dict[str, MachineState] | None = None
    rollover: Annotated[int, Field(ge=1)] | None = None
    trigger: Trigger | None = None
    severity: Literal["info", "warning", "critical"] | None = None
    reason: SignalRef | None = None
    workorder: WorkorderFields | None = None
    lookup: LookupName | None = None
    context: Literal["workorder", "product"] | None = None

    @field_validator("unit", "to_unit")
    @classmethod
    def _known_unit(cls, code: str | None) -> str | None:
        if code is not None:
            units.unit(code)  # UnitError (a ValueError) names the code and the closest match
        return code

    @field_validator("clamp")
    @classmethod
    def _ordered_clamp(
        cls, clamp: tuple[float, float] | None
    ) -> tuple[float, float] | None:
        if clamp is not None and clamp[0] > clamp[1]:
            raise ValueError(f"expected [min, max] with min <= max, got {list(clamp)}")
        return clamp

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, scale: float) -> float:
        if scale == 0:
            raise ValueError("`scale` 0 would turn every value into `offset`")
        return scale

    @model_validator(mode="after")
    def _fields_fit_event(self) -> SignalMapping:
        event = self.event
        if event is EventKind.RECORD_REJECTED:
            raise ValueError(
                "record.rejected events are made by the agent from MES records it cannot "
                "take; no signal feeds them"
            )
        if event in RECORD_ONLY_EVENTS:
            raise ValueError(
                f"{event.value} events come from MES records (a mes-files, mes-http or mes-sql "
                "source), not from a signal"
            )
        if event is EventKind.MACHINE_STATE and not self.states:
            raise ValueError(
                "a machine.state signal needs `states`, a table from raw value to one of "
                "running/idle/down/fault, e.g. states = { 0 = \"idle\", 1 = \"running\" }"
            )
        if event is EventKind.WORKORDER_COMPLETED and self.workorder is None:
            raise ValueError(
                "a workorder.completed signal (the order's done bit) needs `workorder`, e.g. "
                "workorder = { order = \"order_id\", good = \"good_count\", scrap = \"scrap\" }"
            )
        misplaced = list(self._misplaced_keys())
        if misplaced:
            raise _key_errors(
                [
                    Problem((key,), why, getattr(self, key))
                    for key, why in misplaced
                ]
            )
        return self

    def _misplaced_keys(self) -> Iterator[tuple[str, str]]:
        event = self.event
        what = f"{event} signals" if event is not None else "signals without `event`"
        numeric = event in NUMERIC_EVENTS or (event is None and self.context is None)
        only = {
            "states": (event is EventKind.MACHINE_STATE, "machine.state"),
            "rollover": (event is EventKind.PRODUCTION_COUNT, "production.count"),
            "trigger": (
                event in TRIGGERED_EVENTS or event is EventKind.TELEMETRY,
                "telemetry (which then also feeds quality.alert), quality.alert and "
                "machine.downtime",
            ),
            "severity": (
                event is EventKind.QUALITY_ALERT
                or (event is EventKind.TELEMETRY and self.trigger is not None),
                "quality.alert (and telemetry with a `trigger`)",
            ),
            "reason": (event is EventKind.MACHINE_DOWNTIME, "machine.downtime"),
            "workorder": (event is EventKind.WORKORDER_COMPLETED, "workorder.completed"),
        }
        for key, (fits, where) in only.items():
            if getattr(self, key) is not None and not fits:
                yield key, f"`{key}` only applies to {where} signals, not to {what}"
        measured = {
            "unit": self.unit is not None,
            "to_unit": self.to_unit is not None,
            "clamp": self.clamp is not None,
            "decimals": self.decimals is not None,
            "scale": self.scale != 1.0,
            "offset": self.offset != 0.0,
        }
        for key, given in measured.items():
            if given and not numeric:
                yield key, f"`{key}` applies to measured values (telemetry, quality.alert, " + (
                    f"machine.downtime), not to {what}"
                )
        if self.to_unit is not None and self.unit is None and numeric:
            yield "to_unit", "`to_unit` needs the source `unit` to convert from"
        elif self.to_unit is not None and self.unit is not None:
            try:
                units.conversion(self.unit, self.to_unit)
            except units.UnitError as error:
                yield "to_unit", str(error)
        if self.lookup is not None and event is not None:
            yield "lookup", (
                "`lookup` translates the codes of a signal without `event`: a `context` signal, "
                f"a downtime `reason` or a work order's `product`; not of {what}"
            )
        if self.context is not None and event is not None:
            yield "context", (
                "a `context` signal only sets the asset's current work order or product; "
                f"remove `event` ({event}) or use a separate signal"
            )
        if event is EventKind.TELEMETRY and self.trigger is not None and (
            self.trigger.when is not None
        ):
            yield "trigger", "a telemetry value is a number: use `above` or `below`, not `when`"


class UnitsSection(BaseModel):
    """The enterprise unit of each kind of quantity (optional; default: keep the source unit)."""

    model_config = STRICT

    temperature: str | None = None
    pressure: str | None = None
    mass: str | None = None
    volume: str | None = None
    length: str | None = None
    duration: str | None = None
    rate: str | None = None
    mass_flow: str | None = None
    volume_flow: str | None = None
    speed: str | None = None
    energy: str | None = None
    power: str | None = None
    current: str | None = None
    voltage: str | None = None
    force: str | None = None
    density: str | None = None
    fraction: str | None = None

    @field_validator("*")
    @classmethod
    def _unit_of_its_kind(cls, code: str | None, info: ValidationInfo) -> str | None:
        if code is None:
            return None
        kind = units.kind_of(code)
        if kind != info.field_name:
            raise ValueError(f"{code!r} is a unit of {kind}, not of {info.field_name}")
        return code

    def target_for(self, code: str) -> str:
        """The enterprise unit for values measured in `code`."""
        # A kind without a `[units]` key (an area, `{rpm}`) keeps its unit.
        target: str | None = getattr(self, units.kind_of(code), None)
        return target or code


class LookupTable(BaseModel):
    """A master-data table: plant code -> enterprise code."""

    model_config = STRICT

    file: Path | None = None
    entries: dict[str, Annotated[str, Field(min_length=1)]] = {}
    unmapped: Literal["flag", "dead-letter"] = "flag"
    _codes: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("file")
    @classmethod
    def _readable_csv(cls, file: Path | None, info: ValidationInfo) -> Path | None:
        if file is None:
            return None
        if not file.is_absolute():
            base = (info.context or {}).get("config_dir")
            file = (Path(base) if base is not None else Path.cwd()) / file
        read_csv_table(file)  # CsvTableError (a ValueError) names the file, line and problem
        return file

    @model_validator(mode="after")
    def _load(self) -> LookupTable:
        if self.file is None and not self.entries:
            raise ValueError("a lookup needs `entries = { ... }`, a CSV `file`, or both")
        codes: dict[str, str] = {}
        if self.file is not None:
            try:
                codes.update(read_csv_table(self.file))
            except CsvTableError as error:  # changed since the field check: report it here
                raise ValueError(str(error)) from error
        codes.update({key.strip(): value for key, value in self.entries.items()})
        self._codes = codes
        return self

    @property
    def codes(self) -> dict[str, str]:
        return self._codes


class AssetSection(BaseModel):
    """Where an asset sits in the enterprise: an ISA-95 path."""

    model_config = STRICT

    path: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){3,4}$",
            description="enterprise/site/area/line[/cell]",
        ),
    ]


def resolve_asset_path(assets: dict[str, AssetSection], asset: str) -> str | None:
    """The ISA-95 path of `asset`: its own entry, or the longest configured prefix's path with
    the remaining levels appended ("line1/filler" under [assets."line1"])."""
    levels = asset.split("/")
    for size in range(len(levels), 0, -1):
        entry = assets.get("/".join(levels[:size]))
        if entry is not None:
            return "/".join([entry.path, *levels[size:]])
    return None


def signal_name(signal: SignalMapping, address: str) -> str:
    return signal.name or address


def cross_check(
    *,
    lookups: dict[str, LookupTable],
    assets: dict[str, AssetSection],
    sources: Sequence[tuple[str, Sequence[tuple[str, SignalMapping]]]],
) -> list[Problem]:
    """Checks across sections. `sources` is [(source name, [(address, mapping), ...]), ...];
    each problem's `loc` starts at the file's root (`sources`, i, `signals`, j, key)."""
    problems: list[Problem] = []
    names_by_asset: dict[str, dict[str, SignalMapping]] = {}
    for i, (_, signals) in enumerate(sources):
        for j, (address, signal) in enumerate(signals):
            name = signal_name(signal, address)
            siblings = names_by_asset.setdefault(signal.asset, {})
            if name in siblings:
                problems.append(
                    Problem(
                        ("sources", i, "signals", j, "name" if signal.name else "node"),
                        f"asset {signal.asset!r} already has a signal named {name!r}; "
                        "give each signal of an asset its own `name`",
                        name,
                    )
                )
            siblings[name] = signal
    referenced: set[tuple[str, str]] = set()
    for i, (_, signals) in enumerate(sources):
        for j, (address, signal) in enumerate(signals):
            here = ("sources", i, "signals", j)
            siblings = names_by_asset[signal.asset]
            if signal.lookup is not None and signal.lookup not in lookups:
                known = ", ".join(sorted(lookups)) or "none defined"
                problems.append(
                    Problem(
                        (*here, "lookup"),
                        f"unknown lookup {signal.lookup!r} (define [lookups.{signal.lookup}]; "
                        f"known: {known})",
                        signal.lookup,
                    )
                )
            references: list[tuple[tuple[str, ...], str]] = []
            if signal.reason is not None:
                references.append((("reason",), signal.reason))
            if signal.workorder is not None:
                for key in ("order", "good", "scrap", "product"):
                    ref = getattr(signal.workorder, key)
                    if ref is not None:
                        references.append((("workorder", key), ref))
            for keys, ref in references:
                referenced.add((signal.asset, ref))
                if ref not in siblings:
                    known = ", ".join(sorted(siblings))
                    problems.append(
                        Problem(
                            (*here, *keys),
                            f"no signal named {ref!r} on asset {signal.asset!r} "
                            f"(its signals: {known})",
                            ref,
                        )
                    )
                elif ref == signal_name(signal, address):
                    problems.append(Problem((*here, *keys), "a signal cannot refer to itself", ref))
            if assets and resolve_asset_path(assets, signal.asset) is None:
                problems.append(
                    Problem(
                        (*here, "asset"),
                        f"asset {signal.asset!r} has no ISA-95 path: add "
                        f"[assets.\"{signal.asset}\"] or an entry for one of its parent levels",
                        signal.asset,
                    )
                )
    for i, (_, signals) in enumerate(sources):
        for j, (address, signal) in enumerate(signals):
            name = signal_name(signal, address)
            if signal.event is None and signal.context is None:
                if (signal.asset, name) not in referenced:
                    problems.append(
                        Problem(
                            ("sources", i, "signals", j),
                            f"signal {name!r} feeds nothing: give it an `event`, a `context` "
                            "(\"workorder\" or \"product\"), or refer to it by name from a "
                            "`reason` or `workorder` of another signal of its asset",
                            name,
                        )
                    )
    return problems


def _key_errors(problems: Sequence[Problem]) -> Exception:
    """A pydantic ValidationError whose errors sit on the problems' own key paths."""
    from pydantic import ValidationError
    from pydantic_core import InitErrorDetails, PydanticCustomError

    return ValidationError.from_exception_data(
        "mapping",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{message}", {"message": p.message}),
                loc=p.loc,
                input=p.value,
            )
            for p in problems
        ],
    )


def raise_problems(problems: Sequence[Problem]) -> None:
    if problems:
        raise _key_errors(problems)
