"""Corrections: a business record sent again with the same business key and other content.

A record source may name a `business_key` (`connectors.records.RecordSettings`: event fields,
e.g. order + operation + confirmation number). The first record with a key is a fact; a later
one with the same key is, by its content (the event's data):

- the same content under the same event id: a re-read of the same record (after a crash): it
  goes to the buffer as it is, which drops it as a duplicate (as every repeat);
- the same content under another id (the same row in another export file, a re-post without
  the idempotency key): a repeat of the fact, dropped here and counted (`repeats_total`), so
  the hub never sees the fact twice;
- other content: a **correction**. Its event (its own id, from its own record) carries
  `supersedes`, the id of the event it replaces, and `supersedesreason` `"correction"`
  (counted: `corrections_total`). A consumer replaces the earlier fact with it, never adds both.

What is remembered, per key: the id of the key's latest event and the SHA-256 of its data,
in the buffer's source state (`{source}/bkey/{sha256 of signal and key values}`, JSON
`{"id", "hash"}`), written in the same transaction as the event itself (the pipeline passes
it as the commit's state): a crash either keeps both or neither, so a record re-read after a
crash is judged the same way again. A process-local cache in front of it is filled only from
committed state and from commits that succeeded (`committed`); one buffer read per key not yet
seen. The entries are small and kept as long as the buffer is; a key's entry is overwritten by
each correction.

Pure of I/O except `judge`'s reads of committed state (through `read_state`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from agent.flow.mapping import Mapper
from events.models import Event

CORRECTION = "correction"


@dataclass(frozen=True, slots=True)
class _Seen:
    id: str
    hash: str


@dataclass(slots=True)
class Corrections:
    """Judges each keyed record event of a commit (module docstring)."""

    mapper: Mapper
    read_state: Callable[[str], Awaitable[dict[str, str]]]
    corrections_total: int = 0
    repeats_total: int = 0
    _cache: dict[str, _Seen] = field(default_factory=dict)

    async def judge(self, events: list[Event]) -> tuple[list[Event], dict[str, str]]:
        """The events to append (repeats left out, corrections marked) and the state entries
        to commit with them. Call `committed` with those entries once the commit succeeded."""
        out: list[Event] = []
        staged: dict[str, _Seen] = {}
        for event in events:
            keyed = self.mapper.business_key(event)
            if keyed is None:
                out.append(event)
                continue
            key = state_key(*keyed)
            digest = content_hash(event.data)
            prior = staged.get(key) or await self._prior(key)
            if prior is not None and prior.id == event.id:
                out.append(event)  # the same record read again: the buffer drops it
                continue
            if prior is not None and prior.hash == digest:
                self.repeats_total += 1  # the same fact from another record: dropped
                continue
            if prior is not None:
                extensions = {
                    **event.extensions, "supersedes": prior.id, "supersedesreason": CORRECTION,
                }
                event = replace(event, extensions=extensions)
                self.corrections_total += 1
            staged[key] = _Seen(event.id, digest)
            out.append(event)
        entries = {key: json.dumps({"id": seen.id, "hash": seen.hash}) for key, seen in
                   staged.items()}
        return out, entries

    def committed(self, entries: Mapping[str, str]) -> None:
        """The entries `judge` returned are committed: remember them."""
        for key, text in entries.items():
            seen = _parse(text)
            if seen is not None:
                self._cache[key] = seen

    async def _prior(self, key: str) -> _Seen | None:
        seen = self._cache.get(key)
        if seen is not None:
            return seen
        stored = (await self.read_state(key)).get(key)
        seen = _parse(stored) if stored is not None else None
        if seen is not None:
            self._cache[key] = seen
        return seen


def state_key(source: str, values: tuple[str, ...]) -> str:
    """The source-state key of one business key of a record source."""
    digest = hashlib.sha256("\x1f".join(values).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{source}/bkey/{digest[:40]}"


def content_hash(data: Mapping[str, object]) -> str:
    """The SHA-256 of an event's data, canonical JSON (sorted keys)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _parse(text: str) -> _Seen | None:
    try:
        stored = json.loads(text)
        return _Seen(str(stored["id"]), str(stored["hash"]))
    except (ValueError, KeyError, TypeError):
        return None  # not ours: the record is judged as the first of its key
