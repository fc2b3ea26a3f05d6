"""Source state and identities: what a source and an agent must remember with the records.

See the package docstring (`source_state` and `identities`). `write_state` runs inside the
`append` transaction, so a source's cursor and the records it passed commit together;
`note_identity` records under which site and agent id the records from the next seq on are
accepted, which publishers splice back into the bodies (`events.wire`).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiosqlite

from buffer.sqlite.core import SqliteBufferCore
from buffer.sqlite.statements import one


class SourceStateMixin(SqliteBufferCore):
    """`source_state`, `drop_source_state`, `note_identity` and `identities`."""

    async def source_state(self, prefix: str) -> dict[str, str]:
        """The committed source state entries whose key starts with `prefix`."""
        async with self._transaction("source_state", write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT key, value FROM source_state WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            )
        return {str(key): str(value) for key, value in rows}

    async def drop_source_state(self, prefix: str, older_than: float) -> int:
        """Delete the entries under `prefix` last written before `older_than` (epoch s)."""
        async with self._transaction("drop_source_state") as db:
            cursor = await db.execute(
                "DELETE FROM source_state WHERE substr(key, 1, ?) = ? AND updated_at < ?",
                (len(prefix), prefix, older_than),
            )
            return int(cursor.rowcount)

    async def note_identity(self, site: str, agent: str) -> list[tuple[int, str, str]]:
        """Record that records from the next seq on are accepted as `site`/`agent`, unless
        that is already the latest identity; return the whole history, `(from_seq, site,
        agent)` ascending. A file's first identity covers every record before it (from seq 0:
        agents before schema version 5 spliced their current identity in, as this one does)."""
        async with self._transaction("note_identity") as db:
            history = await read_identities(db)
            if not history or history[-1][1:] != (site, agent):
                (value,) = one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                from_seq = int(value) + 1 if history else 0
                await db.execute(
                    "INSERT OR REPLACE INTO identities (from_seq, site, agent) VALUES (?, ?, ?)",
                    (from_seq, site, agent),
                )
                history = await read_identities(db)
        return history

    async def identities(self) -> list[tuple[int, str, str]]:
        """The identity history (`note_identity`), `(from_seq, site, agent)` ascending."""
        async with self._transaction("identities", write=False) as db:
            return await read_identities(db)


async def read_identities(db: aiosqlite.Connection) -> list[tuple[int, str, str]]:
    rows = await db.execute_fetchall(
        "SELECT from_seq, site, agent FROM identities ORDER BY from_seq"
    )
    return [(int(seq), str(site), str(agent)) for seq, site, agent in rows]


async def write_state(
    db: aiosqlite.Connection, state: Mapping[str, str | None], now: float
) -> None:
    await db.executemany(
        "DELETE FROM source_state WHERE key = ?",
        [(key,) for key, value in state.items() if value is None],
    )
    await db.executemany(
        "INSERT INTO source_state (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(key, value, now) for key, value in state.items() if value is not None],
    )
