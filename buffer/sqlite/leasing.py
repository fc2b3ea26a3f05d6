"""Leasing and acks: handing pending records to the forwarder, and settling what was delivered.

Invariant 4 of the package docstring, and its sections "Why leases read on their own
connection" and "Why leases live in memory": `lease` reads committed rows on the query-only
connection, in lanes (`after_seq < seq <= up_to_seq`) and priorities, each row at most once
until `rewind`; the cursors (per priority and lane start, the highest seq handed out) and the
lanes found empty live in memory only. `ack` marks rows delivered by seq ranges; when the disk
is full it deletes them instead (delivered is delivered; they are then not kept for replay,
and counted with reason `retained`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from buffer.base import StoredRecord
from buffer.sqlite.capacity import count_retained_drops
from buffer.sqlite.core import SqliteBufferCore
from buffer.sqlite.schema import COLUMNS, id_text
from buffer.sqlite.statements import DiskFull, chunks, classified, placeholders, seq_conditions

log = logging.getLogger(__name__)

_NO_UPPER_BOUND: Final = 2**62


class LeasingMixin(SqliteBufferCore):
    """`lease`, `rewind` and `ack`; see the module docstring."""

    async def lease(
        self,
        limit: int,
        *,
        after_seq: int = 0,
        up_to_seq: int | None = None,
        shares: Mapping[int, int] | None = None,
    ) -> list[StoredRecord]:
        """Up to `limit` pending records of the lane `after_seq < seq <= up_to_seq` not leased
        since the last rewind; see `buffer.base` for the order and `shares`."""
        leased: list[StoredRecord] = []
        if limit <= 0:
            return leased
        rewinds = self._rewinds
        upper = _NO_UPPER_BOUND if up_to_seq is None else up_to_seq
        # Leases take turns among themselves, not with writers: they read committed rows on
        # `_reader` (or hold the writers' lock too when there is only one connection).
        lock = self._lock if self._reader is self._db else contextlib.nullcontext()
        async with self._lease_lock, lock:
            with classified(self.path, "lease"):
                priorities = sorted(self._priorities, reverse=True)
                rounds: list[dict[int, int]] = []
                if shares:
                    active = [p for p in priorities if self._pending_count.get(p, 1) > 0]
                    total = sum(max(1, shares.get(p, 1)) for p in active) or 1
                    rounds.append(
                        {p: max(1, limit * max(1, shares.get(p, 1)) // total) for p in active}
                    )
                rounds.append({p: limit for p in priorities})  # what is left, highest first
                for quotas in rounds:
                    # One statement per round: a part per priority, highest first, each asking
                    # for as much as it could get; what goes over `limit` is cut below, lowest
                    # priority first, and stays unleased.
                    parts: list[tuple[int, int, int]] = []  # (priority, after, room)
                    room_left = limit - len(leased)
                    if room_left <= 0:
                        break
                    for priority, quota in quotas.items():
                        if self._exhausted(priority, after_seq, upper):
                            continue
                        cursor = self._leased_up_to.get((priority, after_seq), 0)
                        parts.append((priority, max(after_seq, cursor), min(quota, room_left)))
                    if not parts:
                        continue
                    # Taken before the query starts its snapshot: every row up to it is seen.
                    last_seq = self._last_seq
                    rows = await self._reader.execute_fetchall(
                        " UNION ALL ".join(
                            f"SELECT * FROM (SELECT {COLUMNS} FROM events"
                            " WHERE acked_at IS NULL"
                            " AND priority = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?)"
                            for _ in parts
                        ),
                        [v for p, after, room in parts for v in (p, after, upper, room)],
                    )
                    order = {part[0]: index for index, part in enumerate(parts)}
                    # Stable: each part keeps its seq order.
                    ordered = sorted(rows, key=lambda row: order[row[3]])
                    batch = [
                        StoredRecord(seq, id_text(key), kind, priority, body, accepted_at)
                        for seq, key, kind, priority, body, accepted_at in ordered[:room_left]
                    ]
                    cut = {row[3] for row in ordered[room_left:]}
                    # A rewind while this query ran wins: these rows count as not leased.
                    if self._rewinds == rewinds:
                        got: dict[int, int] = defaultdict(int)
                        for record in batch:
                            got[record.priority] += 1
                            self._leased_up_to[(record.priority, after_seq)] = record.seq
                        for priority, _after, room in parts:
                            if got[priority] < room and priority not in cut and (
                                last_seq is not None
                            ):
                                # Nothing more of this priority in the lane up to last_seq.
                                self._lane_drained[(priority, after_seq, upper)] = last_seq
                    leased += batch
        return leased

    def _exhausted(self, priority: int, after_seq: int, upper: int) -> bool:
        """True when a lease found no more pending rows of `priority` in this lane and nothing
        was accepted since (every new row has a higher seq than the last_seq of then): the
        lane has nothing to lease, no query needed. `rewind` (and any transaction that did not
        finish cleanly, which leaves `_last_seq` unknown) forgets this."""
        drained_at = self._lane_drained.get((priority, after_seq, upper))
        return drained_at is not None and drained_at == self._last_seq

    def rewind(self) -> None:
        """Forget all leases: every record not acked is leased again, in lease order."""
        self._leased_up_to.clear()
        self._lane_drained.clear()
        self._rewinds += 1

    async def ack(self, seqs: Sequence[int]) -> None:
        """Mark these records delivered. Unknown, acked or dead-lettered seqs are ignored."""
        if not seqs:
            return
        now = self._clock()
        settled: list[Any] = []
        try:
            async with self._transaction("ack") as db:
                # By seq ranges (a PUBACKed message, and the messages acked together, are
                # mostly runs of consecutive seqs): one statement per few hundred ranges, and
                # the counts come back per priority, not per row.
                for where, params in seq_conditions(seqs):
                    settled += await db.execute_fetchall(
                        "SELECT priority, count(*), coalesce(sum(length(body)), 0) FROM events"
                        f" WHERE acked_at IS NULL AND ({where}) GROUP BY priority",
                        params,
                    )
                    await db.execute(
                        f"UPDATE events SET acked_at = ? WHERE acked_at IS NULL AND ({where})",
                        (now, *params),
                    )
        except DiskFull:
            # Marking rows takes pages (index entries); deleting them frees pages. Delivered
            # is delivered: when the disk is full these are not retained for replay.
            settled = []
            async with self._transaction("ack") as db:
                for chunk in chunks(seqs):
                    settled += await db.execute_fetchall(
                        "DELETE FROM events"
                        f" WHERE acked_at IS NULL AND seq IN ({placeholders(len(chunk))})"
                        " RETURNING priority, length(body), kind",
                        tuple(chunk),
                    )
                dropped: dict[tuple[int, str], int] = defaultdict(int)
                for priority, _size, kind in settled:
                    dropped[(int(priority), str(kind))] += 1
                await count_retained_drops(db, dropped)
            log.warning(
                "buffer %s: disk full: %d delivered record(s) not kept for replay",
                self.path, len(settled),
            )
            self._settle([(row[0], 1, row[1]) for row in settled], retained=False)
            return
        self._settle(settled, retained=True)
