"""A plain paho client for poking the broker the way a site (or an attacker with a site's password) would."""

from __future__ import annotations

import queue
import ssl
import threading
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt


class Client:
    def __init__(self, port: int, ca_file: Path, username: str | None, password: str | None,
                 client_id: str = "") -> None:
        self.messages: queue.Queue = queue.Queue()
        self.connack = None
        self._connected = threading.Event()
        self._acks: dict[int, object] = {}
        self._acked = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self._connected.set()
        self.client.on_message = lambda c, u, message: self.messages.put((message.topic, message.payload))
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_ack
        self.client.connect("localhost", port)
        self.client.loop_start()
        assert self._connected.wait(5), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connack = reason_code
        self._connected.set()

    def _on_ack(self, client, userdata, mid, reason, properties) -> None:  # noqa: ANN001
        with self._acked:
            self._acks[mid] = reason
            self._acked.notify_all()

    def _wait(self, mid: int):  # noqa: ANN202
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, 5), "no answer from the broker"
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> int:
        """The v5 PUBACK reason code (0 = accepted, 135 = not authorized)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(info.mid).value

    def subscribe(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        return self._wait(mid)[0].value

    def drain(self, seconds: float) -> list:
        got = []
        try:
            while True:
                got.append(self.messages.get(timeout=seconds))
        except queue.Empty:
            return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def site_client(provision_dir: Path, port: int, password: str | None = None) -> Client:
    """Connect exactly as the provisioning file in `provision_dir` says (CA taken from beside it)."""
    config = tomllib.loads((provision_dir / "appliance-site.toml").read_text())
    broker = config["broker"]
    return Client(port, provision_dir / "ca.pem", broker["username"],
                  broker["password"] if password is None else password, client_id=f"appliance-{config['site']['id']}")
