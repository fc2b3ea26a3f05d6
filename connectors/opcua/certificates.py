"""The agent's OPC UA application instance certificate, made with the `cryptography` package.

What OPC UA (Part 6, 6.2.2) asks of an application instance certificate and what this makes:
RSA key (2048 bits, valid for all supported policies), SHA-256 signature, the ApplicationUri
as a URI in subjectAltName (servers reject a certificate without it) plus the host name as a
DNS name, key usages digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment and
keyCertSign (self-signed), extended key usages clientAuth and serverAuth, subject and
authority key identifiers.

Files: the certificate as DER (what servers show and trust lists hold), mode 0644; the private
key as PEM (PKCS#8, unencrypted: the agent runs unattended), mode 0600 in a folder with mode
0700. With an `owner` (the service user, when root makes them for a packaged agent), both
files and every folder this creates for them belong to that user and its group before they
get their final name, so the agent never meets a key it cannot read; folders that existed keep
their owner (`pki_access.access_problem` tells whether they let the owner through). The
thumbprint is the SHA-1 of the DER, in upper-case hex, as OPC UA tools show it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors.opcua.pki_access import FileOwner


class CertificateExists(FileExistsError):
    """Refusing to overwrite an existing certificate or key (the server trusts the old one)."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    thumbprint: str
    subject: str
    application_uri: str | None
    not_after: datetime


def thumbprint(der: bytes) -> str:
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def describe(certificate: x509.Certificate) -> CertificateInfo:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return CertificateInfo(
        thumbprint=thumbprint(der),
        subject=certificate.subject.rfc4514_string(),
        application_uri=application_uri_of(certificate),
        not_after=certificate.not_valid_after_utc,
    )


def application_uri_of(certificate: x509.Certificate) -> str | None:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def load_certificate(path: Path) -> x509.Certificate:
    """A DER or PEM certificate file."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def create_application_certificate(
    *,
    certificate_path: Path,
    key_path: Path,
    application_uri: str,
    common_name: str = "plant-edge-agent",
    host_name: str | None = None,
    days: int = 730,
    key_bits: int = 2048,
    overwrite: bool = False,
    owner: FileOwner | None = None,
) -> CertificateInfo:
    """Make a self-signed application instance certificate and its key; see module docstring.
    `owner`: the user the files and the folders made for them are given to (needs root)."""
    if not overwrite:
        for path in (certificate_path, key_path):
            if path.exists():
                raise CertificateExists(
                    f"{path} exists; a server may already trust it (use --force to replace it)"
                )
    host = host_name or socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plant-edge-agent"),
        ]
    )
    now = datetime.now(UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, mode=0o600, folder_mode=0o700, owner=owner)
    _write(
        certificate_path,
        certificate.public_bytes(serialization.Encoding.DER),
        mode=0o644,
        folder_mode=0o755,
        owner=owner,
    )
    return describe(certificate)


def _write(
    path: Path, data: bytes, *, mode: int, folder_mode: int, owner: FileOwner | None
) -> None:
    """Write `data` so that it is never readable with wider permissions than `mode`, nor by
    anyone but its final owner."""
    make_folders(path.parent, innermost_mode=folder_mode, owner=owner)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(descriptor, mode)  # the umask may have narrowed it; never widened
        if owner is not None:
            os.fchown(descriptor, owner.uid, owner.gid)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        # A short disk (or any failure): no half-written key or certificate stays behind, and
        # the space it took is given back; the caller reports the error.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def make_folders(folder: Path, *, innermost_mode: int, owner: FileOwner | None) -> None:
    """Create `folder` and its missing parents (the innermost with `innermost_mode`, the others
    0755, both narrowed by the umask) and give each one created to `owner`."""
    absent: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        absent.append(current)
        current = current.parent
    for created in reversed(absent):
        created.mkdir(mode=innermost_mode if created == folder else 0o755, exist_ok=True)
        if owner is not None:
            owner.chown(created)
