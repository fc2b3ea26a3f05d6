"""`edge-agent opcua browse/read` and `certs create/trust/list`: the real CLI in a subprocess
against a real asyncua server (the demo plant in its own process)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.demo.plant import NAMESPACE
from testkit.agent_process import REPO
from testkit.broker import free_loopback_port


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def plant_endpoint() -> Iterator[str]:
    port = free_loopback_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.demo.plant", "--port", str(port), "--rate", "5"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        assert "plant serving" in process.stdout.readline()  # bounded by the server start
        yield f"opc.tcp://127.0.0.1:{port}/plant/"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_browse_shows_the_tree_with_pasteable_addresses(plant_endpoint: str) -> None:
    result = edge_agent("opcua", "browse", plant_endpoint, "--path", "Objects/Line1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"nsu={NAMESPACE};s=Line1  Line1  Object")
    assert any(
        line.strip().startswith(f"nsu={NAMESPACE};s=Line1.Filler.GoodCount  GoodCount  "
                                "Variable  Int64 = ")
        for line in lines
    ), result.stdout


def test_read_one_value_by_browse_path_and_a_clear_error_for_a_missing_one(
    plant_endpoint: str,
) -> None:
    result = edge_agent("opcua", "read", plant_endpoint, "Objects/Line1/State")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Objects/Line1/State = ")
    missing = edge_agent("opcua", "read", plant_endpoint, "Objects/Line1/Nope")
    assert missing.returncode == 1
    assert "Objects/Line1 has no child 'Nope'" in missing.stderr


def test_certs_create_list_and_trust(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{free_loopback_port()}"
security_policy = "Basic256Sha256"
application_uri = "urn:plant-a:edge-01"
  [[sources.signals]]
  node = "ns=2;s=Line1.Filler.GoodCount"
  event = "production.count"
  asset = "line1/filler"
""")
    created = edge_agent("certs", "create", "-c", str(config), "--days", "365")
    assert created.returncode == 0, created.stderr
    thumbprint = created.stdout.split("thumbprint")[1].split()[0]
    assert len(thumbprint) == 40
    key = tmp_path / "pki" / "own" / "private" / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "ApplicationUri urn:plant-a:edge-01" in created.stdout
    again = edge_agent("certs", "create", "-c", str(config))
    assert again.returncode == 1 and "exists" in again.stderr

    from connectors.opcua.certificates import create_application_certificate

    server = create_application_certificate(
        certificate_path=tmp_path / "pki" / "rejected" / "server.der",
        key_path=tmp_path / "server-key.pem", application_uri="urn:server",
    )
    listed = edge_agent("certs", "list", "-c", str(config))
    assert f"rejected  {server.thumbprint}" in listed.stdout
    trusted = edge_agent("certs", "trust", server.thumbprint, "-c", str(config))
    assert trusted.returncode == 0, trusted.stderr
    assert f"trusted   {server.thumbprint}" in edge_agent("certs", "list", "-c", str(config)).stdout
    unknown = edge_agent("certs", "trust", "ABCDEF", "-c", str(config))
    assert unknown.returncode == 1 and "no rejected certificate" in unknown.stderr


def test_check_config_connect_names_missing_nodes_and_wrong_types(
    plant_endpoint: str, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "{plant_endpoint}"
  [[sources.signals]]
  node = "nsu={NAMESPACE};s=Line1.Filler.GoodCount"
  event = "production.count"
  asset = "line1/filler"
  [[sources.signals]]
  node = "Objects/Line1/Temperature"
  event = "production.count"
  asset = "line1/filler"
  [[sources.signals]]
  node = "ns=2;s=Line1.Filler.Gone"
  event = "telemetry"
  asset = "line1/filler"
""")
    offline = edge_agent("check-config", str(config))
    assert offline.returncode == 0, offline.stderr
    result = edge_agent("check-config", str(config), "--connect")
    assert result.returncode == 1
    out = result.stdout
    assert f"nsu={NAMESPACE};s=Line1.Filler.GoodCount: OK (ns=2;s=Line1.Filler.GoodCount" in out
    assert "Objects/Line1/Temperature: is Double, but production.count needs an integer" in out
    assert "ns=2;s=Line1.Filler.Gone: the server says BadNodeIdUnknown" in out
    assert "2 problem(s)" in result.stderr


def test_certs_create_refuses_credential_references(tmp_path: Path) -> None:
    """A key read from systemd credentials cannot be written by `certs create`."""
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{free_loopback_port()}"
security_policy = "Basic256Sha256"
application_uri = "urn:plant-a:edge-01"
certificate = "credential:opcua-cert"
private_key = "credential:opcua-key"
  [[sources.signals]]
  node = "ns=2;s=Line1.Filler.GoodCount"
  event = "production.count"
  asset = "line1/filler"
""")
    result = edge_agent("certs", "create", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "credential:opcua-cert" in result.stderr and "LoadCredential=" in result.stderr
    assert not list(tmp_path.glob("credential*"))
