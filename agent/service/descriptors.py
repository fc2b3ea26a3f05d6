"""File descriptors: how many the agent may open, and how many its network listeners may take.

Invariants
----------
- At start (`raise_soft_limit`, called each time an `Agent` is built: it is idempotent) the
  soft `RLIMIT_NOFILE` is raised to the hard limit (systemd gives a unit a soft limit of 1024
  and a far higher hard one). If the kernel or a seccomp filter refuses, the soft limit stays
  and that is logged once.
- `RESERVE` descriptors are kept for what must never starve: the buffer's SQLite files, the
  hub link, state files, the sources' own sessions. Sources that accept connections from the
  network (the webhook, `max_connections`) share the rest: `connection_caps` lowers their caps
  so that the caps plus the reserve fit in the soft limit, and logs each one it lowers.
- Even so, running out (EMFILE) is the short-disk condition of `connectors.base.is_short_disk`
  for whatever write meets it: held and retried, never fatal.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Mapping

_log = logging.getLogger(__name__)

RESERVE = 64
# Where the soft limit goes when the hard one is unlimited (the kernel's usual nr_open).
_UNLIMITED_TARGET = 1_048_576
_refusal_said = False


def raise_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    global _refusal_said
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as error:
            if not _refusal_said:
                _refusal_said = True
                _log.warning(
                    "cannot raise the descriptor limit (RLIMIT_NOFILE) from %d to %d: %s; "
                    "set LimitNOFILE= in the unit", soft, target, error,
                )
            return int(soft)
        _log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to %d", soft, target)
        return int(target)
    return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else int(soft)


def connection_caps(wanted: Mapping[str, int], soft_limit: int) -> dict[str, int]:
    """The `max_connections` of each listening source (name -> configured cap), lowered so
    that all of them plus `RESERVE` fit in `soft_limit` (each keeps at least 1)."""
    if not wanted:
        return {}
    budget = max(len(wanted), soft_limit - RESERVE)
    if sum(wanted.values()) <= budget:
        return dict(wanted)
    share = budget // len(wanted)
    caps = {}
    for name, cap in wanted.items():
        caps[name] = min(cap, share)
        if caps[name] < cap:
            _log.warning(
                "source=%s: max_connections %d lowered to %d (descriptor limit %d, %d kept in "
                "reserve for the buffer and hub link)", name, cap, caps[name], soft_limit, RESERVE,
            )
    return caps
