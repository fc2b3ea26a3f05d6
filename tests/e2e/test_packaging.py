"""packaging/build-deb builds a .deb; its contents, control data and maintainer scripts are checked
with dpkg-deb and lintian (no error); the unit passes `systemd-analyze verify` and scores well in
`systemd-analyze security`; and the packaged application, extracted into a throwaway root, runs:
check-config on the shipped config, the real agent from the package up to READY=1 over
sd_notify, and (as root) the secured-server steps of the README: `certs create` as root, then
check-config and the agent as the service user under a read-only system except the unit's
writable paths, as systemd runs it.

The package is built once per session (pip installs the dependencies into a fresh virtualenv:
the slow part, about a minute on a quiet 2-core machine, several under load). Its budget is
explicit: `BUILD_BUDGET_S` for the build, on top of each test's own, so the global pytest
timeout never cuts it short; every wait below is a bounded wait for a condition. Installing
the package with dpkg into the test machine itself is not done: it would add a unit to the
machine running the tests (the service-user test adds the unit's system user when it is
missing, and removes it again)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asyncua import ua

from agent.cli.opcua import SERVICE_USER
from agent.demo.plant import FillingLinePlant
from testkit.agent_process import REPO
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.opcua_servers import TEMPERATURE, serve_line, thumbprint_of
from testkit.plant import agent_config_text
from testkit.sd_notify import NotifyListener

APP = "opt/plant-edge-agent"
UNIT = "lib/systemd/system/edge-agent.service"
CONFIG = "etc/plant-edge-agent/agent.toml"
# The slowest step: a virtualenv with every dependency, pip-installed, on a loaded machine.
BUILD_BUDGET_S = 900
# One test's own work on a loaded machine (agent starts, CLI runs, lintian on 50 MB).
TEST_BUDGET_S = 300

pytestmark = [
    pytest.mark.skipif(
        shutil.which("dpkg-deb") is None,
        reason="dpkg-deb not found: the .deb is built on Debian only",
    ),
    pytest.mark.e2e,
    # Whichever test runs first pays for the session's build (pytest-timeout counts fixtures).
    pytest.mark.timeout(BUILD_BUDGET_S + TEST_BUDGET_S),
]


def run(*command: str | Path, timeout: float = 180, **options: object) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout,
        check=False, **options,  # type: ignore[call-overload]  # subprocess.run keywords
    )
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="session")
def deb() -> Iterator[Path]:
    out = Path(tempfile.mkdtemp(prefix="edge-agent-deb-"))
    try:
        built = run(REPO / "packaging" / "build-deb", "--out", out, timeout=BUILD_BUDGET_S).strip()
        yield Path(built.splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def root(deb: Path) -> Iterator[Path]:
    """The package's files, extracted into a throwaway root that any user may enter (as `/`
    is), with the byte-code compiled as the postinst does."""
    directory = Path(tempfile.mkdtemp(prefix="edge-agent-root-"))
    try:
        run("dpkg-deb", "-x", deb, directory)
        directory.chmod(0o755)
        run(directory / APP / "bin/python", "-m", "compileall", "-q", "-j", "0",
            directory / APP / "lib", timeout=TEST_BUDGET_S)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_control_data_and_conffile(deb: Path) -> None:
    fields = {
        name: run("dpkg-deb", "-f", deb, name).strip()
        for name in ("Package", "Version", "Architecture", "Depends", "Maintainer", "Homepage")
    }
    assert fields["Package"] == "plant-edge-agent"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", fields["Version"])
    assert fields["Architecture"] == run("dpkg", "--print-architecture").strip()
    assert re.search(r"\bpython3\.\d+\b", fields["Depends"])
    # What installing needs, said exactly: the interpreter, the C/C++ runtime of the compiled
    # modules (dpkg-shlibdeps), useradd (passwd) and the unit's /bin/kill (procps).
    depends = {re.split(r"[ (]", part.strip())[0] for part in fields["Depends"].split(",")}
    assert {"libc6", "passwd", "procps"} <= depends, fields["Depends"]
    assert "init-system-helpers" not in depends  # essential: never a Depends
    # A contact, not a placeholder.
    assert re.fullmatch(r"[^<>]+ <[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+>", fields["Maintainer"])
    assert "root@" not in fields["Maintainer"] and "localhost" not in fields["Maintainer"]
    assert not fields["Homepage"].startswith("file:"), fields["Homepage"]
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
        # Byte-code: compiled by the postinst, removed by the prerm (dpkg does not know it).
        assert "-m compileall" in postinst
        assert "__pycache__" in (control / "prerm").read_text()
        # dpkg --verify and debsums can check every shipped file but the conffile.
        sums = (control / "md5sums").read_text()
        assert "  opt/plant-edge-agent/bin/edge-agent\n" in sums and " etc/" not in sums
        # The trust store the agent writes (the unit's ReadWritePaths=) is the agent's.
        assert "-o edge-agent -g edge-agent /etc/plant-edge-agent/pki" in postinst
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
    assert "__pycache__" not in listing, "byte-code is the postinst's to compile"
    for path in ("changelog.gz", "copyright"):
        assert f"./usr/share/doc/plant-edge-agent/{path}" in listing, f"no {path}"
    copyright_text = (root / "usr/share/doc/plant-edge-agent/copyright").read_text()
    assert "License: Apache-2.0" in copyright_text and "asyncua" in copyright_text


@pytest.mark.skipif(shutil.which("lintian") is None,
                    reason="lintian not found (make test installs it as root)")
def test_lintian_finds_no_error(deb: Path) -> None:
    """Warnings may stay (packaging/README.md lists them); errors may not. An accepted finding
    is an override with its reason, shipped in the package (lintian prints it as O:)."""
    done = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)],
        capture_output=True, text=True, timeout=TEST_BUDGET_S, check=False,
    )
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], "\n".join(errors[:40])
    assert done.returncode in (0, 2), done.stdout[-2000:] + done.stderr[-2000:]


def test_packaged_app_runs_from_its_own_virtualenv(root: Path, tmp_path: Path) -> None:
    python = root / APP / "bin/python"
    where = run(python, "-c", "import agent, paho, asyncua; print(agent.__file__)", cwd="/")
    assert where.startswith(str(root / APP / "lib")), where
    # The compiled modules still load after build-deb stripped them.
    compiled = ("cryptography.hazmat.bindings._rust", "pydantic_core._pydantic_core",
                "msgpack._cmsgpack", "aiohttp._http_parser", "multidict._multidict",
                "frozenlist._frozenlist", "yarl._quoting_c", "_cffi_backend")
    run(python, "-c", f"import {', '.join(compiled)}", cwd="/")
    # The shipped config: everything but the plant's names, which check-config asks for.
    shipped = root / CONFIG
    done = subprocess.run(
        [str(python), "-m", "agent", "check-config", str(shipped)],
        capture_output=True, text=True, timeout=TEST_BUDGET_S, cwd="/",
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
            systemd.wait_for(lambda message: message.get("READY") == "1", timeout=TEST_BUDGET_S)
            process.terminate()
            assert process.wait(timeout=120) == 0
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
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=180
    )
    problems = [line for line in done.stderr.splitlines() if "edge-agent.service" in line]
    assert done.returncode == 0 and problems == [], done.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True, text=True, timeout=180,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match is not None, security.stdout + security.stderr
    assert float(match.group(1)) <= 2.0, security.stdout


def unit_settings(unit_text: str, key: str) -> list[str]:
    """Every value of `key=` in a unit file's text, in order."""
    return [
        line.split("=", 1)[1].strip() for line in unit_text.splitlines()
        if line.startswith(f"{key}=")
    ]


def test_unit_runs_as_the_cli_service_user_with_room_for_descriptors_and_the_trust_store() -> None:
    """The unit as shipped: `certs create` and check-config assume its User=; the pki dir a
    relative `pki_dir` gives for /etc/plant-edge-agent/agent.toml is writable under
    ProtectSystem=strict; LimitNOFILE= lifts systemd's 1,024 descriptors."""
    unit = (REPO / "packaging/systemd/edge-agent.service").read_text()
    assert unit_settings(unit, "User") == [SERVICE_USER]
    assert unit_settings(unit, "Group") == [SERVICE_USER]
    assert unit_settings(unit, "ProtectSystem") == ["strict"]
    assert unit_settings(unit, "LimitNOFILE") == ["65536"]
    writable = [path.lstrip("-") for value in unit_settings(unit, "ReadWritePaths")
                for path in value.split()]
    assert "/etc/plant-edge-agent/pki" in writable


# The service user's files and folders, as the package and systemd lay them out.
SERVICE_CONFIG_DIR = "etc/plant-edge-agent"
SERVICE_STATE_DIR = "var/lib/plant-edge-agent"


@pytest.fixture(scope="session")
def service_user() -> Iterator[pwd.struct_passwd]:
    """The unit's system user, made as the postinst makes it when this machine has none (and
    removed again at the end of the session)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: it adds the service user and runs commands as it")
    for tool in ("groupadd", "useradd", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (make test installs it as root)")
    created_user = created_group = False
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            grp.getgrnam(SERVICE_USER)
        except KeyError:
            run("groupadd", "--system", SERVICE_USER)
            created_group = True
        run("useradd", "--system", "--gid", SERVICE_USER, "--no-create-home", "--home-dir",
            "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER)
        created_user = True
        entry = pwd.getpwnam(SERVICE_USER)
    try:
        yield entry
    finally:
        if created_user:
            subprocess.run(["userdel", SERVICE_USER], capture_output=True, timeout=60,
                           check=False)
        if created_group:
            subprocess.run(["groupdel", SERVICE_USER], capture_output=True, timeout=60,
                           check=False)


def as_service_user(user: pwd.struct_passwd, *command: str | Path) -> list[str]:
    """`command` run as the service user, its own groups only, no capabilities."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "--inh-caps=-all", "--", *[str(part) for part in command]]


def under_the_unit(layout: Path, unit_text: str, command: list[str]) -> list[str]:
    """`command` in a mount namespace where `layout` (the packaged /etc and /var) is read-only
    except the unit's ReadWritePaths= and StateDirectory=, as ProtectSystem=strict leaves them
    (the package's own files are root's: the service user cannot write them anyway)."""
    writable = [path for value in unit_settings(unit_text, "ReadWritePaths")
                for path in value.split()]
    writable += [f"/var/lib/{name}" for name in unit_settings(unit_text, "StateDirectory")]
    script = [f"mount --bind {layout} {layout}", f"mount -o remount,bind,ro {layout}"]
    for path in writable:
        optional, inside = path.startswith("-"), layout / path.lstrip("-").lstrip("/")
        if optional and not inside.exists():
            continue
        script += [f"mount --bind {inside} {inside}", f"mount -o remount,bind,rw {inside}"]
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            " && ".join(script) + ' && exec "$@"', "sh", *command]


@pytest.fixture
def layout(service_user: pwd.struct_passwd) -> Iterator[Path]:
    """The package's /etc/plant-edge-agent and /var/lib/plant-edge-agent with the owners and
    modes the postinst and systemd (StateDirectory=) give them, in a folder anyone may enter."""
    directory = Path(tempfile.mkdtemp(prefix="edge-agent-layout-"))
    try:
        directory.chmod(0o755)
        config_dir, state_dir = directory / SERVICE_CONFIG_DIR, directory / SERVICE_STATE_DIR
        for folder in (config_dir, state_dir):
            folder.mkdir(parents=True)
            for parent in folder.relative_to(directory).parents:
                (directory / parent).chmod(0o755)
        os.chown(config_dir, 0, service_user.pw_gid)
        config_dir.chmod(0o750)
        os.chown(state_dir, service_user.pw_uid, service_user.pw_gid)
        state_dir.chmod(0o750)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_service_config(layout: Path, user: pwd.struct_passwd, text: str) -> Path:
    """agent.toml as the postinst leaves it: root:edge-agent 0640."""
    config = layout / SERVICE_CONFIG_DIR / "agent.toml"
    config.write_text(text)
    os.chown(config, 0, user.pw_gid)
    config.chmod(0o640)
    return config


def secured_config_text(layout: Path, *, hub_url: str, opcua_port: int) -> str:
    """The README's secured source, with the default (relative) certificate and pki paths."""
    return f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{layout / SERVICE_STATE_DIR}"

[hub]
url = "{hub_url}"
status_interval_s = 1

[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{opcua_port}/line/"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
application_uri = "urn:plant-a:edge-01"
reconnect_min_s = 0.2
reconnect_max_s = 1.0

  [[sources.signals]]
  node = "{TEMPERATURE}"
  event = "telemetry"
  asset = "line1/filler"
  name = "temperature"
  unit = "Cel"
"""


def owner_and_mode(path: Path) -> tuple[str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


async def wait_until(
    condition: Callable[[], bool], what: str, *, timeout: float, log: Path
) -> None:
    """Poll `condition()` (bounded) while the event loop keeps serving the OPC UA server."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s; agent log:\n{tail(log)}")
        await asyncio.sleep(0.2)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def connected_with_readings(state_dir: Path) -> bool:
    """Whether the agent's last status shows source line1 connected with readings."""
    try:
        snapshot = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return False
    source = snapshot.get("sources", {}).get("line1", {})
    return source.get("connected") is True and source.get("readings_total", 0) >= 1


def create_certs_as_root_and_check_as_both(
    python: Path, config: Path, service_user: pwd.struct_passwd
) -> None:
    """README step 2 as root on the packaged config; the key is then the service user's to
    read, and check-config says OK as root and as the service user."""
    pki = config.parent / "pki"
    created = run(python, "-m", "agent", "certs", "create", "-c", config, cwd="/")
    assert f"owner {SERVICE_USER}" in created
    key, cert = pki / "own/private/key.pem", pki / "own/cert.der"
    assert owner_and_mode(key) == (SERVICE_USER, 0o600)
    assert owner_and_mode(key.parent) == (SERVICE_USER, 0o700)
    assert owner_and_mode(cert)[0] == SERVICE_USER
    for folder in (pki, pki / "own", pki / "trusted", pki / "rejected"):
        assert owner_and_mode(folder)[0] == SERVICE_USER, folder
    readable = subprocess.run(
        as_service_user(service_user, python, "-c",
                        "import sys; open(sys.argv[1], 'rb').close()", key),
        capture_output=True, text=True, timeout=TEST_BUDGET_S, cwd="/", check=False,
    )
    assert readable.returncode == 0, f"{SERVICE_USER} cannot read {key}: {readable.stderr}"
    for command in (
        [str(python), "-m", "agent", "check-config", str(config)],
        as_service_user(service_user, python, "-m", "agent", "check-config", config),
    ):
        checked = subprocess.run(command, capture_output=True, text=True,
                                 timeout=TEST_BUDGET_S, cwd="/", check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "OK: site plant-a, agent edge-01" in checked.stdout


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as log_file:
        return subprocess.Popen(command, cwd="/", env={"PATH": "/usr/bin:/bin"},
                                stdout=log_file, stderr=log_file)


async def test_secured_server_steps_as_root_then_the_agent_as_the_service_user(
    root: Path, layout: Path, service_user: pwd.struct_passwd, broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    """README "Connect to a secured server" under the package: root runs `certs create` and
    `certs trust` on /etc/plant-edge-agent/agent.toml; the agent runs as the service user with
    /etc read-only except the unit's ReadWritePaths=. The key is the service user's to read,
    check-config says OK as either user, the agent files the untrusted server certificate in
    pki/rejected/, connects once it is trusted, and no PermissionError appears anywhere."""
    python = root / APP / "bin/python"
    unit_text = (root / UNIT).read_text()
    port = free_loopback_port()
    config = write_service_config(
        layout, service_user, secured_config_text(layout, hub_url=broker.url, opcua_port=port)
    )
    pki = config.parent / "pki"
    await asyncio.to_thread(create_certs_as_root_and_check_as_both, python, config, service_user)

    log = tmp_path / "agent.log"
    async with serve_line(
        port, pki=tmp_path / "server-pki",
        policies=[ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
    ):
        server_thumbprint = thumbprint_of(tmp_path / "server-pki/server/cert.der")
        command = under_the_unit(
            layout, unit_text,
            as_service_user(service_user, python, "-m", "agent", "run", "-c", config),
        )
        agent = await asyncio.to_thread(start, command, log)
        try:
            rejected = pki / "rejected" / f"{server_thumbprint}.der"
            await wait_until(rejected.exists, f"{rejected}", timeout=TEST_BUDGET_S, log=log)
            await asyncio.to_thread(
                run, python, "-m", "agent", "certs", "trust", server_thumbprint[:12], "-c",
                config, cwd="/",
            )
            state_dir = layout / SERVICE_STATE_DIR
            await wait_until(
                lambda: connected_with_readings(state_dir),
                "a secured session with readings", timeout=TEST_BUDGET_S, log=log,
            )
            agent.terminate()
            assert await asyncio.to_thread(agent.wait, 120) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=30)
    text = await asyncio.to_thread(log.read_text, errors="replace")
    assert "is not trusted" in text  # the refusal the README describes, once the agent saw it
    for sign in ("PermissionError", "Permission denied", "Read-only file system", "Traceback"):
        assert sign not in text, f"{sign} in the agent log:\n{text[-4000:]}"


def test_check_config_names_the_key_the_service_user_cannot_read(
    root: Path, layout: Path, service_user: pwd.struct_passwd
) -> None:
    """Certificates made as root for root (what `certs create` did before it knew the service
    user): check-config, as root and as the service user, refuses with the path, its owner
    and mode, and the command that fixes it, instead of an OK the agent then contradicts."""
    python = root / APP / "bin/python"
    config = write_service_config(
        layout, service_user,
        secured_config_text(layout, hub_url="mqtt://127.0.0.1:1883", opcua_port=4840),
    )
    run(python, "-m", "agent", "certs", "create", "-c", config, "--owner", "root", cwd="/")
    key = config.parent / "pki/own/private/key.pem"
    assert owner_and_mode(key) == ("root", 0o600)
    for command in (
        [str(python), "-m", "agent", "check-config", str(config)],
        as_service_user(service_user, python, "-m", "agent", "check-config", config),
    ):
        checked = subprocess.run(command, capture_output=True, text=True,
                                 timeout=TEST_BUDGET_S, cwd="/", check=False)
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert "OK:" not in checked.stdout
        assert f"private_key {key}" in checked.stderr
        assert f"{SERVICE_USER} cannot enter {key.parent}" in checked.stderr, checked.stderr
        assert f"chgrp {SERVICE_USER} {key.parent} && chmod g+x {key.parent}" in checked.stderr
        assert f"{SERVICE_USER} cannot write in" in checked.stderr  # rejected/ is root's too
        assert "Traceback" not in checked.stderr
