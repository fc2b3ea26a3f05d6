"""The agent's trust list for OPC UA server certificates: a folder an operator can read.

Layout (under the source's `pki_dir`):

    trusted/<THUMBPRINT>.der    server certificates the agent accepts
    rejected/<THUMBPRINT>.der   certificates a server presented that were not trusted

Rules:
- A server certificate is accepted only when its thumbprint is in `trusted/` (exact match:
  self-signed application certificates are the norm on the plant floor).
- An unknown certificate is refused and copied to `rejected/`, and the error names the
  thumbprint and the command that trusts it (`edge-agent certs trust THUMBPRINT -c CONFIG`).
- Trust on first use (off by default): with no certificate trusted yet, the first one seen is
  trusted and logged; a different one later is refused like any unknown certificate.
- The folder is read on every check, so trusting a certificate takes effect at the next
  connection attempt without a restart.
- Certificates are public: a trusted one is mode 0644 whoever moved it there, so the agent
  (the service user) can read what root trusted. The agent itself writes into `rejected/`
  (and `trusted/` on first use), so `prepare(owner)` gives both folders to the service user;
  under the packaged unit the pki dir is a `ReadWritePaths=` (packaging/README.md).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectors.base import SourceUnavailable, is_short_disk
from connectors.opcua.certificates import (
    CertificateInfo,
    describe,
    load_certificate,
    make_folders,
    thumbprint,
)
from connectors.opcua.pki_access import FileOwner

_log = logging.getLogger(__name__)


class UntrustedCertificate(Exception):
    """The server's certificate is not in the trust list; the message tells what to do."""

    def __init__(self, message: str, info: CertificateInfo) -> None:
        super().__init__(message)
        self.info = info


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    path: Path
    info: CertificateInfo


class TrustStore:
    """The `trusted/` and `rejected/` folders under one pki directory."""

    def __init__(self, pki_dir: Path, *, trust_on_first_use: bool = False) -> None:
        self.pki_dir = pki_dir
        self.trusted_dir = pki_dir / "trusted"
        self.rejected_dir = pki_dir / "rejected"
        self.trust_on_first_use = trust_on_first_use

    def check(self, certificate: x509.Certificate, *, server: str) -> CertificateInfo:
        """Accept `certificate` or raise `UntrustedCertificate` (after filing it as rejected)."""
        der = certificate.public_bytes(serialization.Encoding.DER)
        info = describe(certificate)
        trusted = self.trusted()  # any file name: an operator may copy a .pem or .crt in
        if any(stored.info.thumbprint == info.thumbprint for stored in trusted):
            return info
        if self.trust_on_first_use and not trusted:
            try:
                self._store(self.trusted_dir, info.thumbprint, der)
            except OSError as error:
                if not is_short_disk(error):
                    raise
                # Never trust what could not be kept: the next attempt tries again.
                raise SourceUnavailable(
                    f"cannot save the certificate of {server} to {self.trusted_dir} "
                    f"(trust on first use): {error.strerror or error}; retrying"
                ) from error
            _log.warning(
                "trust on first use: trusted the certificate of %s (thumbprint %s, %s)",
                server, info.thumbprint, info.subject,
            )
            return info
        try:
            self._store(self.rejected_dir, info.thumbprint, der)
            saved = f"it was saved to {self.rejected_dir}"
        except OSError as error:
            if not is_short_disk(error):
                raise
            # A short disk: the refusal stands; the next attempt saves it again.
            saved = f"it could not be saved to {self.rejected_dir} ({error.strerror or error})"
        raise UntrustedCertificate(
            f"the certificate of {server} is not trusted (thumbprint {info.thumbprint}, "
            f"subject {info.subject}); {saved}; if it is the right "
            f"server, trust it with: edge-agent certs trust {info.thumbprint} -c CONFIG",
            info,
        )

    def trust(self, wanted: str) -> StoredCertificate:
        """Move a rejected certificate (by thumbprint or a unique prefix) to `trusted/`."""
        wanted = wanted.replace(":", "").upper()
        matches = [
            stored for stored in self.rejected() if stored.info.thumbprint.startswith(wanted)
        ]
        if not matches:
            raise LookupError(
                f"no rejected certificate with thumbprint {wanted} in {self.rejected_dir}"
            )
        if len(matches) > 1:
            raise LookupError(f"thumbprint prefix {wanted} matches {len(matches)} certificates")
        stored = matches[0]
        target = self.trusted_dir / f"{stored.info.thumbprint}.der"
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(stored.path, target)
        target.chmod(0o644)  # the agent reads it, whoever saved it with whatever umask
        return StoredCertificate(target, stored.info)

    def prepare(self, owner: FileOwner | None) -> None:
        """Create `trusted/` and `rejected/` (and the pki dir) where missing, given to `owner`
        (the user the agent runs as), so that the agent can file what it refuses."""
        for folder in (self.trusted_dir, self.rejected_dir):
            make_folders(folder, innermost_mode=0o750, owner=owner)

    def add_trusted(self, certificate_file: Path) -> StoredCertificate:
        """Trust a certificate file given directly (DER or PEM)."""
        certificate = load_certificate(certificate_file)
        info = describe(certificate)
        der = certificate.public_bytes(serialization.Encoding.DER)
        return StoredCertificate(self._store(self.trusted_dir, info.thumbprint, der), info)

    def trusted(self) -> list[StoredCertificate]:
        return _list(self.trusted_dir)

    def rejected(self) -> list[StoredCertificate]:
        return _list(self.rejected_dir)

    @staticmethod
    def _store(folder: Path, name: str, der: bytes) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.der"
        try:
            path.write_bytes(der)
        except OSError:
            with contextlib.suppress(OSError):  # a short disk left it empty or cut
                path.unlink()
            raise
        return path


def _list(folder: Path) -> list[StoredCertificate]:
    if not folder.is_dir():
        return []
    stored: list[StoredCertificate] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        try:
            certificate = load_certificate(path)
        except (OSError, ValueError):
            _log.warning("%s is not a readable certificate; ignored", path)
            continue
        stored.append(StoredCertificate(path, describe(certificate)))
    return stored


__all__ = ["StoredCertificate", "TrustStore", "UntrustedCertificate", "thumbprint"]
