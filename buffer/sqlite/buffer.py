"""`SqliteBuffer`: the seams composed into one buffer, and what joins them: append, stats, replay.

`append` is where the seams meet: the duplicate check (`buffer.sqlite.schema` ids), room making
(`buffer.sqlite.capacity`), the insert with the next seqs and `last_seq`, the eviction counts
and the source state (`buffer.sqlite.source_state`), all in one transaction; and, around it,
the disk-short and disk-full handling (delivered rows first, then the pending records' own
policies, at most `_DISK_FULL_ATTEMPTS` tries). The contract is the package docstring's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

from buffer.base import (
    AppendResult,
    BufferFull,
    BufferStats,
    Overflow,
    Record,
    SeqHoldings,
    StoredRecord,
)
from buffer.sqlite.capacity import CapacityMixin, count_evictions
from buffer.sqlite.core import read_counts
from buffer.sqlite.dead_letters import DeadLettersMixin
from buffer.sqlite.holdings import read_holdings
from buffer.sqlite.leasing import LeasingMixin
from buffer.sqlite.opening import OpeningMixin
from buffer.sqlite.schema import (
    ADD_HELD_IDS,
    COLUMNS,
    FIND_HELD_IDS,
    READ_COLUMNS,
    held_key,
    id_text,
    stored_id,
)
from buffer.sqlite.source_state import SourceStateMixin, write_state
from buffer.sqlite.statements import (
    PARAMS_PER_STATEMENT,
    DiskFull,
    classified,
    one,
    placeholders,
)

log = logging.getLogger(__name__)

# Deleted rows free pages for reuse, not always exactly as many bytes as the new rows need.
_DISK_SHORT_SLACK: Final = 2
_DISK_FULL_ATTEMPTS: Final = 5
_REPLAY_ROWS_PER_QUERY: Final = 1_000


class SqliteBuffer(OpeningMixin, CapacityMixin, LeasingMixin, DeadLettersMixin, SourceStateMixin):
    """The durable buffer on one SQLite file; see the package docstring for its contract.

    Open it with `async with SqliteBuffer.open(path) as buffer:`; the file is closed on exit.
    One process, one `SqliteBuffer` per file (holding the state dir is the caller's job).
    """

    async def append(
        self, records: Sequence[Record], state: Mapping[str, str | None] | None = None
    ) -> AppendResult:
        """Accept the records not yet held, in one transaction; see the package docstring.
        `state`: source state entries written in the same transaction (None deletes a key);
        they are written even when every record is a duplicate."""
        batch: dict[str, Record] = {}
        for record in records:
            batch.setdefault(record.id, record)
        # Before the transaction: if it commits but this call is cancelled, lease still
        # finds these priorities. If it rolls back, a stale entry costs one empty query.
        self._priorities.update(record.priority for record in batch.values())
        incoming = sum(len(r.body) for r in batch.values())
        slack = _DISK_SHORT_SLACK
        disk_short = False
        if await self._disk_is_short():
            # Delivered rows go first, in their own transaction: freed pages stay free.
            disk_short = await self._drop_retained_now(incoming * slack) < incoming
        for _attempt in range(_DISK_FULL_ATTEMPTS):
            try:
                result = await self._append(
                    batch, len(records), state or {}, disk_short=disk_short, slack=slack
                )
            except DiskFull as error:
                if not self._disk_full_said:  # once per episode; the caller counts retries
                    self._disk_full_said = True
                    log.warning("buffer %s: disk full (%s); making room", self.path, error)
                if await self._drop_retained_now(incoming * slack) < incoming:
                    disk_short = True  # pending records must make the room
                slack *= 2  # freed rows and new rows do not map to pages one to one
                continue
            if self._disk_full_said:
                self._disk_full_said = False
                log.warning("buffer %s: the disk has room again", self.path)
            return result
        raise BufferFull(f"{self.path}: the disk is full and nothing more may be evicted")

    async def _append(
        self,
        batch: dict[str, Record],
        offered: int,
        state: Mapping[str, str | None],
        *,
        disk_short: bool,
        slack: int,
    ) -> AppendResult:
        batch = dict(batch)
        overflow: list[Overflow] = []
        async with self._transaction("append") as db:
            last_seq = self._last_seq
            if last_seq is None:
                (value,) = one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                last_seq = int(value)
            keys = {record_id: stored_id(record_id) for record_id in batch}
            # A UUID id is looked up as stored now (16 bytes) and as older agents stored it
            # (text): a file written before the upgrade still recognises its ids.
            lookups = list({held_key(key) for key in keys.values()})
            if self._text_uuid_ids:
                lookups += [i for i, key in keys.items() if key is not i]
            for start in range(0, len(lookups), PARAMS_PER_STATEMENT):
                chunk = lookups[start : start + PARAMS_PER_STATEMENT]
                rows = await db.execute_fetchall(
                    FIND_HELD_IDS.format(keys=placeholders(len(chunk))), chunk
                )
                # The ids of the rows whose key matched: popping one that was not offered
                # (another id with the same key) changes nothing.
                for (held_id,) in rows:
                    batch.pop(id_text(held_id), None)
            duplicates = offered - len(batch)
            kept = list(batch.values())
            if kept:
                kept, overflow = await self._make_room(db, kept, disk_short=disk_short, slack=slack)
            if kept:
                now = self._clock()
                await db.executemany(
                    f"INSERT INTO log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (last_seq + offset, keys[r.id], r.kind, r.priority, r.body, now)
                        for offset, r in enumerate(kept, start=1)
                    ],
                )
                await db.execute(ADD_HELD_IDS, (last_seq,))
                last_seq += len(kept)
                await db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq,))
            if overflow:
                await count_evictions(db, overflow)
            if state:
                await write_state(db, state, self._clock())
        self._last_seq = self._known_last_seq = last_seq
        for record in kept:
            self._pending_count[record.priority] = self._pending_count.get(record.priority, 0) + 1
            self._pending_bytes[record.priority] = self._pending_bytes.get(
                record.priority, 0
            ) + len(record.body)
        return AppendResult(
            accepted=len(kept), duplicates=duplicates, last_seq=last_seq, overflow=tuple(overflow)
        )

    async def retained(
        self,
        *,
        since: float,
        until: float | None = None,
        kind: str | None = None,
        seqs: tuple[int, int] | None = None,
    ) -> AsyncIterator[list[StoredRecord]]:
        """Delivered records still retained, accepted in [since, until), in seq order, in chunks.

        `kind` matches a stored kind exactly or its unversioned name (`telemetry` matches
        `telemetry.v1`); `seqs` (first, last) keeps those with a seq in that inclusive range."""
        after = 0 if seqs is None else max(0, seqs[0] - 1)
        while True:
            clauses = ["acked_at IS NOT NULL", "seq > ?", "accepted_at >= ?"]
            params: list[Any] = [after, since]
            if seqs is not None:
                clauses.append("seq <= ?")
                params.append(seqs[1])
            if until is not None:
                clauses.append("accepted_at < ?")
                params.append(until)
            if kind is not None:
                clauses.append("(kind = ? OR kind LIKE ? ESCAPE '\\')")
                params += [kind, kind.replace("_", "\\_").replace("%", "\\%") + ".v%"]
            async with self._lock:
                with classified(self.path, "retained"):
                    rows = await self._db.execute_fetchall(
                        f"SELECT {READ_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
                        " ORDER BY seq LIMIT ?",
                        (*params, _REPLAY_ROWS_PER_QUERY),
                    )
            records = [StoredRecord(*row) for row in rows]
            if not records:
                return
            yield records
            after = records[-1].seq

    async def holdings(self, first: int, last: int) -> SeqHoldings:
        """What the file holds of the seqs `first`..`last` (`buffer.sqlite.holdings`)."""
        async with self._transaction("holdings", write=False) as db:
            (last_seq,) = one(
                await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
            )
            return await read_holdings(db, first, last, int(last_seq))

    async def stats(self) -> BufferStats:
        """Exact counts, from one consistent snapshot of the file."""
        async with self._transaction("stats", write=False) as db:
            held, acked_counts = await read_counts(db, with_bytes=False)
            pending = {
                p: n - acked_counts.get(p, (0, 0))[0]
                for p, (n, _) in held.items()
                if n > acked_counts.get(p, (0, 0))[0]
            }
            # The lowest pending seq of each priority: the first row of its first gap between
            # acked runs that has one (`_oldest_pending`; the in-memory runs are this
            # snapshot's: they change only in writers' transactions, which hold this lock).
            oldest: dict[int, tuple[int, float]] = {}
            for priority in pending:
                for seq, accepted_at in await self._oldest_pending(
                    db, priority, "seq, accepted_at", 1
                ):
                    oldest[priority] = (int(seq), float(accepted_at))
            oldest_by_priority = {p: at for p, (_seq, at) in oldest.items()}
            oldest_at = min(oldest.values())[1] if oldest else None
            dead, last_seq = one(
                await db.execute_fetchall(
                    "SELECT (SELECT count(*) FROM dead_letters),"
                    " (SELECT value FROM meta WHERE key = 'last_seq')"
                )
            )
            # The first row of the earliest acked run that still has one (a pass over
            # `acks`, one seek per run: no pass over the retained rows).
            first_retained = list(
                await db.execute_fetchall(
                    "SELECT (SELECT accepted_at FROM log WHERE seq BETWEEN acks.first_seq"
                    " AND acks.last_seq ORDER BY seq LIMIT 1) AS accepted_at FROM acks"
                    " WHERE accepted_at IS NOT NULL ORDER BY acks.acked_at, acks.first_seq LIMIT 1"
                )
            )
            oldest_retained = first_retained[0][0] if first_retained else None
            acked = sum(n for n, _ in acked_counts.values())
            evictions = {
                (int(priority), str(kind), str(reason)): int(count)
                for priority, kind, reason, count in await db.execute_fetchall(
                    "SELECT priority, kind, reason, count FROM evictions"
                )
            }
        return BufferStats(
            pending=sum(pending.values()),
            pending_by_priority=pending,
            # The oldest by acceptance order: the lowest pending seq.
            oldest_pending_at=None if oldest_at is None else float(oldest_at),
            acked_retained=int(acked),
            dead_letters=int(dead),
            last_seq=int(last_seq),
            file_bytes=await asyncio.to_thread(self._file_bytes),
            pending_bytes=sum(self._pending_bytes.values()),
            retained_bytes=self._retained_bytes,
            oldest_retained_at=None if oldest_retained is None else float(oldest_retained),
            evictions=evictions,
            oldest_pending_by_priority=oldest_by_priority,
        )

    def _file_bytes(self) -> int:
        total = 0
        for file in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += file.stat().st_size
            except FileNotFoundError:
                pass
        return total
