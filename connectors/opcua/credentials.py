"""systemd credentials for the OPC UA source's password and key files.

Any file setting of a source (`password_file`, `certificate`, `private_key`, `user_certificate`,
`user_private_key`) is a path or `credential:NAME`: the unit says `LoadCredential=NAME:/etc/...`
and systemd hands the agent a private, read-only copy at `$CREDENTIALS_DIRECTORY/NAME`.

This is the rule `agent.credentials` applies to the hub's secrets, with the same wording
(connectors may not import `agent`, so the lookup is repeated here, a few lines). References are
resolved when a session opens, never at load or `check-config` time (an operator's shell has no
`$CREDENTIALS_DIRECTORY`); a reference that cannot be resolved is a `CredentialUnavailable`
(a `ValueError`: the caller reports a config error).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CREDENTIAL_PREFIX = "credential:"
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


class CredentialUnavailable(ValueError):
    """A `credential:NAME` reference cannot be resolved; the message says what to do."""


def is_credential(path: Path) -> bool:
    return str(path).startswith(CREDENTIAL_PREFIX)


def check_reference(path: Path) -> Path:
    """`path` itself; ValueError if it is a `credential:` reference with a bad name."""
    text = str(path)
    if text.startswith(CREDENTIAL_PREFIX):
        name = text.removeprefix(CREDENTIAL_PREFIX)
        if not _NAME.match(name):
            raise ValueError(
                f"bad credential name {name!r} in {text!r}: letters, digits, `_`, `.`, `-`"
            )
    return path


def resolve(key: str, path: Path) -> Path:
    """The file `path` names: itself, or `$CREDENTIALS_DIRECTORY/NAME` for `credential:NAME`."""
    if not is_credential(path):
        return path
    reference = str(path)
    name = reference.removeprefix(CREDENTIAL_PREFIX)
    directory = os.environ.get(CREDENTIALS_DIRECTORY)
    if not directory:
        raise CredentialUnavailable(
            f"{key}: {reference!r} is a systemd credential, but $CREDENTIALS_DIRECTORY is not "
            f"set: run the agent from its unit with `LoadCredential={name}:/path/to/file`, "
            f"or give the file's path instead"
        )
    return Path(directory) / name
