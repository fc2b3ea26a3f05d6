"""What tests of MES completions share since `workorder.completed.v3` (issue 16): the fields
a record that does not fill them leaves unset (null in the event's data), so an assertion on
a completion's whole data says what the record filled and that nothing else was."""

from __future__ import annotations

from typing import Any

# The v3 fields beyond v2's, unset (posting_date is left out: the agent fills it from the
# record's time in the source's time zone when the record gives none).
V3_UNSET: dict[str, Any] = {
    "operation": None, "work_center": None, "confirmation": None, "final": None,
    "scrap_reason": None, "rework": None, "rework_reason": None, "lot": None,
    "location": None, "started_at": None, "finished_at": None, "personnel": None,
}
