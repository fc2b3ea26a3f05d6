"""`edge-agent keys create`: an Ed25519 key pair for signed remote commands.

    edge-agent keys create --out DIR [--name NAME]

Writes the private key (mode 0600: it stays at the hub, never on a plant) and the public key
into DIR (`agent.link.signing.create_key_pair`), and prints the `[commands.keys]` and
`[commands.allow]` lines an agent's config needs to accept requests signed with it.
Exit codes: 0 written, 2 bad name or directory, or the files exist already.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_INVALID = 0, 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="signing keys for remote commands")
    key_verbs = keys.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    create = key_verbs.add_parser("create", help="make an Ed25519 key pair")
    create.add_argument("--out", type=Path, required=True, help="directory for the two files")
    create.add_argument("--name", default="hub-ops", help="key name (default hub-ops)")
    create.set_defaults(handler=_keys_create)


def _keys_create(args: argparse.Namespace) -> int:
    from agent.link.signing import create_key_pair

    try:
        private, public, raw = create_key_pair(args.out, args.name)
    except (ValueError, FileExistsError, OSError) as error:
        print(f"edge-agent: {error}", file=sys.stderr)
        return EXIT_INVALID
    print(f"private key: {private} (mode 0600; keep it at the hub, never on a plant)")
    print(f"public key:  {public}")
    print("\nin each agent's config:\n")
    print(f'[commands.keys]\n{args.name} = "ed25519:{raw}"   # or the path of {public.name}\n')
    print(f'[commands.allow]\nreplay = ["{args.name}"]\nreload = ["{args.name}"]\n'
          f'pause = ["{args.name}"]\nresume = ["{args.name}"]')
    return EXIT_OK
