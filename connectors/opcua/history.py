"""Backfill: values a server historized while the agent had no session (HistoryRead, Part 11).

After a session gap, for each signal marked `backfill = true` whose last value the connector
knows, the connector reads the raw history from that value's source timestamp to now (at most
`backfill_max_s` back) and emits it, oldest first, as backfilled readings. The first value
returned is the one already seen, so it maps to the same event id and the buffer drops it;
the same holds for the current value the new subscription sends again. Nothing is doubled.

A server (or node) without history answers with a Bad status; that is reported once per
signal as a notice, never as a failure of the source.
"""

from __future__ import annotations

from datetime import datetime

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

_NO_HISTORY = {
    StatusCodes.BadHistoryOperationUnsupported,
    StatusCodes.BadHistoryOperationInvalid,
    StatusCodes.BadNotReadable,
    StatusCodes.BadNotSupported,
    StatusCodes.BadServiceUnsupported,
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadNodeIdUnknown,
}
_HISTORY_READ = 0x04  # AccessLevelType bit 2 (Part 3, 8.57)
# A bound on one backfill of one signal, so a long gap on a fast signal cannot flood memory.
MAX_VALUES_PER_SIGNAL = 100_000


class NoHistory(Exception):
    """The server keeps no readable history for this node; the message says what it answered."""


async def read_raw(
    client: Client, node_id: ua.NodeId, start: datetime, end: datetime
) -> list[ua.DataValue]:
    """Raw values of `node_id` with source timestamps in [start, end], oldest first."""
    node = client.get_node(node_id)
    access = await node.read_attribute(AttributeIds.UserAccessLevel)
    level = access.Value.Value if access.Value is not None else 0
    if not isinstance(level, int) or not level & _HISTORY_READ:
        # Some servers answer an empty, good HistoryRead for a node they do not historize.
        raise NoHistory("the node's access level does not allow HistoryRead")
    try:
        values = await node.read_raw_history(
            start, end, numvalues=MAX_VALUES_PER_SIGNAL, return_bounds=False
        )
    except UaStatusCodeError as error:
        if error.code in _NO_HISTORY:
            raise NoHistory(ua.StatusCode(error.code).name) from error
        raise
    def key(value: ua.DataValue) -> datetime:
        return value.SourceTimestamp or value.ServerTimestamp or start

    return sorted(values, key=key)
