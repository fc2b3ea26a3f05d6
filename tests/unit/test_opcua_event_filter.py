"""The default event filter of OPC UA event signals names, for each field, the type that
defines it (pure: no server; the node-opcua test shows the effect on a real alarm)."""

from __future__ import annotations

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from connectors.opcua.event_filter import _without_repeats, standard_select_clauses


def by_path() -> dict[str, ua.SimpleAttributeOperand]:
    return {
        "/".join(name.Name for name in clause.BrowsePath): clause
        for clause in standard_select_clauses()
    }


def test_condition_fields_are_selected_against_the_type_that_defines_them() -> None:
    clauses = by_path()
    expected = {
        "Message": ObjectIds.BaseEventType,
        "Severity": ObjectIds.BaseEventType,
        "ConditionName": ObjectIds.ConditionType,
        "Retain": ObjectIds.ConditionType,
        "AckedState/Id": ObjectIds.AcknowledgeableConditionType,
        "ActiveState/Id": ObjectIds.AlarmConditionType,
    }
    for path, type_id in expected.items():
        assert clauses[path].TypeDefinitionId == ua.NodeId(ua.Int32(type_id)), path
        assert clauses[path].AttributeId == AttributeIds.Value, path
    assert [name.NamespaceIndex for name in clauses["ActiveState/Id"].BrowsePath] == [0, 0]


def test_the_condition_id_is_selected_and_no_field_twice() -> None:
    condition_id = by_path()[""]
    assert condition_id.AttributeId == AttributeIds.NodeId
    assert condition_id.TypeDefinitionId == ua.NodeId(ua.Int32(ObjectIds.ConditionType))
    # asyncua's own clause for the same field (against BaseEventType) does not replace ours.
    theirs = ua.SimpleAttributeOperand(
        TypeDefinitionId=ua.NodeId(ua.Int32(ObjectIds.BaseEventType)),
        BrowsePath=[ua.QualifiedName("ActiveState", 0), ua.QualifiedName("Id", 0)],
        AttributeId=AttributeIds.Value,
    )
    kept = _without_repeats([*standard_select_clauses(), theirs])
    assert len(kept) == len(standard_select_clauses())
    active = [c for c in kept if [n.Name for n in c.BrowsePath] == ["ActiveState", "Id"]]
    assert [c.TypeDefinitionId for c in active] == [
        ua.NodeId(ua.Int32(ObjectIds.AlarmConditionType))
    ]
