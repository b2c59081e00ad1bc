"""An MQTT v5 client that records every message it receives and waits for the ones its user needs:
the tests' observer and site logins, the demo's console, the benchmarks' pinger."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from appliance.console.fleet import no_delay


class Message(NamedTuple):
    topic: str
    payload: Any  # the JSON value when the payload parses, else the bytes
    retain: bool


def decode(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):  # hostile payloads are what some tests send
        return payload


class MqttRecorder:
    def __init__(self, port: int, *topics: str, host: str = "127.0.0.1", username: str | None = None,
                 password: str | None = None, tls_ca: str | None = None, client_id: str | None = None,
                 refused_ok: bool = False, on_message: Callable[[Message], None] | None = None,
                 timeout: float = 5.0) -> None:
        """Connected and subscribed to `topics` (QoS 1) when this returns, so nothing published after is missed.

        A refused login raises ConnectionRefusedError, unless `refused_ok`: then `connack` says why and
        the client does not retry. `on_message` sees each message after it is recorded, on paho's thread.
        """
        self.messages: list[Message] = []
        self.connack: ReasonCode | None = None
        self._topics = list(topics)
        self._acks: dict[int, Any] = {}  # packet id -> PUBACK reason code, or SUBACK reason codes
        self._subscribed_mid: int | None = None
        self._changed = threading.Condition()
        self._on_message_hook = on_message
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"recorder-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5, reconnect_on_failure=not refused_ok)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.on_socket_open = no_delay  # the benchmarks time round trips of tiny messages
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_ack
        self.client.connect(host, port, 30)
        self.client.loop_start()
        try:
            self._wait(lambda: self.connack is not None, timeout, "no CONNACK")
            if self.refused and not refused_ok:
                raise ConnectionRefusedError(f"the broker refused {username or 'an anonymous client'}: {self.connack}")
            if self._topics and not self.refused:
                self._wait(lambda: self._subscribed_mid in self._acks, timeout, f"no SUBACK for {self._topics}")
        except BaseException:
            self.close()
            raise

    @property
    def refused(self) -> bool:
        return self.connack is not None and self.connack.is_failure

    # --- paho's thread -------------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        with self._changed:
            if not reason.is_failure and self._topics:  # again after a reconnect: the broker may have forgotten
                self._subscribed_mid = client.subscribe([(topic, 1) for topic in self._topics])[1]
            self.connack = reason
            self._changed.notify_all()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        with self._changed:
            if self.connack is None:  # gone before any CONNACK: that is the answer
                self.connack = reason
            self._changed.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        recorded = Message(message.topic, decode(message.payload), bool(message.retain))
        with self._changed:
            self.messages.append(recorded)
            self._changed.notify_all()
        if self._on_message_hook:
            self._on_message_hook(recorded)

    def _on_ack(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._changed:
            self._acks[mid] = reason
            self._changed.notify_all()

    # --- the user's thread ---------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], timeout: float, failure: str) -> None:
        with self._changed:
            if not self._changed.wait_for(ready, timeout):
                raise TimeoutError(f"{failure} within {timeout:g} s")

    def subscribe(self, topic: str, timeout: float = 5.0) -> int:
        """The SUBACK's code: the granted QoS, or a v5 reason code of 128 or more. Kept after a reconnect."""
        with self._changed:
            self._topics.append(topic)
        mid = self.client.subscribe(topic, qos=1)[1]
        self._wait(lambda: mid in self._acks, timeout, f"no SUBACK for {topic}")
        return self._acks[mid][0].value

    def publish(self, topic: str, payload: Any, retain: bool = False, timeout: float = 5.0) -> int:
        """QoS 1, returning once the broker has it: the PUBACK's v5 reason code (0 accepted, 16 no
        subscribers, 135 not authorized). Bytes and str go as they are, anything else as JSON.
        Not from an `on_message` hook: the PUBACK arrives on the thread that runs it."""
        return self.puback(self.publish_nowait(topic, payload, retain), timeout).value

    def publish_nowait(self, topic: str, payload: Any, retain: bool = False) -> int:
        """QoS 1, returning at once the packet id that puback() waits for: for bursts."""
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        return self.client.publish(topic, data, qos=1, retain=retain).mid

    def puback(self, mid: int, timeout: float = 5.0) -> ReasonCode:
        self._wait(lambda: mid in self._acks, timeout, f"no PUBACK for packet {mid}")
        return self._acks[mid]

    def mark(self) -> int:
        """Where the next message will be recorded: pass it as `after` to wait only for later ones."""
        with self._changed:
            return len(self.messages)

    def wait_for(self, predicate: Callable[[str, Any], bool], timeout: float = 10.0, after: int = 0) -> tuple[str, Any]:
        """The (topic, payload) of the first message from index `after` on that matches."""
        def first_match() -> Message | None:
            return next((message for message in self.messages[after:] if predicate(message.topic, message.payload)), None)

        with self._changed:
            found = self._changed.wait_for(first_match, timeout)
            if found is None:
                seen = "\n".join(f"  {topic} {payload}" for topic, payload, _ in self.messages[-15:])
                raise TimeoutError(f"no matching message in {timeout:g} s; last seen:\n{seen}")
        return found.topic, found.payload

    def ack_for(self, command_id: str | None, site: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        return self.wait_for(lambda t, p: t.endswith(f"/site/{site}/ack") and isinstance(p, dict)
                             and p.get("id") == command_id, timeout, after)[1]

    def settle(self, quiet: float, after: int = 0) -> list[Message]:
        """The messages from index `after` on, once `quiet` s pass without another: only time shows
        that something did NOT arrive."""
        with self._changed:
            while True:
                count = len(self.messages)
                if not self._changed.wait_for(lambda count=count: len(self.messages) > count, quiet):
                    return self.messages[after:]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
