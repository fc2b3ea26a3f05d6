"""The config file as every CLI command reads it: loaded, or its problems printed (one
`FILE:LINE: KEY: what is wrong` line each, on stderr) and None. One module so that the command
groups share it without importing each other."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config modules load on first use: `edge-agent --help` stays quick
    from config.schema import AgentConfig


# The configs this process loaded and their files, latest last: `path_of` lets a command that
# gets only the config (`check-config --connect`) name FILE:LINE in what it prints.
_LOADED: list[tuple[AgentConfig, Path]] = []


def load_or_report(path: Path) -> AgentConfig | None:
    """The validated config at `path`, or None once its problems are printed."""
    from config.loader import ConfigError, load_config

    try:
        config = load_config(path)
        _LOADED[:] = [*_LOADED[-3:], (config, path)]
        return config
    except ConfigError as error:
        print(f"{path}: invalid config ({len(error.problems)} problem(s)):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem.format()}", file=sys.stderr)
        return None


def path_of(config: AgentConfig) -> Path | None:
    """The file `config` was loaded from by `load_or_report`, if it was."""
    return next((path for loaded, path in reversed(_LOADED) if loaded is config), None)
