"""A hub-side MQTT v5 requester for command tests, independent of the agent's own client code.

`Requester` is a paho client on its own thread subscribed to one reply topic. `ask` publishes a
request (raw bytes, so tests can send garbage) with Response Topic and Correlation Data and
waits (bounded) for the answer carrying the same Correlation Data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from testkit.broker import MosquittoBroker
from testkit.nats_mqtt import NatsMqttBroker


class Requester:
    def __init__(
        self,
        broker: MosquittoBroker | NatsMqttBroker,
        root: str = "mfg/plant-a/edge-01",
        *,
        protocol: str = "5",
    ) -> None:
        """`protocol` "3.1.1": the reply fields go in the request's JSON and come back in the
        answer's (`agent.link.mqtt311`, re-implemented here: only the field names are shared)."""
        self.root = root
        self.mqtt311 = protocol == "3.1.1"
        self.reply_topic = f"{root}/reply/{uuid.uuid4().hex}"
        self._broker = broker
        self._answers: dict[bytes, dict[str, Any]] = {}
        self.content_types: dict[bytes, str | None] = {}
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-requester-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311 if self.mqtt311 else MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe(self.reply_topic, qos=1)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: Any) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        if correlation is None and self.mqtt311:
            answer = json.loads(message.payload)
            encoded = answer.get("correlation_data") if isinstance(answer, dict) else None
            correlation = base64.b64decode(encoded) if isinstance(encoded, str) else None
        if correlation is None:
            return
        with self._condition:
            self._answers[bytes(correlation)] = json.loads(message.payload)
            self.content_types[bytes(correlation)] = getattr(
                message.properties, "ContentType", None
            )
            self._condition.notify_all()

    def start(self) -> Requester:
        self._client.connect(self._broker.host, self._broker.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(5.0):
            raise TimeoutError("requester not subscribed within 5 s")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def send(
        self,
        command: str,
        payload: bytes | dict[str, Any] | list[Any] = b"",
        *,
        response_topic: str | None = "",
    ) -> bytes:
        """Publish one request; returns its correlation data."""
        correlation = uuid.uuid4().bytes
        if self.mqtt311:
            if isinstance(payload, dict):
                reply = {"correlation_data": base64.b64encode(correlation).decode()}
                if response_topic is not None:
                    reply["response_topic"] = response_topic or self.reply_topic
                payload = {**payload, **reply}
            if not isinstance(payload, bytes):
                payload = json.dumps(payload).encode()
            info = self._client.publish(f"{self.root}/cmd/{command}", payload, qos=1)
            info.wait_for_publish(5.0)
            return correlation
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        # paho's Properties is untyped.
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            properties.ResponseTopic = response_topic or self.reply_topic
        properties.CorrelationData = correlation
        info = self._client.publish(
            f"{self.root}/cmd/{command}", payload, qos=1, properties=properties
        )
        info.wait_for_publish(5.0)
        return correlation

    def answer(self, correlation: bytes, timeout: float = 10.0) -> dict[str, Any]:
        with self._condition:
            if not self._condition.wait_for(lambda: correlation in self._answers, timeout):
                raise TimeoutError(f"no answer within {timeout} s")
            return self._answers[correlation]

    def ask(
        self, command: str, payload: bytes | dict[str, Any] | list[Any] = b"", timeout: float = 10.0
    ) -> dict[str, Any]:
        return self.answer(self.send(command, payload), timeout)

    async def ask_async(
        self, command: str, payload: bytes | dict[str, Any] | list[Any] = b"", timeout: float = 10.0
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.ask, command, payload, timeout)

    def __enter__(self) -> Requester:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
