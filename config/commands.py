"""`[commands]`: the remote commands the agent answers (`agent.link.commands`), their limits, and
the public keys whose signatures mutating commands need (`agent.link.signing`).

A key is checked when the config is loaded: a raw `ed25519:` key here, a key file by the loader
(`config.loader`, relative to the config file), so `check-config` names a bad one.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, Field, field_validator, model_validator

from config.fields import STRICT, TopicLevel

__all__ = [
    "MUTATING_COMMANDS",
    "RAW_KEY_PREFIX",
    "READ_ONLY_COMMANDS",
    "CommandName",
    "CommandsSection",
    "raw_public_key",
    "read_public_key_file",
]


READ_ONLY_COMMANDS = ("status", "sources", "buffer", "config", "ping", "dead-letters")
MUTATING_COMMANDS = ("replay", "reload", "pause", "resume", "retry")
CommandName = Literal["status", "sources", "buffer", "config", "ping", "dead-letters", "replay",
                      "reload", "pause", "resume", "retry"]
RAW_KEY_PREFIX = "ed25519:"


class CommandsSection(BaseModel):
    """Remote commands over MQTT (`agent.link.commands`) and who may sign them
    (`agent.link.signing`).

    `keys` names public keys: a value is either `ed25519:` followed by the raw 32-byte key in
    base64, or the path of a PEM file (relative to the config file). `allow` lists, per command,
    the key names whose signature it accepts; a mutating command nobody is allowed is refused.
    """

    model_config = STRICT

    enabled: bool = True
    allow_unsigned_read_only: bool = True
    max_skew_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    rate_per_s: Annotated[float, Field(gt=0, le=1000)] = 5.0
    burst: Annotated[int, Field(ge=1, le=1000)] = 10
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 32
    max_request_bytes: Annotated[int, Field(ge=256, le=1_048_576)] = 16_384
    nonce_cache_size: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    keys: dict[TopicLevel, Annotated[str, Field(min_length=1)]] = {}
    allow: dict[CommandName, list[TopicLevel]] = {}

    @field_validator("keys")
    @classmethod
    def _raw_keys_decode(cls, keys: dict[str, str]) -> dict[str, str]:
        for name, spec in keys.items():
            if spec.startswith(RAW_KEY_PREFIX):
                raw_public_key(spec, name)  # raises ValueError naming the key
        return keys

    @model_validator(mode="after")
    def _allowed_keys_exist(self) -> CommandsSection:
        for command, names in self.allow.items():
            unknown = sorted(set(names) - set(self.keys))
            if unknown:
                raise ValueError(
                    f"commands.allow.{command} names unknown key(s) {', '.join(unknown)}; "
                    f"define them under [commands.keys]"
                )
        return self


def raw_public_key(spec: str, name: str) -> bytes:
    """The 32 key bytes of an `ed25519:BASE64` key; ValueError saying what is wrong."""
    text = spec.removeprefix(RAW_KEY_PREFIX)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"key {name!r}: {RAW_KEY_PREFIX} must be followed by base64") from error
    if len(raw) != 32:
        raise ValueError(
            f"key {name!r}: an Ed25519 public key is 32 bytes, this one is {len(raw)} bytes"
        )
    return raw


def read_public_key_file(path: Path, name: str) -> bytes:
    """The 32 key bytes of an Ed25519 public key in a PEM file; ValueError saying what is wrong
    (a private key file is refused: it must never be copied to a plant)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"key {name!r}: cannot read {path}: {error.strerror or error}") from error
    if b"PRIVATE KEY" in data:
        raise ValueError(
            f"key {name!r}: {path} holds a private key; give the agent the public key "
            "(the .pub.pem file)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"key {name!r}: {path} is not a PEM public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"key {name!r}: {path} is not an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
