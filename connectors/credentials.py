"""Secret references: a setting says where a secret or a key file is, never the secret itself.

The one convention, for every setting of the agent that names a password, a token file, a
private key or a certificate (the hub's `[hub]` section and every source alike):

``credential:NAME``
    A systemd credential: the unit says ``LoadCredential=NAME:/etc/plant-edge-agent/...`` and
    systemd hands the agent a private, read-only copy at ``$CREDENTIALS_DIRECTORY/NAME``
    (readable by the service only, even though the original may be root's alone). NAME is 1 to
    255 letters, digits, ``_``, ``.`` or ``-``; anything else is refused when the config loads.
``file:PATH``
    An ordinary file the agent's user can read, marked as one. `hub.password` takes this form
    (or ``credential:``), because a bare string there could be the password itself.
``PATH``
    An ordinary file, for the settings whose name says they hold a file (`ca_file`,
    `cert_file`, `key_file`, `password_file`, `tokens_file`, `certificate`, `private_key`,
    `tls_cert`, ...). A source's relative path is relative to the config file's folder
    (`relative_to`); a `credential:` reference is left as it is.

Where a setting offers one, a separate `*_env` setting (`password_env`, `token_env`) names an
environment variable instead; it is read where the value is needed, not here.

References are resolved when the component that needs them opens (the hub session is built, a
source connects), never when the config is loaded or checked: an operator's shell running
`check-config` has no ``$CREDENTIALS_DIRECTORY``. A reference that cannot be resolved raises
`CredentialUnavailable` (a `ValueError`, so a config error to every caller), whose message
names the setting and what to do. Secret values are never logged.

This is the one resolver: it lives in `connectors` (which imports nothing of the agent's or the
config's) so that the config's validators, the hub's credentials (`agent.service.credentials`)
and the connectors all use it. It imports nothing of ours.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

__all__ = [
    "CREDENTIALS_DIRECTORY",
    "CREDENTIAL_PREFIX",
    "FILE_PREFIX",
    "CredentialUnavailable",
    "check_reference",
    "is_credential",
    "relative_to",
    "resolve",
]

CREDENTIAL_PREFIX = "credential:"
FILE_PREFIX = "file:"
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")

_Reference = TypeVar("_Reference", str, Path)


class CredentialUnavailable(ValueError):
    """A `credential:NAME` reference cannot be resolved; the message says what to do."""


def is_credential(reference: str | Path) -> bool:
    """Whether `reference` is a systemd credential (``credential:NAME``)."""
    return str(reference).startswith(CREDENTIAL_PREFIX)


def check_reference(reference: _Reference) -> _Reference:
    """`reference` itself; ValueError if it is a ``credential:`` reference with a bad name."""
    text = str(reference)
    if text.startswith(CREDENTIAL_PREFIX):
        name = text.removeprefix(CREDENTIAL_PREFIX)
        if not _NAME.match(name):
            raise ValueError(
                f"bad credential name {name!r} in {text!r}: letters, digits, `_`, `.`, `-`"
            )
    return reference


def relative_to(base: Path, reference: Path) -> Path:
    """A source's file reference with a relative path made absolute under `base` (the config
    file's folder); absolute paths and ``credential:`` references are left as they are."""
    if is_credential(reference) or reference.is_absolute():
        return reference
    return base / reference


def resolve(key: str, reference: str | Path) -> Path:
    """The file `reference` names: ``$CREDENTIALS_DIRECTORY/NAME`` for ``credential:NAME``,
    else the path (without ``file:``). `key` names the setting in the error."""
    text = str(reference)
    if not text.startswith(CREDENTIAL_PREFIX):
        return Path(text.removeprefix(FILE_PREFIX))
    name = text.removeprefix(CREDENTIAL_PREFIX)
    directory = os.environ.get(CREDENTIALS_DIRECTORY)
    if not directory:
        raise CredentialUnavailable(
            f"{key}: {text!r} is a systemd credential, but $CREDENTIALS_DIRECTORY is not "
            f"set: run the agent from its unit with `LoadCredential={name}:/path/to/file`, "
            f"or give the file's path instead"
        )
    return Path(directory) / name
