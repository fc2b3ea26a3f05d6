"""The peer, side by side: ThingsBoard IoT Gateway on the same OPC UA workload (issue 18).

`bench.ingest` runs the agent, then this peer, against the same asyncua server process and the
same mosquitto, so every figure of the two is a ratio measured in one run. The peer is the
`thingsboard-gateway` package from PyPI (3.8.x) in its own venv, `.bench-peer-venv` (`make
bench-peer`), never in the project's: `unavailable()` says why it cannot run (the bench prints
that and goes on without it).

Per run, `write_config` generates the peer's config into a temp dir (loopback only): its
`tb_gateway.json` (the shipped defaults, the broker on 127.0.0.1, in-memory storage as
shipped, statistics, remote configuration and remote shell off) and one OPC UA connector per
asyncua server process of the run (`opcua.json`, `opcua-1.json`..: one device each, that
server's variables as timeseries by NodeId, subscriptions on, the source timestamp as each
value's `ts`). A ThingsBoard server answers the gateway's
`getSessionLimits` RPC when it connects; on a plain broker nobody does, so the gateway waits
and sends nothing. `SessionLimitsResponder` is that answer, as the gateway's own MQTT client
(`tb_device_mqtt.py`) expects it: a request on `v1/devices/me/rpc/request/<id>` gets
`{"maxPayloadSize", "maxInflightMessages", "rateLimits", "gatewayRateLimits"}` on
`v1/devices/me/rpc/response/<id>`, with ThingsBoard's default limits and no rate limits.

`PeerTally` checks every value off as the gateway publishes it on `v1/gateway/telemetry`
(`{device: [{"ts": ms, "values": {"V7": 3.0}}]}`), exactly like the agent's `Tally`: each
change is a distinct (item, value) pair, so a lost or repeated value shows. `PeerGateway` is
the gateway process (its own session, so the whole group is ended on close, also on SIGTERM
of the bench, which unwinds through `close`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from testkit.broker import MosquittoBroker
from testkit.durability import TimedSubscriber

REPO = Path(__file__).resolve().parents[1]
PEER_VENV = REPO / ".bench-peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_NAME = "ThingsBoard IoT Gateway"
STORAGES = ("memory", "sqlite")  # its in-memory queue (as shipped) or its SQLite storage
TELEMETRY_TOPIC = "v1/gateway/telemetry"
RPC_REQUEST_TOPIC = "v1/devices/me/rpc/request/"
RPC_RESPONSE_TOPIC = "v1/devices/me/rpc/response/"
DEVICE = "bench-line"
UPDATE_CHECK_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
# What a ThingsBoard server's MQTT transport answers by default (transport.mqtt.max_payload_size,
# max inflight messages) with no rate limits configured.
SESSION_LIMITS: dict[str, Any] = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {},
    "gatewayRateLimits": {},
}


def unavailable() -> str | None:
    """Why the peer cannot run here (None: it can)."""
    if not PEER_PYTHON.exists():
        return f"{PEER_VENV.relative_to(REPO)} is absent: run `make bench-peer` to install it"
    found = subprocess.run(
        [
            str(PEER_PYTHON),
            "-c",
            "import thingsboard_gateway.version as v, asyncua; print(v.VERSION)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if found.returncode != 0:
        last = (found.stderr.strip().splitlines() or ["?"])[-1]
        return f"thingsboard-gateway or asyncua does not import in {PEER_VENV.name}: {last}"
    return None


def peer_version() -> str:
    found = subprocess.run(
        [str(PEER_PYTHON), "-c", "import thingsboard_gateway.version as v; print(v.VERSION)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return found.stdout.strip()


def write_config(
    directory: Path,
    *,
    broker_port: int,
    opcua_port: int = 0,
    items: int = 0,
    servers: Sequence[tuple[int, int, int]] = (),
    namespace_index: int = 2,
    storage: str = "memory",
) -> Path:
    """The peer's config dir for one run: tb_gateway.json, one OPC UA connector per server
    (`servers`: port, first item, items; none: one server, `opcua_port` with `items` from V0)
    and logs.json. The first connector is `opcua.json` with the device `DEVICE`; the others
    `opcua-1.json`.. with `DEVICE-1`.. (one device per connector: the gateway ties a device
    to the connector that made it)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    layout = list(servers) or [(opcua_port, 0, items)]
    names = ["opcua.json", *(f"opcua-{index}.json" for index in range(1, len(layout)))]
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {
                "enable": False,
                "statsSendPeriodInSeconds": 3600,
                "customStatsSendPeriodInSeconds": 3600,
            },
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": _storage(directory, storage),
        "grpc": {"enabled": False},
        "connectors": [
            {
                "type": "opcua",
                "name": "bench" if index == 0 else f"bench-{index}",
                "configuration": name,
            }
            for index, name in enumerate(names)
        ],
    }
    for index, ((port, first, count), name) in enumerate(zip(layout, names, strict=True)):
        device = DEVICE if index == 0 else f"{DEVICE}-{index}"
        connector = _connector(port, range(first, first + count), namespace_index, device)
        (directory / name).write_text(json.dumps(connector, indent=2) + "\n")
    logs = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "plain",
                "filename": str(directory / "logs" / "gateway.log"),
            }
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
        "loggers": {
            name: {"level": "WARNING", "handlers": ["file"], "propagate": False}
            for name in (
                "service",
                "connector",
                "converter",
                "tb_connection",
                "storage",
                "extension",
                "tb_gateway.service",
            )
        },
    }
    for name, content in (("tb_gateway.json", gateway), ("logs.json", logs)):
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
    return directory


def _connector(port: int, numbers: range, namespace_index: int, device: str) -> dict[str, Any]:
    """One OPC UA connector: one device whose timeseries are `V<n>` of `numbers` by NodeId."""
    return {
        "server": {
            "url": f"opc.tcp://127.0.0.1:{port}/bench/",
            "timeoutInMillis": 30000,
            "scanPeriodInMillis": 3600000,
            "pollPeriodInMillis": 5000,
            "enableSubscriptions": True,
            "subCheckPeriodInMillis": 100,
            "subDataMaxBatchSize": 1000,
            "subDataMinBatchCreationTimeMs": 200,
            "subscriptionProcessBatchSize": 2000,
            "sessionTimeoutInMillis": 120000,
            "showMap": False,
            "security": "None",
            "identity": {"type": "anonymous"},
        },
        "logLevel": "WARNING",
        "mapping": [
            {
                "deviceNodeSource": "identifier",
                "deviceNodePattern": f"ns={namespace_index};s=Bench",
                "deviceInfo": {
                    "deviceNameExpression": device,
                    "deviceNameExpressionSource": "constant",
                    "deviceProfileExpression": "default",
                    "deviceProfileExpressionSource": "constant",
                },
                "attributes": [],
                "timeseries": [
                    {
                        "key": f"V{number}",
                        "type": "identifier",
                        "value": f"${{ns={namespace_index};s=V{number}}}",
                        "timestampLocation": "sourceTimestamp",
                    }
                    for number in numbers
                ],
                "rpc_methods": [],
                "attributes_updates": [],
            }
        ],
    }


def _storage(directory: Path, kind: str) -> dict[str, Any]:
    if kind == "memory":
        return {"type": "memory", "read_records_count": 100, "max_records_count": 1_000_000}
    if kind == "sqlite":  # durable, like the agent's buffer
        return {
            "type": "sqlite",
            "data_file_path": f"{directory / 'data'}/",
            "messages_ttl_check_in_hours": 1,
            "messages_ttl_in_days": 7,
        }
    raise ValueError(f"peer storage {kind!r}: expected 'memory' or 'sqlite'")


class SessionLimitsResponder:
    """Answers the gateway's `getSessionLimits` RPC on a plain broker, as a ThingsBoard server
    would (see the module docstring). `answered` counts the replies."""

    def __init__(self, broker: MosquittoBroker, limits: dict[str, Any] | None = None) -> None:
        self._limits = dict(SESSION_LIMITS if limits is None else limits)
        self.answered = 0
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-tb-limits")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._broker = broker

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(RPC_REQUEST_TOPIC + "+", qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(request, dict) or request.get("method") != "getSessionLimits":
            return
        request_id = message.topic[len(RPC_REQUEST_TOPIC) :]
        client.publish(RPC_RESPONSE_TOPIC + request_id, json.dumps(self._limits), qos=1)
        self.answered += 1

    def __enter__(self) -> Self:
        self._client.connect_async(self._broker.host, self._broker.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.__exit__()
            raise TimeoutError(
                f"the session-limits responder did not subscribe on {self._broker.url} within 10 s"
            )
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class PeerTally:
    """The values the gateway published, as they reach a `TimedSubscriber` on
    `v1/gateway/telemetry`: (item, value) -> (arrival time, latency), plus repeats. Latency is
    arrival minus the value's `ts` (the server's source timestamp, in ms)."""

    def __init__(self, subscriber: TimedSubscriber) -> None:
        self.subscriber = subscriber
        self.arrived: dict[tuple[int, float], tuple[float, float]] = {}
        self.repeats = 0
        self.messages = 0
        self._next = 0

    def update(self) -> None:
        messages, received_at = self.subscriber.snapshot()
        for message, at in zip(messages[self._next :], received_at[self._next :], strict=False):
            self._next += 1
            if message.topic != TELEMETRY_TOPIC:
                continue
            self.messages += 1
            for key, made in telemetry_values(message.payload):
                if key in self.arrived:
                    self.repeats += 1
                else:
                    self.arrived[key] = (at, at - made)


def telemetry_values(payload: bytes) -> list[tuple[tuple[int, float], float]]:
    """((item, value), source time in s) for every `V<n>` value of one gateway telemetry
    message; anything else in it is ignored."""
    body = json.loads(payload)
    found: list[tuple[tuple[int, float], float]] = []
    if not isinstance(body, dict):
        return found
    for entries in body.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                continue
            values = entry.get("values", entry)
            made = float(entry.get("ts", time.time() * 1e3)) / 1e3
            for name, value in values.items() if isinstance(values, dict) else ():
                if isinstance(name, str) and name[:1] == "V" and name[1:].isdigit():
                    found.append(((int(name[1:]), float(value)), made))
    return found


class PeerGateway:
    """The `thingsboard-gateway` process on a config dir from `write_config`."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.output = config_dir / "logs" / "stdout.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        env = {
            name: value
            for name, value in os.environ.items()
            if name.lower() not in ("pythonpath", "mqtt_proxy", "all_proxy")
        }
        # Loopback only: the gateway's update check (an HTTPS post at start) goes to a closed
        # loopback port and fails at once; MQTT and OPC UA to 127.0.0.1 bypass it.
        env.update(
            {
                "TB_GW_CONFIG_DIR": str(self.config_dir),
                "PYTHONUNBUFFERED": "1",
                "HTTPS_PROXY": UPDATE_CHECK_PROXY,
                "HTTP_PROXY": UPDATE_CHECK_PROXY,
                "https_proxy": UPDATE_CHECK_PROXY,
                "http_proxy": UPDATE_CHECK_PROXY,
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(PEER_PYTHON),
                    "-c",
                    "from thingsboard_gateway.tb_gateway import daemon; daemon()",
                ],
                cwd=self.config_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        parts = []
        for path in (self.output, self.config_dir / "logs" / "gateway.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def close(self) -> None:
        """SIGTERM to its process group, then SIGKILL after 15 s (its shutdown joins threads)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()
