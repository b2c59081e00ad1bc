"""The MQTT link: paho-mqtt 2.x, MQTT v5, our own reconnect loop with full-jitter back-off.

paho's callbacks run on the network thread; they only post events to the daemon's loop.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.core.backoff import Backoff
from appliance.core.io import BrokerConnected, BrokerDisconnected, MessageReceived, PublishAcked, PublishDenied
from appliance.core.protocol import Topics

log = logging.getLogger(__name__)

# Commands sent while a site reboots are still delivered (they carry their own expiry).
SESSION_EXPIRY_S = 3600
MAX_QUEUED_MESSAGES = 1000
# MQTT v5 Maximum Packet Size, sent in CONNECT: the broker must not deliver a bigger packet to us (mosquitto
# drops it for this client; the sender gets no ack from the site). Commands are at most 16 KiB, so anything
# up to this size still arrives and is answered `too_large`; without it an 8 MiB publish was read whole
# into memory (peak RSS +16 to +28 MB). The same value as the console broker's `max_packet_size`.
MAX_PACKET_BYTES = 64 * 1024
# Retain As Published: the broker keeps the retain flag of a command published retained while we are
# subscribed (by default it clears it), so the core can refuse it as `retained_command`.
COMMAND_SUBSCRIPTION = SubscribeOptions(qos=1, retainAsPublished=True)


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. A string UTF-8 cannot carry (a lone surrogate, e.g. from a hostile command's
    `\\ud800`) is sent as a JSON escape instead: the message, typically an ack, must still go out."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Acks are tiny: without this, Nagle and delayed ACKs add ~40 ms to every command's answer."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def describe_connect_error(exc: BaseException, url: str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {url} not trusted ({exc.verify_message}); check broker.ca_file"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {url} failed ({exc.reason or exc}); check broker.ca_file and client certificate"
    if isinstance(exc, ConnectionRefusedError):
        return f"{url} refused the connection (is the broker running?)"
    return f"cannot reach {url}: {exc}"


class MqttLink:
    def __init__(
        self,
        *,
        site_id: str,
        topics: Topics,
        broker: dict[str, Any],
        password: str,
        post: Callable[[Any], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.url = broker["url"]
        parts = urlsplit(self.url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.keepalive = int(broker["keepalive_s"])
        self.topics = topics
        self._post = post
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # mid -> (topic, receipt): written by the loop thread, popped by either (dict ops are atomic).
        self._inflight: dict[int, tuple[str, str]] = {}

        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"appliance-{site_id}", protocol=paho.MQTTv5
        )
        if broker["username"]:
            client.username_pw_set(broker["username"], password or None)
        if self.tls:
            client.tls_set(
                ca_certs=broker["ca_file"] or None,
                certfile=broker["client_cert_file"] or None,
                keyfile=broker["client_key_file"] or None,
            )
        offline = {"v": 1, "site": site_id, "online": False, "state": "offline"}
        client.will_set(topics.state, encode(offline), qos=1, retain=True)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = _no_delay
        # Without a registered "external loop", paho writes to the socket from whichever thread calls
        # publish(), racing our network thread; with one, publish() only wakes the network thread.
        client.on_socket_register_write = lambda *_: None
        self.client = client

    # --- called from the daemon's loop thread ---------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def publish(self, topic: str, payload: dict[str, Any], retain: bool = False, receipt: str = "") -> None:
        info = self.client.publish(topic, encode(payload), qos=1, retain=retain)
        if info.rc == paho.MQTT_ERR_SUCCESS or info.rc == paho.MQTT_ERR_NO_CONN:
            self._inflight[info.mid] = (topic, receipt)
        else:
            log.warning("publish to %s not queued: %s", topic, paho.error_string(info.rc))

    def publish_done(self, mid: int, reason: ReasonCode) -> None:
        topic, receipt = self._inflight.pop(mid, ("?", ""))
        if reason.is_failure:
            self._post(PublishDenied(topic, str(reason), receipt))
        elif receipt:
            self._post(PublishAcked(receipt))

    def stop(self, timeout: float = 3.0) -> None:
        """Leave cleanly but let the broker publish our will, so the fleet sees `offline` at once."""
        self._stop.set()
        if self.client.is_connected():
            with_will = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            self.client.disconnect(reasoncode=with_will)
        if self._thread:
            self._thread.join(timeout)

    # --- the network thread ---------------------------------------------------------------------
    def _run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.MaximumPacketSize = MAX_PACKET_BYTES
        while not self._stop.is_set():
            try:
                self.client.connect(self.host, self.port, self.keepalive, clean_start=False, properties=properties)
            except (OSError, ssl.SSLError) as exc:
                self._post(BrokerDisconnected(describe_connect_error(exc, self.url)))
            else:
                while not self._stop.is_set():
                    if self.client.loop(timeout=1.0) != paho.MQTT_ERR_SUCCESS:
                        break
                if self._stop.is_set():
                    # Flush the DISCONNECT packet that stop() queued.
                    self.client.loop(timeout=0.2)
                    break
            delay = self._backoff.next_delay()
            log.info("reconnecting to %s in %.1f s", self.url, delay)
            self._stop.wait(delay)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._post(BrokerDisconnected(f"{self.url} refused the session: {reason}"))
            return
        self._backoff.reset()
        client.subscribe([(topic, COMMAND_SUBSCRIPTION) for topic in self.topics.subscriptions])
        self._post(BrokerConnected())

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if not self._stop.is_set():
            self._post(BrokerDisconnected(f"disconnected from {self.url}: {reason}"))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._post(MessageReceived(message.topic, bytes(message.payload), bool(message.retain)))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        # Most PUBACKs need nothing from the loop: waking it for each would cost the next command's
        # answer time. Only a refusal or a receipt becomes an event.
        entry = self._inflight.pop(mid, None)
        if entry is None:  # so fast that the loop thread has not recorded the mid yet: finish it there
            self._post(lambda: self.publish_done(mid, reason))
            return
        topic, receipt = entry
        if reason.is_failure:
            self._post(PublishDenied(topic, str(reason), receipt))
        elif receipt:
            self._post(PublishAcked(receipt))


class DetachedLink:
    """The MQTT link of a site that runs without a broker (tests, benchmarks, a bench-top demo):
    it never connects, so nothing arrives; what the site publishes is kept, newest last."""

    url = "(no broker)"

    def __init__(self, keep: int = 10_000) -> None:
        self.published: deque[tuple[str, dict[str, Any], bool]] = deque(maxlen=keep)

    def start(self) -> None:
        pass

    def publish(self, topic: str, payload: dict[str, Any], retain: bool = False, receipt: str = "") -> None:
        self.published.append((topic, payload, retain))

    def stop(self, timeout: float = 0.0) -> None:
        pass
