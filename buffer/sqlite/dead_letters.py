"""Dead letters: records given up after acceptance, and readings set aside before it.

See the package docstring (the `dead_letters` table, and what a dead letter with and without a
`seq` means). `dead_letter` moves pending rows aside with the reason (their seq becomes a gap
the consumer sees, their id is forgotten); `set_aside` stores never-accepted records (no seq,
no id held); `retry_dead_letters` puts the accepted kind back with its own seq and id (unless
that id is held again) and rewinds the leases, since those rows come back below the cursors;
`dead_letters` lists them in the order they were set aside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buffer.base import DeadLetter, Record
from buffer.sqlite.core import SqliteBufferCore
from buffer.sqlite.schema import (
    COLUMNS,
    FIND_HELD_IDS,
    HELD_KEY_SQL,
    ID_TEXT_SQL,
    held_key,
    id_text,
    stored_id,
)
from buffer.sqlite.statements import PARAMS_PER_STATEMENT, chunks, classified, placeholders

__all__ = ["DeadLetter", "DeadLettersMixin"]

HELD_KEY_ID = HELD_KEY_SQL.format(id="id")


class DeadLettersMixin(SqliteBufferCore):
    """`dead_letter`, `set_aside`, `dead_letters` and `retry_dead_letters`."""

    async def dead_letter(self, seqs: Sequence[int], reason: str) -> None:
        """Move these pending records to `dead_letters` with the reason, in one transaction.

        Unknown, acked or already dead-lettered seqs are ignored.
        """
        if not seqs:
            return
        now = self._clock()
        settled: list[Any] = []
        async with self._transaction("dead_letter") as db:
            # Pending: in `log` and not acked (the in-memory runs are this transaction's).
            pending = [seq for seq in sorted(set(seqs)) if seq not in self._acked]
            for chunk in chunks(pending):
                marks = placeholders(len(chunk))
                await db.execute(
                    f"INSERT INTO dead_letters ({COLUMNS}, reason, dead_at)"
                    f" SELECT {COLUMNS}, ?, ? FROM log WHERE seq IN ({marks})",
                    (reason, now, *chunk),
                )
                settled += await db.execute_fetchall(
                    f"DELETE FROM log WHERE seq IN ({marks}) RETURNING priority, 1, length(body)",
                    tuple(chunk),
                )
        self._settle(settled, retained=False)

    async def set_aside(self, records: Sequence[Record], reason: str) -> None:
        """Store records that were never accepted as dead letters with the reason, in one
        transaction: no seq (the gap-free sequence numbers accepted records only), no
        accepted_at, and their id is not held (the same id may be accepted later).

        Raises BufferUnavailable (nothing stored) on I/O errors or a full disk.
        """
        if not records:
            return
        now = self._clock()
        async with self._transaction("set_aside") as db:
            await db.executemany(
                "INSERT INTO dead_letters"
                " (seq, id, kind, priority, body, accepted_at, reason, dead_at)"
                " VALUES (NULL, ?, ?, ?, ?, NULL, ?, ?)",
                [(stored_id(r.id), r.kind, r.priority, r.body, reason, now) for r in records],
            )

    async def dead_letters(self, limit: int = 1_000) -> list[DeadLetter]:
        """The dead letters, oldest first (bodies left out)."""
        async with self._lock:
            with classified(self.path, "dead_letters"):
                rows = await self._db.execute_fetchall(
                    f"SELECT seq, {ID_TEXT_SQL}, kind, priority, length(body), accepted_at,"
                    " reason, dead_at FROM dead_letters ORDER BY number LIMIT ?",
                    (limit,),
                )
        return [DeadLetter(*row) for row in rows]

    async def retry_dead_letters(self, seqs: Sequence[int] | None = None) -> tuple[int, int]:
        """Put dead letters that had been accepted (all, or those with these seqs) back in the
        queue with their own seq and id.

        Records set aside before acceptance (`set_aside`, no seq) stay where they are: they
        were never accepted, and what they hold is for a person to read (the pipeline stores
        a description of a rejected reading there, not an event).
        Returns (moved back, dropped because their id is held again, i.e. the same fact was
        accepted again since). Capacity is not checked: a person asked for these records.
        """
        async with self._transaction("retry_dead_letters") as db:
            where, params = "WHERE seq IS NOT NULL", tuple[int, ...]()
            if seqs is not None:
                where, params = f"WHERE seq IN ({placeholders(len(seqs))})", tuple(seqs)
            rows = list(
                await db.execute_fetchall(f"SELECT {COLUMNS} FROM dead_letters {where}", params)
            )
            wanted = len(rows)
            # Held again: looked up in both stored forms (a dead letter set aside by an older
            # agent has its UUID id as text, `log` as 16 bytes, and the UNIQUE
            # index does not see those as equal).
            texts = {id_text(row[1]) for row in rows}
            lookups = [*{held_key(stored_id(text)) for text in texts}, *texts]
            held: set[str] = set()
            for start in range(0, len(lookups), PARAMS_PER_STATEMENT):
                chunk = lookups[start : start + PARAMS_PER_STATEMENT]
                found = await db.execute_fetchall(
                    FIND_HELD_IDS.format(keys=placeholders(len(chunk))), chunk
                )
                # Held ids whose key matched; only those among `texts` matter below.
                held.update(id_text(held_id) for (held_id,) in found)
            back = []
            for seq, record_id, kind, priority, body, accepted_at in rows:
                text = id_text(record_id)
                if text not in held:
                    held.add(text)  # the same fact twice among the dead letters: once
                    back.append((seq, stored_id(text), kind, priority, body, accepted_at))
            cursor = await db.executemany(
                f"INSERT OR IGNORE INTO log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", back
            )
            moved = max(cursor.rowcount, 0)
            for part in chunks([row[0] for row in back]):  # `HELD_IDS`: they are held again
                await db.execute(
                    f"INSERT OR IGNORE INTO temp.held_ids (key, seq) SELECT {HELD_KEY_ID}, seq"
                    f" FROM main.log WHERE seq IN ({placeholders(len(part))})",
                    tuple(part),
                )
            priorities = await db.execute_fetchall(
                f"SELECT DISTINCT priority FROM dead_letters {where}", params
            )
            await db.execute(f"DELETE FROM dead_letters {where}", params)
        self._priorities.update(int(row[0]) for row in priorities)
        self._counts_valid = False
        self.rewind()
        return moved, int(wanted) - moved
