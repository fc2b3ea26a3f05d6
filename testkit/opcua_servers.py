"""Real asyncua servers for the OPC UA connector tests: secured, with users, history and alarms.

`serve_line(port, ...)` starts a server on 127.0.0.1:port with this address space:

    namespace TEST_NAMESPACE (index 3: a filler namespace is registered first, so an address
    written with index 2 would be wrong; tests use the URI or a browse path)
    Objects/Line1/Temperature   Double   ns=3;s=Line1.Temperature   historized in memory
    Objects/Line1/Count         Int64    ns=3;s=Line1.Count
    Objects/Line1/Alarms        object, event notifier; `raise_alarm()` fires an
                                OffNormalAlarmType event from it (and from Server)

Security: `policies` (asyncua `SecurityPolicyType`s) with a server certificate made by
`connectors.opcua.certificates` in `pki/server/`; `users` enables a user manager that accepts
exactly those user name / password pairs; `trusted_clients` (DER files) makes the server refuse
any other client certificate. `server_certificate(pki, days=N)` made before `serve_line` gives the
server a certificate that expires in N days.

Faults: `set_clock(offset)` skews the server's CurrentTime; `silence_subscriptions()` stops the
server publishing (no data, no keep-alive) while the session stays up; `drop_connections()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509

from connectors.opcua.certificates import create_application_certificate, describe

TEST_NAMESPACE = "urn:plant-edge-agent:test-line"
SERVER_URI = "urn:plant-edge-agent:test-server"
TEMPERATURE = f"nsu={TEST_NAMESPACE};s=Line1.Temperature"
COUNT = f"nsu={TEST_NAMESPACE};s=Line1.Count"
ALARMS = f"nsu={TEST_NAMESPACE};s=Line1.Alarms"

ALL_SECURE = [
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


class _Users(UserManager):
    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if certificate is not None and username is None:
            return User(role=UserRole.User)
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User)
        return None


def server_certificate(pki: Path, *, days: int = 730) -> tuple[Path, Path]:
    """The test server's certificate and key (made once per pki folder, valid for `days`)."""
    cert, key = pki / "server" / "cert.der", pki / "server" / "key.pem"
    if not cert.exists():
        create_application_certificate(
            certificate_path=cert, key_path=key, application_uri=SERVER_URI,
            common_name="test server", host_name="localhost", days=days,
        )
    return cert, key


def thumbprint_of(path: Path) -> str:
    return describe(x509.load_der_x509_certificate(path.read_bytes())).thumbprint


class LineServer:
    """A started server and its variables; `write` sets a value with a source timestamp."""

    def __init__(self, server: Server, port: int, variables: dict[str, Node], alarms: Node) -> None:
        self.server = server
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/line/"
        self.variables = variables
        self.alarms = alarms

    async def write(self, name: str, value: float | int, *, at: datetime | None = None) -> None:
        variable = self.variables[name]
        variant_type = ua.VariantType.Double if name == "Temperature" else ua.VariantType.Int64
        await variable.write_value(
            ua.DataValue(
                ua.Variant(value, variant_type),
                StatusCode=ua.StatusCode(StatusCodes.Good),
                SourceTimestamp=at or datetime.now(UTC),
                ServerTimestamp=datetime.now(UTC),
            )
        )

    async def drop_connections(self) -> None:
        """A network loss: close every client connection and stop listening; the address
        space (and its history) lives on."""
        assert self.server.bserver is not None
        await self.server.bserver.stop()

    async def accept_connections(self) -> None:
        assert self.server.bserver is not None
        await self.server.bserver.start()

    async def set_clock(self, offset: timedelta) -> None:
        """Make the server's clock (Server/ServerStatus/CurrentTime) run `offset` off: stop
        asyncua's time updater (it rewrites CurrentTime every second) and write a skewed time."""
        iserver = self.server.iserver
        if iserver.time_task is not None:
            iserver._time_task_stop = True  # the loop's own stop flag; it ends within 1 s
            await asyncio.wait_for(iserver.time_task, timeout=5)
        await iserver.current_time_node.write_value(datetime.now(UTC) + offset)

    def silence_subscriptions(self) -> int:
        """Make every subscription go silent, as a hung server task would: its publishing loop
        stops (no data, no keep-alive) while the session and the connection stay up. Returns
        how many were silenced."""
        silenced = 0
        for subscription in self.server.iserver.subscription_service.subscriptions.values():
            task = subscription._task
            if task is not None:
                subscription._closing = True
                task.cancel()
                subscription._task = None
                silenced += 1
        return silenced

    async def historized(self, name: str) -> list[object]:
        """The values the server's in-memory history holds for `name`, oldest first."""
        values = await self.variables[name].read_raw_history(
            datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
        )
        return [value.Value.Value for value in values if value.Value is not None]

    async def raise_alarm(self, message: str, severity: int, *, at: datetime) -> None:
        generator = await self.server.get_event_generator(
            ObjectIds.OffNormalAlarmType, self.alarms
        )
        generator.event.Message = ua.LocalizedText(message)
        generator.event.Severity = severity
        generator.event.SourceName = "Line1.Filler"
        generator.event.ConditionName = "FillerOverTemperature"
        await generator.trigger(time_attr=at)


@asynccontextmanager
async def serve_line(
    port: int,
    *,
    pki: Path | None = None,
    policies: Sequence[ua.SecurityPolicyType] = (ua.SecurityPolicyType.NoSecurity,),
    users: Mapping[str, str] | None = None,
    trusted_clients: Sequence[Path] = (),
    history: bool = False,
) -> AsyncIterator[LineServer]:
    server = Server(user_manager=_Users(users) if users is not None else None)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/line/")
    server.set_server_name("plant-edge-agent test line")
    await server.set_application_uri(SERVER_URI)
    server.set_security_policy(list(policies))
    if pki is not None:
        cert, key = server_certificate(pki)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
    if trusted_clients:
        allowed = {thumbprint_of(path) for path in trusted_clients}

        async def validate(certificate: x509.Certificate, _: ua.ApplicationDescription) -> None:
            if describe(certificate).thumbprint not in allowed:
                raise ServiceError(StatusCodes.BadCertificateUntrusted)

        server.set_certificate_validator(validate)
    await server.register_namespace("urn:plant-edge-agent:filler-namespace")
    index = await server.register_namespace(TEST_NAMESPACE)
    line = await server.nodes.objects.add_object(ua.NodeId("Line1", index), "Line1")
    temperature = await line.add_variable(
        ua.NodeId("Line1.Temperature", index),
        "Temperature",
        ua.Variant(20.0, ua.VariantType.Double),
    )
    count = await line.add_variable(
        ua.NodeId("Line1.Count", index), "Count", ua.Variant(0, ua.VariantType.Int64)
    )
    alarms = await line.add_object(ua.NodeId("Line1.Alarms", index), "Alarms")
    await alarms.write_attribute(
        AttributeIds.EventNotifier, ua.DataValue(ua.Variant(1, ua.VariantType.Byte))
    )
    async with server:
        if history:
            await server.historize_node_data_change(temperature, period=timedelta(hours=1))
            level = ua.DataValue(ua.Variant(0x07, ua.VariantType.Byte))  # read, write, history
            for attribute in (AttributeIds.AccessLevel, AttributeIds.UserAccessLevel):
                await temperature.write_attribute(attribute, level)
        yield LineServer(server, port, {"Temperature": temperature, "Count": count}, alarms)


# --- a plant of ~50 variables in folders, with EngineeringUnits on most -------------------------

PLANT_NAMESPACE = "urn:plant-edge-agent:test-plant"
PLANT_LINES = ("Line1", "Line2", "Line3")
PLANT_MACHINES = ("Filler", "Capper", "Labeler")


def _eu(code: str | None, shown: str) -> ua.EUInformation:
    """EUInformation as servers write it: UnitId is the UNECE common code's ASCII characters
    as an integer (OPC UA Part 8), -1 when the server has none."""
    unit_id = int.from_bytes(code.encode("ascii"), "big") if code else -1
    return ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=unit_id, DisplayName=ua.LocalizedText(shown), Description=ua.LocalizedText(shown),
    )


# Per machine: browse name, variant type, initial value, EngineeringUnits (UNECE code, shown).
PLANT_VARIABLES: tuple[tuple[str, ua.VariantType, object, tuple[str | None, str] | None], ...] = (
    ("Temperature", ua.VariantType.Double, 21.5, ("CEL", "°C")),
    ("Pressure", ua.VariantType.Double, 2.5, ("BAR", "bar")),
    ("Speed", ua.VariantType.Double, 120.0, (None, "rpm")),  # no UnitId: the display name
    ("GoodCount", ua.VariantType.Int64, 0, None),
    ("Running", ua.VariantType.Boolean, True, None),
    ("Recipe", ua.VariantType.String, "cola-0.5l", None),
)


class PlantServer:
    """A started plant server: `endpoint`, and `variables["Line1/Filler/Temperature"]`."""

    def __init__(self, server: Server, port: int, variables: dict[str, Node]) -> None:
        self.server = server
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plant/"
        self.variables = variables

    async def write(self, path: str, value: object, variant: ua.VariantType) -> None:
        await self.variables[path].write_value(ua.Variant(value, variant))


@asynccontextmanager
async def serve_plant(port: int) -> AsyncIterator[PlantServer]:
    """Objects/Plant/LineN/Machine/Variable: 3 lines x 3 machines x 6 variables (54), each
    NodeId `ns=PLANT;s=LineN.Machine.Variable`, plus per line an `Alarms` event notifier and a
    `Viscosity` Double whose EngineeringUnits (centipoise, UNECE C7) the agent has no UCUM code
    for. The browse names repeat across machines, as they do in real plants."""
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plant/")
    server.set_server_name("plant-edge-agent test plant")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(PLANT_NAMESPACE)
    plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", index), "Plant")
    variables: dict[str, Node] = {}

    async def variable(parent: Node, ident: str, name: str, kind: ua.VariantType, value: object,
                       eu: tuple[str | None, str] | None) -> None:
        node = await parent.add_variable(ua.NodeId(ident, index), name, ua.Variant(value, kind))
        if eu is not None:
            await node.add_property(
                ua.NodeId(f"{ident}.EngineeringUnits", index), "EngineeringUnits",
                ua.Variant(_eu(*eu), ua.VariantType.ExtensionObject),
                datatype=ua.NodeId(ObjectIds.EUInformation, 0),
            )
        variables[ident.replace(".", "/")] = node

    for line_name in PLANT_LINES:
        line = await plant.add_folder(ua.NodeId(line_name, index), line_name)
        for machine_name in PLANT_MACHINES:
            machine = await line.add_object(
                ua.NodeId(f"{line_name}.{machine_name}", index), machine_name
            )
            for name, kind, value, eu in PLANT_VARIABLES:
                await variable(machine, f"{line_name}.{machine_name}.{name}", name, kind, value,
                               eu)
        await variable(line, f"{line_name}.Viscosity", "Viscosity", ua.VariantType.Double, 1.0,
                       ("C7", "cP"))
        alarms = await line.add_object(ua.NodeId(f"{line_name}.Alarms", index), "Alarms")
        await alarms.write_attribute(
            AttributeIds.EventNotifier, ua.DataValue(ua.Variant(1, ua.VariantType.Byte))
        )
    async with server:
        yield PlantServer(server, port, variables)


# --- a wide address space for browse-path resolution: Objects/Tree/F{f}/V{v} -------------------

TREE_NAMESPACE = "urn:plant-edge-agent:test-tree"


class TreeServer:
    """A started tree server: `endpoint`, `index` (the tree namespace), `folder(f)`."""

    def __init__(self, server: Server, endpoint: str, index: int, folders: list[Node]) -> None:
        self.server = server
        self.endpoint = endpoint
        self.index = index
        self.folders = folders


@asynccontextmanager
async def serve_tree(port: int, folders: int, per_folder: int) -> AsyncIterator[TreeServer]:
    """Objects/Tree/F0..F{folders-1}/V0..V{per_folder-1}: Double variables with NodeId
    `ns=TREE;s=F{f}.V{v}` (TREE: the index of TREE_NAMESPACE). Browse paths:
    `Objects/Tree/F{f}/V{v}`; NodeIds: `nsu=TREE_NAMESPACE;s=F{f}.V{v}`."""
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{port}/tree/"
    server.set_endpoint(endpoint)
    server.set_server_name("plant-edge-agent test tree")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(TREE_NAMESPACE)
    tree = await server.nodes.objects.add_folder(ua.NodeId("Tree", index), f"{index}:Tree")
    nodes: list[Node] = []
    for f in range(folders):
        folder = await tree.add_folder(ua.NodeId(f"F{f}", index), f"{index}:F{f}")
        nodes.append(folder)
        for v in range(per_folder):
            await folder.add_variable(
                ua.NodeId(f"F{f}.V{v}", index), f"{index}:V{v}",
                ua.Variant(float(v), ua.VariantType.Double),
            )
    async with server:
        yield TreeServer(server, endpoint, index, nodes)
