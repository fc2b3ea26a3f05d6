"""The event filter of `mode = "events"` signals: which events a server sends, with which fields.

An OPC UA event filter (Part 4, 7.22.3) selects each field with a SimpleAttributeOperand: a
browse path *relative to a type* (`TypeDefinitionId`) and an attribute. asyncua builds its
select clauses by browsing the requested event types, and names BaseEventType as the type of
every one; with ConditionType (the connector's default event type) that browse never reaches
ActiveState or AckedState, which Part 9 defines further down, on AlarmConditionType and
AcknowledgeableConditionType. A node-opcua alarm then arrives with message, severity and
condition but with `active` and `acknowledged` empty.

Invariants:
- The standard fields (`STANDARD_FIELDS`) are always selected, each against the type that
  defines it (Part 5, 6.4.2 BaseEventType; Part 9, 5.5.2 ConditionType, 5.7.2
  AcknowledgeableConditionType, 5.8.2 AlarmConditionType), with its browse path relative to
  that type. A server returns null for a field the event's type does not have, so one filter
  serves plain events, conditions and alarms alike.
- The ConditionId (Part 9, 5.5.2: the NodeId attribute of the condition, empty browse path,
  ConditionType) is selected too, as asyncua does for condition types.
- Configured `event_types` add the fields asyncua's browse finds on them (a vendor's own
  fields) after the standard ones; a field is never selected twice (same browse path and
  attribute).
- The where clause keeps events of the configured types and their subtypes (ConditionType by
  default), as asyncua builds it from the server's type tree.
- asyncua names each field of a decoded event by its browse path's names joined with "/"
  ("ActiveState/Id"), or by the attribute's name for an empty path ("NodeId"); the connector
  reads the fields by those names.
"""

from __future__ import annotations

from collections.abc import Sequence

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.events import select_clauses_from_evtype, where_clause_from_evtype
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

# (type that defines the field, browse path relative to it), in the order they are selected.
STANDARD_FIELDS: tuple[tuple[int, str], ...] = (
    (ObjectIds.BaseEventType, "EventId"),
    (ObjectIds.BaseEventType, "EventType"),
    (ObjectIds.BaseEventType, "SourceNode"),
    (ObjectIds.BaseEventType, "SourceName"),
    (ObjectIds.BaseEventType, "Time"),
    (ObjectIds.BaseEventType, "ReceiveTime"),
    (ObjectIds.BaseEventType, "Message"),
    (ObjectIds.BaseEventType, "Severity"),
    (ObjectIds.ConditionType, "ConditionName"),
    (ObjectIds.ConditionType, "BranchId"),
    (ObjectIds.ConditionType, "Retain"),
    (ObjectIds.ConditionType, "EnabledState/Id"),
    (ObjectIds.AcknowledgeableConditionType, "AckedState/Id"),
    (ObjectIds.AcknowledgeableConditionType, "ConfirmedState/Id"),
    (ObjectIds.AlarmConditionType, "ActiveState/Id"),
    (ObjectIds.AlarmConditionType, "SuppressedState/Id"),
)
DEFAULT_EVENT_TYPE = ObjectIds.ConditionType


def standard_select_clauses() -> list[ua.SimpleAttributeOperand]:
    """The select clauses of `STANDARD_FIELDS`, then the ConditionId."""
    clauses = [
        _operand(type_id, [ua.QualifiedName(name, 0) for name in path.split("/")])
        for type_id, path in STANDARD_FIELDS
    ]
    clauses.append(_operand(ObjectIds.ConditionType, [], AttributeIds.NodeId))
    return clauses


async def event_filter(client: Client, event_types: Sequence[str]) -> ua.EventFilter:
    """The filter for an event signal with these configured `event_types` (NodeId texts;
    none: ConditionType and its subtypes). Browses the server's type tree."""
    type_ids = [ua.NodeId.from_string(text) for text in event_types]
    types = [client.get_node(type_id) for type_id in type_ids] or [
        client.get_node(ua.NodeId(ua.Int32(DEFAULT_EVENT_TYPE)))
    ]
    clauses = standard_select_clauses()
    if event_types:
        clauses.extend(await select_clauses_from_evtype(types))
    result = ua.EventFilter()
    result.SelectClauses = _without_repeats(clauses)
    result.WhereClause = await where_clause_from_evtype(types)
    return result


def _operand(
    type_id: int, path: list[ua.QualifiedName], attribute: int = AttributeIds.Value
) -> ua.SimpleAttributeOperand:
    operand = ua.SimpleAttributeOperand()
    operand.TypeDefinitionId = ua.NodeId(ua.Int32(type_id))
    operand.BrowsePath = path
    operand.AttributeId = attribute
    return operand


def _without_repeats(
    clauses: Sequence[ua.SimpleAttributeOperand],
) -> list[ua.SimpleAttributeOperand]:
    """The first clause of each (browse path, attribute): the standard fields come first, so
    they keep the type that defines them."""
    seen: set[tuple[str, int]] = set()
    kept: list[ua.SimpleAttributeOperand] = []
    for clause in clauses:
        key = ("/".join(str(name) for name in clause.BrowsePath), int(clause.AttributeId))
        if key not in seen:
            seen.add(key)
            kept.append(clause)
    return kept
