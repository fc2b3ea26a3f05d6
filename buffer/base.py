"""The buffer contract: a durable, ordered queue of opaque records with exactly-once acceptance.

The buffer knows nothing about events, MQTT or sources: it stores bytes with a few keys.

- `append` accepts a batch in one transaction. A record whose `id` the buffer already holds
  (pending, or delivered and still retained) is a duplicate: it is skipped and uses no `seq`.
  Each accepted record gets the next `seq` of this buffer: 1, 2, 3, ... with no gaps, ever,
  across restarts. A record is *accepted* exactly when `append` returns.
- Capacity (`Capacity`) counts only *pending* bytes. When a batch does not fit, the buffer first
  drops delivered-and-retained records (only when the disk itself is short), then applies each
  priority's `OverflowPolicy`: `evict_oldest` deletes that priority's oldest pending records,
  `sample` keeps one new record in N (and evicts the oldest for it), `refuse` turns new records
  away, `block` (the default) never loses anything: `append` raises `BufferFull` and accepts
  nothing, and the caller holds the records and retries (backpressure). What was given up is
  returned in `AppendResult.overflow` (and counted durably, see `BufferStats.evictions`).
  An evicted record had a `seq`: it is a gap the overflow report names (`Overflow.seq_ranges`).
- `lease` hands out pending records, each at most once until `rewind` (after a reconnect,
  everything not yet acked is leased again). Within one lane (`after_seq < seq <= up_to_seq`)
  and one priority, records come in `seq` order. Without `shares`, the highest priority first;
  with `shares` (priority -> weight), each lease is split between the priorities that have
  pending records in proportion to their weights, and what one leaves unused goes to the others:
  higher classes drain faster, none is starved.
- `ack` marks records delivered; they stay for the retention window (so repeats of their id are
  still recognised, and they can be replayed) and are then purged.
- `dead_letter` moves records that can never be delivered aside, with the reason.
- `retained` reads the delivered records still kept (`ack`, above) for a replay, by time or by
  seq range; `holdings` says what the buffer still holds of a seq range (retained, pending,
  dead-lettered, gone), so a replay by seq range can say exactly what it could not send;
  `retry_dead_letters` puts dead letters that had been accepted back in the queue.
- `set_aside` stores records that were never accepted (a reading the pipeline rejected) straight
  into the dead letters, with the reason: they get no `seq` (the gap-free sequence only numbers
  accepted records) and their id is not held (the same id may still be accepted later).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

OverflowPolicy = Literal["evict_oldest", "sample", "refuse", "block"]
OverflowReason = Literal["evicted", "sampled", "refused"]


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
class Capacity:
    """How much the buffer may hold, and what gives way when it is full.

    `max_pending_bytes`: bodies not yet delivered (None: no limit but the disk).
    `retained_max_bytes`: bodies delivered and kept for replay (purge trims the oldest).
    `disk_free_reserve_bytes`: when the file system has less free space than this, the buffer
    behaves as full (after dropping retained records first).
    `policies`: per priority; a priority not listed blocks (never loses a record).
    `sample_keep_one_in`: the N of the `sample` policy.
    """

    max_pending_bytes: int | None = None
    retained_max_bytes: int | None = None
    disk_free_reserve_bytes: int = 0
    policies: Mapping[int, OverflowPolicy] = field(default_factory=dict)
    sample_keep_one_in: int = 10

    def policy(self, priority: int) -> OverflowPolicy:
        return self.policies.get(priority, "block")


@dataclass(frozen=True, slots=True)
class Overflow:
    """Records of one priority and kind given up by one `append`.

    `evicted`: accepted earlier (they had these seqs), deleted before delivery.
    `sampled` / `refused`: offered now and never accepted (no seq).
    """

    priority: int
    kind: str
    reason: OverflowReason
    count: int
    seq_ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as listed (body left out); `seq` and `accepted_at` are None for a record
    set aside before it was accepted."""

    seq: int | None
    id: str
    kind: str
    priority: int
    size: int
    accepted_at: float | None
    reason: str
    dead_at: float


SeqRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SeqHoldings:
    """What the buffer holds of the seqs `first`..`last` (`Buffer.holdings`): each a tuple of
    inclusive (first, last) ranges, ascending, together exactly `first`..`last`.

    `retained`: delivered and still kept: what a replay sends. `pending`: not delivered yet
    (the forwarder sends them). `dead_letters`: accepted, then set aside (`dead_letter`).
    `gone`: accepted and no longer held: delivered and purged (past the retention), or evicted
    for room (an overflow report named those). `not_accepted`: above `last_seq`: no record
    had these seqs (yet)."""

    first: int
    last: int
    retained: SeqRanges = ()
    pending: SeqRanges = ()
    dead_letters: SeqRanges = ()
    gone: SeqRanges = ()
    not_accepted: SeqRanges = ()


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    last_seq: int
    overflow: tuple[Overflow, ...] = ()


@dataclass(frozen=True, slots=True)
class BufferStats:
    pending: int
    pending_by_priority: dict[int, int]
    oldest_pending_at: float | None
    acked_retained: int
    dead_letters: int
    last_seq: int
    file_bytes: int
    pending_bytes: int = 0
    retained_bytes: int = 0
    # The replay window: accepted_at of the oldest delivered record still retained.
    oldest_retained_at: float | None = None
    # (priority, kind, reason) -> how many, over the life of the file.
    evictions: dict[tuple[int, str, str], int] = field(default_factory=dict)
    # priority -> accepted_at of that priority's oldest pending record (lowest pending seq).
    oldest_pending_by_priority: dict[int, float] = field(default_factory=dict)


class BufferFailure(Exception):
    """Base of the buffer's errors: the buffer could not do what was asked. Its subclasses say
    what the caller must do. (Not `BufferError`: that name is a Python built-in.)"""


class BufferCorrupt(BufferFailure):
    """The buffer file is not a usable buffer (not SQLite, failed integrity check, wrong schema)."""


class BufferLocked(BufferFailure):
    """Another process holds this state dir."""


class BufferUnavailable(BufferFailure):
    """The operation failed and changed nothing (disk full, I/O error, busy): retry with backoff."""


class BufferFull(BufferUnavailable):
    """No room, and nothing may be given up for these records: nothing was accepted. Hold them,
    pause the sources (backpressure) and retry once the forwarder has delivered some."""


class Buffer(Protocol):
    @property
    def last_seq(self) -> int:
        """The highest seq known committed (a lower bound while a transaction is in doubt)."""
        ...

    async def append(
        self, records: Sequence[Record], state: Mapping[str, str | None] | None = None
    ) -> AppendResult:
        """Accept records and write source state entries (None deletes) atomically."""
        ...

    async def source_state(self, prefix: str) -> dict[str, str]:
        """The committed source state entries whose key starts with `prefix`."""
        ...

    async def note_identity(self, site: str, agent: str) -> list[tuple[int, str, str]]:
        """Record that records from the next seq on are accepted as `site`/`agent` (unless it
        is already the latest); return the history, `(from_seq, site, agent)` ascending."""
        ...

    async def identities(self) -> list[tuple[int, str, str]]:
        """The identity history recorded by `note_identity`."""
        ...

    async def drop_source_state(self, prefix: str, older_than: float) -> int:
        """Delete the entries under `prefix` last written before `older_than` (epoch s)."""
        ...

    async def lease(
        self,
        limit: int,
        *,
        after_seq: int = 0,
        up_to_seq: int | None = None,
        shares: Mapping[int, int] | None = None,
    ) -> list[StoredRecord]: ...

    def rewind(self) -> None: ...

    async def ack(self, seqs: Sequence[int]) -> None: ...

    async def dead_letter(self, seqs: Sequence[int], reason: str) -> None: ...

    async def set_aside(self, records: Sequence[Record], reason: str) -> None:
        """Store never-accepted records as dead letters (no seq) with the reason."""
        ...

    async def dead_letters(self, limit: int = 1_000) -> list[DeadLetter]:
        """The dead letters, in the order they were set aside (bodies left out)."""
        ...

    async def retry_dead_letters(self, seqs: Sequence[int] | None = None) -> tuple[int, int]:
        """Put the dead letters that had been accepted (all, or those with these seqs) back in
        the queue with their own seq and id, and rewind; return (moved back, dropped because
        their id is held again). Records set aside before acceptance stay where they are."""
        ...

    def retained(
        self,
        *,
        since: float,
        until: float | None = None,
        kind: str | None = None,
        seqs: tuple[int, int] | None = None,
    ) -> AsyncIterator[list[StoredRecord]]:
        """The delivered records still retained (what a replay sends), accepted in
        [since, until), in seq order, in chunks; `kind` matches a stored kind exactly or its
        unversioned name (`telemetry` matches `telemetry.v1`); `seqs` (first, last): only
        those with a seq in that inclusive range."""
        ...

    async def holdings(self, first: int, last: int) -> SeqHoldings:
        """What the buffer holds of the seqs `first`..`last` (1 <= first <= last), from one
        consistent read (`SeqHoldings`)."""
        ...

    async def purge(self, now: float | None = None) -> int: ...

    async def stats(self) -> BufferStats: ...
