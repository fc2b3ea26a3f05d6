"""What a reload refuses to change: the one rule a SIGHUP and the remote `reload` command share.

A reload keeps the process's buffer open and builds a new `Agent` on it (`agent.service.daemon`), so
whatever the open buffer depends on cannot change without a restart:

- `agent.state_dir`: the buffer's file lives there (and the state-dir lock is held on it);
- `[buffer]`: the open buffer was opened with that section, as it was then.

Everything else (sources, mapping, hub, commands, logging) is taken by the new generation.
A config that changes one of the two is refused as a whole, the running one is kept, and the
refusal says which key and that a restart applies it. `agent.service.daemon` (SIGHUP, and the remote
`reload` once the file validated) and `agent.link.commands.reload_config` (which answers the remote
request before the reload runs, so it must never say "reloading" for a config that will be
refused) both ask `reload_refusal`.
"""

from __future__ import annotations

from config.schema import AgentConfig

__all__ = ["reload_refusal"]

_RESTART = "(systemctl restart edge-agent)"


def reload_refusal(running: AgentConfig, new: AgentConfig) -> str | None:
    """Why `new` cannot replace `running` by a reload; None if it can."""
    if new.agent.state_dir != running.agent.state_dir:
        return (
            f"agent.state_dir changed ({running.agent.state_dir} -> {new.agent.state_dir}):"
            f" the buffer moves only with a restart {_RESTART}"
        )
    if new.buffer != running.buffer:
        return f"[buffer] settings changed: they apply only with a restart {_RESTART}"
    return None
