"""The console's MQTT side: one connection, commands out, acks and retained states in."""

from __future__ import annotations

import json
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from appliance.console.errors import Refused
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, parse_topic, site_topic

Message = tuple[str, bytes, bool, float]  # topic, payload, retained, monotonic arrival time


def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Commands and acks are tiny: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to each."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class Fleet:
    """A thin synchronous wrapper over paho (MQTT v5, TLS): every call waits for the broker's answer."""

    def __init__(self, url: str, username: str, password: str, ca_file: str | None,
                 prefix: str = DEFAULT_TOPIC_PREFIX, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.prefix = prefix
        self.timeout = timeout
        self.client_id = f"console-{secrets.token_hex(4)}"
        self.messages: queue.Queue[Message] = queue.Queue()
        self._sync_topic = f"{prefix}/console/{self.client_id}/sync"
        self._sync_seen = threading.Event()
        self._connected = threading.Event()
        self._connect_error = ""
        self._lock = threading.Condition()
        self._acked: dict[int, Any] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        client.username_pw_set(username, password)
        if parts.scheme == "mqtts":
            client.tls_set(ca_certs=ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        client.connect_timeout = timeout
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_ack
        client.on_subscribe = self._on_subscribe
        self.client = client

    # --- paho callbacks (paho's thread) ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            self._connect_error = f"the broker refused the console's login: {reason_code}"
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if not self._connected.is_set():
            self._connect_error = f"the broker closed the connection: {reason_code}"
            self._connected.set()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        if message.topic == self._sync_topic:
            self._sync_seen.set()
            return
        self.messages.put((message.topic, message.payload, bool(message.retain), time.monotonic()))

    def _on_ack(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with self._lock:
            self._acked[mid] = reason_code
            self._lock.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        self._on_ack(client, userdata, mid, reason_codes, properties)

    # --- calls ----------------------------------------------------------------------------------
    def connect(self) -> Fleet:
        try:
            self.client.connect(self.host, self.port, keepalive=30, clean_start=True)
        except ssl.SSLError as exc:
            raise Refused(f"TLS with the broker at {self.url} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise Refused(f"cannot reach the broker at {self.url}: {exc.strerror or exc}") from None
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise Refused(f"the broker at {self.url} did not answer within {self.timeout:g} s")
        if self._connect_error:
            self.close()
            raise Refused(self._connect_error)
        return self

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> Fleet:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, mids: list[int], what: str) -> dict[int, Any]:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while not all(mid in self._acked for mid in mids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Refused(f"the broker did not confirm {what} within {self.timeout:g} s")
                self._lock.wait(remaining)
            return {mid: self._acked.pop(mid) for mid in mids}

    def subscribe(self, topics: list[str]) -> None:
        # Never call paho while holding self._lock: paho's thread holds its own lock while it calls
        # _on_ack, which takes self._lock (a deadlock seen in tests). Acks are kept by mid, so an
        # ack that arrives before _wait starts is not lost.
        result, mid = self.client.subscribe([(topic, 1) for topic in topics])
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise Refused(f"subscribing failed: {mqtt.error_string(result)}")
        codes = self._wait([mid], "the subscription")[mid]
        refused = [topic for topic, code in zip(topics, codes, strict=False) if code.is_failure]
        if refused:
            raise Refused(f"the broker refused the console's subscription to {', '.join(refused)}")

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        """Publish QoS 1, not retained; raise Refused naming every topic the broker did not accept."""
        infos = [(topic, self.client.publish(topic, payload, qos=1, retain=False)) for topic, payload in items]
        failed = [topic for topic, info in infos if info.rc != mqtt.MQTT_ERR_SUCCESS]
        if failed:
            raise Refused(f"publishing to {', '.join(failed)} failed: the connection to the broker was lost")
        codes = self._wait([info.mid for _, info in infos], "the command")
        denied = [f"{topic} ({codes[info.mid]})" for topic, info in infos if codes[info.mid].is_failure]
        if denied:
            raise Refused(f"the broker refused: {', '.join(denied)}")

    def clear_retained(self, topics: list[str]) -> None:
        """Delete retained messages (an empty retained publish); raise Refused if the broker denies it."""
        infos = [(topic, self.client.publish(topic, b"", qos=1, retain=True)) for topic in topics]
        codes = self._wait([info.mid for _, info in infos], "clearing retained messages")
        denied = [topic for topic, info in infos if codes[info.mid].is_failure]
        if denied:
            raise Refused(f"the broker refused to clear {', '.join(denied)}")

    def sync(self) -> None:
        """Return once every retained message of the subscriptions made so far has arrived.

        Mosquitto queues a subscription's retained messages before anything published later, so
        when our own marker comes back, everything queued before it is in `messages`.
        """
        self._sync_seen.clear()
        self.subscribe([self._sync_topic])
        self.publish([(self._sync_topic, b"sync")])
        if not self._sync_seen.wait(self.timeout):
            raise Refused(f"the broker did not deliver within {self.timeout:g} s")


def decode(payload: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


@dataclass
class Tracker:
    """Answers to one command from the sites that were asked, plus what their retained state says."""

    command_id: str
    expected: list[str]
    prefix: str = DEFAULT_TOPIC_PREFIX
    sent_at: float = 0.0
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    unexpected: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, topic: str, payload: bytes, arrived: float) -> bool:
        parsed = parse_topic(topic, self.prefix)
        document = decode(payload) if parsed else None
        if not parsed or document is None:
            return False
        site, kind = parsed
        if kind == "state":
            self.states[site] = document
            return site in self.expected
        if kind == "ack" and document.get("id") == self.command_id:
            answer = {**document, "latency_s": round(arrived - self.sent_at, 4) if self.sent_at else None}
            (self.answers if site in self._expected_set else self.unexpected)[site] = answer
            return True
        return False

    def __post_init__(self) -> None:
        self._expected_set = set(self.expected)

    def states_caught_up(self) -> bool:
        return all((self.states.get(site) or {}).get("state") == answer.get("state")
                   for site, answer in self.answers.items())

    @property
    def done(self) -> bool:
        return len(self.answers) >= len(self.expected)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for site in self.expected:
            answer, state = self.answers.get(site), self.states.get(site) or {}
            if answer is None:
                result = "offline" if state.get("online") is False else ("no answer" if state else "never seen")
                rows.append({"site": site, "result": result, "ok": None, "error": None,
                             "state": state.get("state"), "latency_ms": None})
                continue
            error = answer.get("error") if isinstance(answer.get("error"), dict) else None
            rows.append({
                "site": site, "result": "ok" if answer.get("ok") else "refused", "ok": bool(answer.get("ok")),
                "error": error, "state": (self.states.get(site) or {}).get("state", answer.get("state")),
                "latency_ms": round(answer["latency_s"] * 1000, 1) if answer.get("latency_s") is not None else None,
            })
        return rows

    def summary(self) -> dict[str, int]:
        counts = {"targeted": len(self.expected), "ok": 0, "refused": 0, "no_answer": 0}
        for row in self.rows():
            key = {"ok": "ok", "refused": "refused"}.get(row["result"], "no_answer")
            counts[key] += 1
        return counts


def send_and_collect(fleet: Fleet, command: dict[str, Any], topics: list[str], expected: list[str],
                     timeout: float, progress: Callable[[Tracker], None] | None = None,
                     observe: Callable[[str, bytes, bool], None] | None = None) -> Tracker:
    """Publish a signed command, then gather acks until every expected site answered or `timeout`.
    `observe(topic, payload, retained)` also sees every message read meanwhile (e.g. self-test results)."""
    prefix = fleet.prefix
    fleet.subscribe([site_topic(prefix, "+", "ack"), site_topic(prefix, "+", "state")])
    fleet.sync()
    tracker = Tracker(command["id"], expected, prefix)
    while True:
        try:
            topic, payload, retained, arrived = fleet.messages.get_nowait()
        except queue.Empty:
            break
        _feed(tracker, observe, topic, payload, retained, arrived)
    payload = json.dumps(command, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    tracker.sent_at = time.monotonic()
    fleet.publish([(topic, payload) for topic in topics])
    deadline = tracker.sent_at + timeout
    next_progress = 0.0
    while not tracker.done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            topic, payload, retained, arrived = fleet.messages.get(timeout=min(remaining, 0.2))
            _feed(tracker, observe, topic, payload, retained, arrived)
        except queue.Empty:
            pass
        if progress and time.monotonic() >= next_progress:
            progress(tracker)
            next_progress = time.monotonic() + 0.2
    # A device publishes its new retained state right after the ack; wait (briefly) for those, so
    # the table shows where every site ended up, not where it was.
    settle = time.monotonic() + (0.3 if tracker.done else 0.0)
    while time.monotonic() < settle and not tracker.states_caught_up():
        try:
            topic, payload, retained, arrived = fleet.messages.get(timeout=max(settle - time.monotonic(), 0.01))
            _feed(tracker, observe, topic, payload, retained, arrived)
        except queue.Empty:
            break
    if progress:
        progress(tracker)
    return tracker


def _feed(tracker: Tracker, observe: Callable[[str, bytes, bool], None] | None, topic: str, payload: bytes,
          retained: bool, arrived: float) -> None:
    tracker.feed(topic, payload, arrived)
    if observe is not None:
        observe(topic, payload, retained)
