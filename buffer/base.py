"""The buffer contract: a durable, ordered queue of opaque records with exactly-once acceptance.

The buffer knows nothing about events, MQTT or sources: it stores bytes with a few keys.

- `append` accepts a batch in one transaction. A record whose `id` the buffer already holds
  (pending, or delivered and still retained) is a duplicate: it is skipped and uses no `seq`.
  Each accepted record gets the next `seq` of this buffer: 1, 2, 3, ... with no gaps, ever,
  across restarts. A record is *accepted* exactly when `append` returns.
- `lease` hands out pending records, highest `priority` first, then by `seq`, each at most once
  until `rewind` (after a reconnect, everything not yet acked is leased again).
- `ack` marks records delivered; they stay for the retention window (so repeats of their id are
  still recognised, and they can be replayed) and are then purged.
- `dead_letter` moves records that can never be delivered aside, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Record:
    """A record offered to the buffer."""

    id: str
    kind: str
    priority: int
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record the buffer accepted."""

    seq: int
    id: str
    kind: str
    priority: int
    body: bytes
    accepted_at: float


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class BufferStats:
    pending: int
    pending_by_priority: dict[int, int]
    oldest_pending_at: float | None
    acked_retained: int
    dead_letters: int
    last_seq: int
    file_bytes: int


class BufferError(Exception):
    """Base of the buffer's errors."""


class BufferCorrupt(BufferError):
    """The buffer file is not a usable buffer (not SQLite, failed integrity check, wrong schema)."""


class BufferLocked(BufferError):
    """Another process holds this state dir."""


class BufferUnavailable(BufferError):
    """The operation failed and changed nothing (disk full, I/O error, busy): retry with backoff."""


class Buffer(Protocol):
    async def append(self, records: Sequence[Record]) -> AppendResult: ...

    async def lease(self, limit: int) -> list[StoredRecord]: ...

    def rewind(self) -> None: ...

    async def ack(self, seqs: Sequence[int]) -> None: ...

    async def dead_letter(self, seqs: Sequence[int], reason: str) -> None: ...

    async def purge(self, now: float | None = None) -> int: ...

    async def stats(self) -> BufferStats: ...
