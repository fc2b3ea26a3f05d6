"""`edge-agent hub run -c hub.toml`: one hub process (`hub.run`; docs/hub-guide.md).

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 PostgreSQL unreachable at start, 2 the config
(or a file it names) is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def register(commands: Any) -> None:
    group = commands.add_parser("hub", help="the hub side: land events in PostgreSQL")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run one hub process (several may share the load)")
    run.add_argument("-c", "--config", type=Path, required=True, help="the hub's TOML config")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"],
                     help="log level (default info)")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from config.loader import ConfigError
    from hub.config import load_hub_config
    from hub.run import HubStartError, run_hub
    from hub.store import StoreUnavailable

    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_hub_config(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    try:
        asyncio.run(run_hub(config))
    except HubStartError as error:
        print(f"edge-agent hub run: {args.config}: {error}", file=sys.stderr)
        return EXIT_INVALID
    except StoreUnavailable as error:
        print(f"edge-agent hub run: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
