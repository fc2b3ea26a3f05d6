"""Signed command requests: Ed25519 over a canonical encoding, freshness and a nonce cache.

The signed message
------------------
A request names a command (the last level of its topic) and carries, in its JSON payload,
``args`` (an object), ``ts`` (integer Unix seconds), ``nonce`` (16 to 64 characters of
``[A-Za-z0-9_-]``), ``key_id`` (a name in the agent's ``[commands.keys]``) and ``sig`` (base64 of
the 64-byte Ed25519 signature). The signature covers::

    b"edge-agent-command-v1\\n" + JSON({"args", "command", "key_id", "nonce", "target", "ts"})

JSON here is the canonical form: keys sorted, no whitespace (separators ``,`` and ``:``),
ASCII only (``\\uXXXX`` escapes), no floats anywhere in ``args`` (a float's text differs between
languages; send times as RFC 3339 strings). ``target`` is ``"{site}/{agent}"`` of the agent
addressed, so a request signed for one agent is refused by every other.

Invariants
----------
- A request is accepted only if, in this order: it is well formed; its key is known and allowed
  for the command; ``ts`` is within ``max_skew_s`` of the agent's clock; the signature verifies;
  its nonce was not seen. The nonce is remembered only after the signature verified, so unsigned
  garbage cannot fill the cache.
- The nonce cache holds each accepted nonce until its ``ts`` is older than ``max_skew_s`` (past
  that, the timestamp check refuses the request anyway), so a nonce can never be replayed while
  its request is fresh. The cache is bounded: when it is full of nonces that are still fresh,
  signed requests are refused (``busy``) rather than forgetting a nonce that could be replayed.

Errors
------
``Refused(reason, message)``: the request is not executed; ``reason`` is a short fixed code that
is counted (``unsigned``, ``unknown_key``, ``key_not_allowed``, ``stale``, ``bad_signature``,
``replayed``, ``malformed``, ``busy``), ``message`` says what was wrong, for the requester.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

DOMAIN = b"edge-agent-command-v1\n"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIGNATURE_FIELDS = ("ts", "nonce", "key_id", "sig")
_TS_MIN, _TS_MAX = -(2**63), 2**63 - 1


class Refused(Exception):
    """A request that is not executed: `reason` is a counted code, `message` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _check_args(value: Any, where: str = "args") -> None:
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return
    if isinstance(value, float):
        raise Refused("malformed", f"{where} is a float; floats are not allowed in signed args")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_args(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_args(item, f"{where}.{key}")
        return
    raise Refused("malformed", f"{where} has an unsupported type {type(value).__name__}")


def canonical_message(
    *, command: str, args: Mapping[str, Any], ts: int, nonce: str, key_id: str, target: str
) -> bytes:
    """The exact bytes a signature covers (module docstring)."""
    _check_args(dict(args))
    body = json.dumps(
        {
            "args": args,
            "command": command,
            "key_id": key_id,
            "nonce": nonce,
            "target": target,
            "ts": ts,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return DOMAIN + body.encode("ascii")


class RequestSigner:
    """Hub side: signs requests with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str) -> None:
        if not _KEY_ID.match(key_id):
            raise ValueError(f"key id {key_id!r}: letters, digits, '_', '.', '-'; 1 to 64")
        self._key = private_key
        self.key_id = key_id

    @classmethod
    def from_file(cls, path: Path, key_id: str | None = None) -> RequestSigner:
        """Load a PEM (PKCS#8) Ed25519 private key; the key id defaults to the file's name
        up to its first dot (`ops.key.pem` -> `ops`). ValueError says what is wrong."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not an unencrypted PEM private key") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key, key_id or path.name.split(".", 1)[0])

    def sign(
        self,
        command: str,
        args: Mapping[str, Any],
        *,
        target: str,
        now: float | None = None,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """The request payload (a JSON object) for `command` with `args`, addressed to
        `target` ("site/agent")."""
        ts = int(time.time() if now is None else now)
        nonce = nonce or secrets.token_urlsafe(18)
        message = canonical_message(
            command=command, args=args, ts=ts, nonce=nonce, key_id=self.key_id, target=target
        )
        signature = self._key.sign(message)
        return {
            "args": dict(args),
            "ts": ts,
            "nonce": nonce,
            "key_id": self.key_id,
            "sig": base64.b64encode(signature).decode("ascii"),
        }


class NonceCache:
    """Nonces of accepted requests, each kept until its timestamp leaves the freshness window.
    Bounded: `add` refuses (`busy`) when full of nonces that are still fresh."""

    def __init__(self, max_size: int, window_s: float) -> None:
        self._max_size = max_size
        self._window_s = window_s
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> expires at

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, nonce: str) -> bool:
        return nonce in self._seen

    def add(self, nonce: str, ts: float, now: float) -> None:
        self._expire(now)
        if nonce in self._seen:
            raise Refused("replayed", f"nonce {nonce!r} was already used")
        if len(self._seen) >= self._max_size:
            raise Refused(
                "busy", "too many signed requests within the freshness window; retry later"
            )
        self._seen[nonce] = ts + self._window_s
        # Keep the dict ordered by expiry (requests arrive roughly in ts order).
        self._seen.move_to_end(nonce)

    def _expire(self, now: float) -> None:
        # Timestamps may arrive out of order within the window: scan from the oldest insert and
        # stop at the first nonce still fresh; a stale one behind it goes on a later call.
        while self._seen:
            nonce, expires_at = next(iter(self._seen.items()))
            if expires_at >= now:
                return
            del self._seen[nonce]


class RequestVerifier:
    """Agent side: checks a request's signature, key, freshness and nonce (module docstring).

    `keys` maps key ids to raw 32-byte public keys; `allow` maps a command to the key ids
    allowed to sign it.
    """

    def __init__(
        self,
        *,
        keys: Mapping[str, bytes],
        allow: Mapping[str, set[str]],
        target: str,
        max_skew_s: float,
        nonce_cache_size: int,
    ) -> None:
        self._keys = {name: Ed25519PublicKey.from_public_bytes(raw) for name, raw in keys.items()}
        self._allow = {command: set(names) for command, names in allow.items()}
        self._target = target
        self._max_skew_s = max_skew_s
        self.nonces = NonceCache(nonce_cache_size, 2 * max_skew_s)

    def allowed_keys(self, command: str) -> set[str]:
        return set(self._allow.get(command, set()))

    def verify(
        self, command: str, request: Mapping[str, Any], *, now: float | None = None
    ) -> str:
        """Return the key id that signed `request` for `command`, or raise `Refused`."""
        now = time.time() if now is None else now
        if not any(field in request for field in SIGNATURE_FIELDS):
            raise Refused("unsigned", f"{command!r} needs a signed request")
        missing = [field for field in SIGNATURE_FIELDS if field not in request]
        if missing:
            raise Refused("malformed", f"signed request lacks {', '.join(missing)}")
        ts, nonce, key_id, sig = (request[field] for field in SIGNATURE_FIELDS)
        args = request.get("args", {})
        if not isinstance(args, dict):
            raise Refused("malformed", f"args must be an object, got {type(args).__name__}")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise Refused("malformed", f"ts must be an integer (Unix seconds), got {ts!r:.40}")
        if not _TS_MIN <= ts <= _TS_MAX:  # before `now - ts`: a huge int overflows a float
            raise Refused("malformed", "ts must be Unix seconds (a 64-bit integer)")
        if not isinstance(nonce, str) or not _NONCE.match(nonce):
            raise Refused("malformed", "nonce must be 16 to 64 characters of [A-Za-z0-9_-]")
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise Refused("malformed", "key_id must be a key name (letters, digits, _ . -)")
        if not isinstance(sig, str):
            raise Refused("malformed", f"sig must be base64 text, got {type(sig).__name__}")
        key = self._keys.get(key_id)
        if key is None:
            raise Refused("unknown_key", f"key {key_id!r} is not known to this agent")
        if key_id not in self._allow.get(command, set()):
            raise Refused("key_not_allowed", f"key {key_id!r} may not sign {command!r}")
        skew = now - ts
        if abs(skew) > self._max_skew_s:
            raise Refused(
                "stale",
                f"timestamp is {skew:+.0f} s from the agent's clock; allowed ±"
                f"{self._max_skew_s:g} s (check the clocks, then sign again)",
            )
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError) as error:
            raise Refused("malformed", "sig is not valid base64") from error
        message = canonical_message(
            command=command, args=args, ts=ts, nonce=nonce, key_id=key_id, target=self._target
        )
        try:
            key.verify(signature, message)
        except InvalidSignature as error:
            raise Refused(
                "bad_signature",
                f"signature does not verify with key {key_id!r} for {self._target}",
            ) from error
        self.nonces.add(nonce, ts, now)
        return key_id


def create_key_pair(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Write `name.key.pem` (private, mode 0600) and `name.pub.pem` into `directory` (made
    0700 if new); refuse to overwrite. Returns both paths and the raw public key in base64."""
    if not _KEY_ID.match(name):
        raise ValueError(f"key name {name!r}: letters, digits, '_', '.', '-'; 1 to 64")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / f"{name}.key.pem"
    public_path = directory / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # O_EXCL with the final mode: the private key is never readable by others, not even briefly.
    with open(_exclusive(private_path, 0o600), "wb") as out:
        out.write(private_pem)
    with open(_exclusive(public_path, 0o644), "wb") as out:
        out.write(public_pem)
    return private_path, public_path, base64.b64encode(raw).decode("ascii")


def _exclusive(path: Path, mode: int) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
