"""The OPC UA files' owners and modes: `pki_access.access_problem` decides from real files' mode
bits as the kernel would for another user; `certs create` (certificates, trust) gives what it
makes to the service user. Real files and folders throughout; the "other user" is a uid and gid
that no process runs as (the access check never needs one to exist), and giving files to it
needs root (skipped otherwise)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.opcua.certificates import create_application_certificate
from connectors.opcua.pki_access import FileOwner, access_problem, describe_mode
from connectors.opcua.trust import TrustStore

# Far above any system or login account on a test machine.
OTHER_UID = OTHER_GID = 48_213

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving files to another user (chown) needs root"
)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder any user may enter (pytest's tmp_path lies below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="pki-access-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def other_user(*, in_group: int | None = None) -> FileOwner:
    groups = {OTHER_GID} | ({in_group} if in_group is not None else set())
    return FileOwner(name="svc", uid=OTHER_UID, gid=OTHER_GID, groups=frozenset(groups))


def make_file(path: Path, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"-")
    path.chmod(mode)
    return path


def test_owner_group_and_other_bits_decide_as_the_kernel_does(folder: Path) -> None:
    private = make_file(folder / "key.pem", 0o600)
    problem = access_problem(private, other_user())
    assert problem is not None
    assert f"svc cannot read {private}" in problem
    assert "mode 0600" in problem and describe_mode(private) in problem
    # The least change that lets the user through: group read, not a wider mode.
    group = other_user().group_name  # no such group here: its gid
    assert f"chgrp {group} {private} && chmod g+r {private}" in problem
    # Group class: the file's group is one of the user's groups.
    group_readable = make_file(folder / "group.pem", 0o640)
    own_gid = group_readable.stat().st_gid
    assert access_problem(group_readable, other_user(in_group=own_gid)) is None
    assert access_problem(group_readable, other_user()) is not None
    # Exactly one class applies: "other" may read, but the group may not, and the user is in
    # the group, so it cannot (as the kernel decides).
    odd = make_file(folder / "odd.pem", 0o604)
    assert access_problem(odd, other_user()) is None
    assert access_problem(odd, other_user(in_group=own_gid)) is not None
    assert access_problem(private, FileOwner.current()) is None
    assert access_problem(private, FileOwner(name="root", uid=0, gid=0,
                                             groups=frozenset({0}))) is None


def test_a_closed_folder_on_the_way_is_named_not_the_file(folder: Path) -> None:
    key = make_file(folder / "pki" / "own" / "private" / "key.pem", 0o644)
    (folder / "pki" / "own").chmod(0o755)
    (folder / "pki").chmod(0o755)
    key.parent.chmod(0o700)
    problem = access_problem(key, other_user())
    assert problem is not None
    assert f"svc cannot enter {key.parent} (on the way to {key})" in problem
    assert f"chmod g+x {key.parent}" in problem
    key.parent.chmod(0o711)  # search permission is all a folder on the way needs
    assert access_problem(key, other_user()) is None


def test_writing_into_a_missing_folder_needs_its_nearest_existing_parent(folder: Path) -> None:
    pki = folder / "pki"
    pki.mkdir(mode=0o755)
    pki.chmod(0o755)
    problem = access_problem(pki / "rejected", other_user(), write=True)
    assert problem is not None and f"svc cannot write in {pki}" in problem
    assert f"chmod g+wx {pki}" in problem
    pki.chmod(0o777)
    assert access_problem(pki / "rejected", other_user(), write=True) is None


@needs_root
def test_certificate_key_and_new_folders_belong_to_the_owner(folder: Path) -> None:
    """`certs create` for the service user: the key is its to read (0600, its own), in a
    folder only it enters; a folder that existed keeps its owner."""
    owner = other_user()
    existing = folder / "etc"
    existing.mkdir()
    pki = existing / "pki"
    key, cert = pki / "own" / "private" / "key.pem", pki / "own" / "cert.der"
    create_application_certificate(
        certificate_path=cert, key_path=key, application_uri="urn:test", owner=owner
    )
    TrustStore(pki).prepare(owner)
    for path in (key, key.parent, cert, cert.parent, pki, pki / "trusted", pki / "rejected"):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (OTHER_UID, OTHER_GID), path
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert existing.stat().st_uid == os.geteuid()
    existing.chmod(0o755)
    assert access_problem(key, owner) is None
    assert access_problem(pki / "rejected", owner, write=True) is None
    assert not list(key.parent.glob("*.tmp"))


def test_a_trusted_certificate_is_readable_by_the_agent_whoever_saved_it(tmp_path: Path) -> None:
    """Root may have saved the rejected certificate with umask 077; once trusted the agent (the
    service user) must be able to read it, or it refuses the server for ever."""
    server = create_application_certificate(
        certificate_path=tmp_path / "pki" / "rejected" / "server.der",
        key_path=tmp_path / "server-key.pem", application_uri="urn:server",
    )
    (tmp_path / "pki" / "rejected" / "server.der").chmod(0o600)
    stored = TrustStore(tmp_path / "pki").trust(server.thumbprint)
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o644


def test_check_config_names_a_missing_agent_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secured source without the agent's certificate cannot connect: check-config says so
    (exit 2) with the command that makes it, instead of OK."""
    from agent.cli import main

    config = tmp_path / "agent.toml"
    config.write_text("""
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
security_policy = "Basic256Sha256"
  [[sources.signals]]
  node = "ns=2;s=Line1.Filler.GoodCount"
  event = "production.count"
  asset = "line1/filler"
""")
    assert main(["check-config", str(config)]) == 2
    refused = capsys.readouterr()
    assert "OK:" not in refused.out
    assert (f"source line1: certificate {tmp_path / 'pki/own/cert.der'} does not exist; "
            "create it with: edge-agent certs create -c CONFIG") in refused.err
    assert main(["certs", "create", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["check-config", str(config)]) == 0
    assert "OK: site plant-a, agent edge-01" in capsys.readouterr().out
