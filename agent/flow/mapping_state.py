"""Counter baselines across restarts: the last count of every counter, in `state_dir`.

Without a baseline, the first count after a restart has no increment (null: unknown). With
one, the increment since the last accepted count is known. The buffer has no key-value store,
so the baselines live in a small JSON file next to it, `counters.json`:

    {"version": 1, "committed": {"line1/ns=2;s=Good": 1200, ...},
     "pending": {"line1/ns=2;s=Good": 1230} | null}

Protocol, around each buffer commit that carries counts (`Pipeline` calls these):

1. `before_commit`: write the baselines the batch will leave as `pending` (atomically: temp file,
   fsync, rename, fsync of the directory). Nothing is written when no count changed.
2. the buffer commits the batch;
3. `after_commit`: fold `pending` into `committed` and write again (atomic rename, no fsync: if
   this write is lost, the file still says `pending`, which is the safe reading below).

On start, `restore` gives the mapper the `committed` baselines of counters that are not in
`pending`. A counter listed in `pending` lost its baseline: the crash came between steps 1
and 3, so whether its last batch was accepted is unknown. Using the older committed value could
count that batch twice; using the pending value could skip parts. So it gets no baseline:
its first count after the restart has a null increment (reported as unknown, never invented),
and the restore logs which counters that concerns. A counter is never counted twice.

When a write fails (a full disk, a read-only remount, no descriptors left: the short-disk
condition of `connectors.base.is_short_disk`, or any other `OSError`), the protocol keeps its
guarantee:
- step 1 fails: `before_commit` raises the `OSError` and the batch must not commit (the
  pipeline holds it and calls `before_commit` again until it succeeds, see `agent.flow.pipeline`);
  the file says what it said before (the write goes to a temporary file that is removed);
- step 3 fails: the batch is committed and the file still says `pending`, the safe reading.
  `after_commit` does not raise; the file is marked stale and the next `before_commit`
  rewrites it even when no count changed, so a later restart loses no baseline needlessly.

The file is written on a thread (`asyncio.to_thread`), never on the event loop. An unreadable
or malformed file is treated like a missing one (logged, no baselines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from agent.flow.mapping import Mapper

_log = logging.getLogger(__name__)

COUNTERS_FILE = "counters.json"


class CounterBaselines:
    """The persisted baselines of one mapper's counters; see the module docstring."""

    def __init__(self, path: Path, mapper: Mapper) -> None:
        self.path = path
        self._mapper = mapper
        self._committed: dict[str, int] = {}
        self._pending: dict[str, int] | None = None
        # The file lags behind `_committed` (an `after_commit` write failed): rewrite it.
        self._stale = False

    def restore(self) -> int:
        """Load the file and give the mapper the baselines that are safe to use; returns how
        many counters got one. Call before the first reading is mapped."""
        committed, pending = _read(self.path)
        usable = {key: count for key, count in committed.items() if key not in (pending or {})}
        if pending:
            _log.warning(
                "counter baseline(s) uncertain after an interrupted commit, first increment "
                "will be null: %s",
                ", ".join(sorted(pending)),
            )
        self._committed = usable
        return self._mapper.restore_counter_baselines(usable)

    async def before_commit(self) -> None:
        """Step 1: write the batch's baselines as pending, durably. Raises the `OSError` of a
        failed write: then the batch must not commit (call again before committing it)."""
        current = self._mapper.counter_baselines()
        changed = {k: count for k, count in current.items() if self._committed.get(k) != count}
        if not changed and not self._stale:
            self._pending = None
            return
        self._pending = changed or None
        await asyncio.to_thread(_write, self.path, self._committed, self._pending, True)
        self._stale = False

    async def after_commit(self) -> None:
        """Step 3: fold pending into committed. Never raises: a failed write leaves the file
        saying pending (safe), and the next `before_commit` rewrites it."""
        if self._pending is None:
            return
        self._committed = {**self._committed, **self._pending}
        self._pending = None
        try:
            await asyncio.to_thread(_write, self.path, self._committed, None, False)
        except OSError as error:
            if not self._stale:
                _log.warning(
                    "counter baselines %s not updated after a commit (%s); the file says "
                    "pending (safe) and is rewritten with the next commit",
                    self.path, error.strerror or error,
                )
            self._stale = True


def _read(path: Path) -> tuple[dict[str, int], dict[str, int] | None]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as error:
        _log.warning("counter baselines %s unreadable (%s); starting without", path, error)
        return {}, None
    try:
        committed = {str(k): int(v) for k, v in document["committed"].items()}
        raw_pending = document.get("pending")
        pending = None if raw_pending is None else {str(k): int(v) for k, v in raw_pending.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        _log.warning("counter baselines %s malformed (%r); starting without", path, error)
        return {}, None
    return committed, pending


def _write(
    path: Path, committed: dict[str, int], pending: dict[str, int] | None, durable: bool
) -> None:
    text = json.dumps({"version": 1, "committed": committed, "pending": pending})
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        # A half-written temporary file holds space the disk is short of; the old file stays.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
