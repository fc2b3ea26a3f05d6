"""packaging/build-deb builds a .deb; its contents, control data and maintainer scripts are checked
with dpkg-deb; the unit passes `systemd-analyze verify` and scores well in `systemd-analyze
security`; and the packaged application, extracted into a throwaway root, runs: check-config on
the shipped config, then the real agent from the package up to READY=1 over sd_notify.

The package is built once per module (pip installs the dependencies into a fresh virtualenv:
the slow part). Installing it with dpkg into the test machine itself is not done: it would add
a user and a unit to the machine running the tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.demo.plant import FillingLinePlant
from tests.support.agent_process import REPO
from tests.support.broker import MosquittoBroker
from tests.support.plant import agent_config_text
from tests.support.sd_notify import NotifyListener

APP = "opt/plant-edge-agent"
UNIT = "lib/systemd/system/edge-agent.service"
CONFIG = "etc/plant-edge-agent/agent.toml"

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="dpkg-deb not found: the .deb is built on Debian only"
)


def run(*command: str | Path, timeout: float = 60, **options: object) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout,
        check=False, **options,  # type: ignore[call-overload]
    )
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    out = Path(tempfile.mkdtemp(prefix="edge-agent-deb-"))
    try:
        built = run(REPO / "packaging" / "build-deb", "--out", out, timeout=900).strip()
        yield Path(built.splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def root(deb: Path) -> Iterator[Path]:
    """The package's files, extracted into a throwaway root."""
    directory = Path(tempfile.mkdtemp(prefix="edge-agent-root-"))
    try:
        run("dpkg-deb", "-x", deb, directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_control_data_and_conffile(deb: Path) -> None:
    fields = {
        name: run("dpkg-deb", "-f", deb, name).strip()
        for name in ("Package", "Version", "Architecture", "Depends")
    }
    assert fields["Package"] == "plant-edge-agent"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", fields["Version"])
    assert fields["Architecture"] == run("dpkg", "--print-architecture").strip()
    assert re.search(r"\bpython3\.\d+\b", fields["Depends"])
    control = Path(tempfile.mkdtemp(prefix="edge-agent-control-"))
    try:
        run("dpkg-deb", "-e", deb, control)
        # The default config is a conffile: an upgrade never overwrites the operator's edits.
        assert (control / "conffiles").read_text().split() == ["/etc/plant-edge-agent/agent.toml"]
        for script in ("postinst", "prerm", "postrm"):
            path = control / script
            assert os.access(path, os.X_OK), f"{script} is not executable"
            run("sh", "-n", path)  # parses as POSIX sh
        postinst = (control / "postinst").read_text()
        assert "useradd --system" in postinst and "getent passwd edge-agent" in postinst
        assert "deb-systemd-helper enable edge-agent.service" in postinst
        # Enabled, never started by the install (only an upgrade restarts a running agent).
        assert not re.search(r"systemctl (start|restart) ", postinst)
        assert "systemctl try-restart edge-agent.service" in postinst
        assert "chmod 0640 /etc/plant-edge-agent/agent.toml" in postinst
        assert "rm -rf /var/lib/plant-edge-agent" in (control / "postrm").read_text()
    finally:
        shutil.rmtree(control, ignore_errors=True)


def test_contents_are_relocated_to_opt(deb: Path, root: Path) -> None:
    listing = run("dpkg-deb", "-c", deb)
    for path in (f"./{APP}/bin/edge-agent", f"./{UNIT}", f"./{CONFIG}", "./usr/bin/edge-agent"):
        assert path in listing, f"{path} not in the package"
    assert (root / "usr/bin/edge-agent").readlink() == Path(f"/{APP}/bin/edge-agent")
    assert (root / APP / "bin/edge-agent").read_text().startswith(f"#!/{APP}/bin/python\n")
    staging = [
        file.name for file in (root / APP / "bin").iterdir()
        if file.is_file() and not file.is_symlink()
        and "build-deb." in file.read_text(errors="ignore")
    ]
    assert staging == [], f"build paths left in {staging}"
    assert "build-deb." not in (root / APP / "pyvenv.cfg").read_text()
    assert not list((root / APP / "bin").glob("pip*")), "pip is not shipped"


def test_packaged_app_runs_from_its_own_virtualenv(root: Path, tmp_path: Path) -> None:
    python = root / APP / "bin/python"
    where = run(python, "-c", "import agent, paho, asyncua; print(agent.__file__)", cwd="/")
    assert where.startswith(str(root / APP / "lib")), where
    # The shipped config: everything but the plant's names, which check-config asks for.
    shipped = root / CONFIG
    done = subprocess.run(
        [str(python), "-m", "agent", "check-config", str(shipped)],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert done.returncode == 2
    assert "agent.site: missing" in done.stderr and "agent.id: missing" in done.stderr
    configured = tmp_path / "agent.toml"
    configured.write_text(
        shipped.read_text()
        .replace('# site = "plant-a"', 'site = "plant-a"')
        .replace('# id = "edge-01"', 'id = "edge-01"')
    )
    checked = run(python, "-m", "agent", "check-config", configured, cwd="/")
    assert "OK: site plant-a, agent edge-01" in checked
    assert 'state_dir = "/var/lib/plant-edge-agent"' in configured.read_text()


def test_packaged_agent_starts_and_notifies_ready(
    root: Path, tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config_text(hub_url=broker.url, opcua_port=plant.port, state_dir=tmp_path / "state")
    )
    with NotifyListener() as systemd:
        process = subprocess.Popen(
            [str(root / APP / "bin/python"), "-m", "agent", "run", "-c", str(config)],
            cwd="/", env={"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": str(systemd.path)},
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("wb"),
        )
        try:
            systemd.wait_for(lambda message: message.get("READY") == "1", timeout=30)
            process.terminate()
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert (tmp_path / "state" / "status.json").exists()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not found (make test installs systemd as root)",
)
def test_unit_verifies_and_scores_well(root: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: point it at the extracted package.
    unit = tmp_path / "edge-agent.service"
    unit.write_text((root / UNIT).read_text().replace(f"/{APP}/", f"{root}/{APP}/"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in done.stderr.splitlines() if "edge-agent.service" in line]
    assert done.returncode == 0 and problems == [], done.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match is not None, security.stdout + security.stderr
    assert float(match.group(1)) <= 2.0, security.stdout
