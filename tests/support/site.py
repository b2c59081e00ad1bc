"""A real daemon process for one site, an MQTT observer, and signed commands as the console makes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from appliance.adapters.control import NoDaemon, request
from appliance.core.clock import rfc3339
from appliance.core.signing import generate_private_key, public_key_to_base64, sign_command

REPO = Path(__file__).resolve().parents[2]


class ConsoleKey:
    def __init__(self) -> None:
        self.private = generate_private_key()
        self.public_b64 = public_key_to_base64(self.private.public_key())

    def command(self, command_type: str, body: dict[str, Any] | None = None, *, to: list[str] | None = None,
                command_id: str | None = None, issued_at: float | None = None, ttl_s: float = 600,
                signed: bool = True) -> dict[str, Any]:
        issued = time.time() if issued_at is None else issued_at
        command = {
            "v": 1, "id": command_id or f"cmd-{uuid.uuid4().hex[:12]}", "type": command_type,
            "issued_at": rfc3339(issued), "expires_at": rfc3339(issued + ttl_s),
            "to": to or ["*"], "body": body or {},
        }
        return sign_command(command, self.private) if signed else command


def meeting_body(meeting_id: str = "musrenbang-2026", host: str = "127.0.0.1", auto_join: bool = False) -> dict[str, Any]:
    return {"meeting_id": meeting_id, "title": "Musrenbang Kecamatan",
            "program_url": f"srt://{host}:9000", "ingest_url": f"rtmp://{host}/live/{{site}}", "auto_join": auto_join}


def site_config(workdir: Path, site: str, broker_url: str, public_key: str, *, kind: str = "kecamatan",
                extra: str = "") -> Path:
    state_dir = workdir / f"{site}-state"
    config = workdir / f"{site}.toml"
    config.write_text(f"""
[site]
id = "{site}"
name = "Kecamatan {site.title()}"
kind = "{kind}"
[broker]
url = "{broker_url}"
keepalive_s = 5
[security]
console_public_key = "{public_key}"
allowed_media_hosts = ["127.0.0.1"]
[panel]
backend = "mock"
[camera]
backend = "none"
[display]
backend = "none"
[paths]
state_dir = "{state_dir}"
control_socket = "{workdir / (site + '.sock')}"
{extra}
""")
    return config


class DaemonProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        # Only what the test hands over: a NOTIFY_SOCKET of the test runner's own must not leak in.
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.env.update(env or {})
        self.log_path = config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.socket = tomllib.loads(config.read_text())["paths"]["control_socket"]

    def start(self, wait: bool = True) -> DaemonProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(self.config)],
                                        stdout=log, stderr=log, env=self.env, cwd=REPO)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            try:
                request(self.socket, {"cmd": "version"}, timeout=1.0)
                return
            except NoDaemon:
                time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def wait_connected(self, timeout: float = 10.0) -> dict[str, Any]:
        """Connected means subscribed too: a command published before this could be lost."""
        return self.wait_status(lambda status: status["broker_connected"], timeout)

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        return request(self.socket, body, timeout=30)

    def status(self) -> dict[str, Any]:
        return self.control({"cmd": "status"})["status"]

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon status never matched in {timeout} s; last: {status}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return bool(self.process) and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Observer:
    """An MQTT v5 client that records every message under a filter and waits for the ones a test needs."""

    def __init__(self, broker_port: int, topic: str = "rapat/v1/#", *, username: str | None = None,
                 password: str | None = None, tls_ca: str | None = None, client_id: str | None = None) -> None:
        self.messages: list[tuple[str, Any, bool]] = []
        self.publish_results: dict[int, Any] = {}
        self._condition = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"observer-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *args: None
        self._topic = topic
        self._connected = threading.Event()
        self.client.on_connect = lambda client, userdata, flags, reason, props: (
            client.subscribe(self._topic, qos=1), self._connected.set())
        self.client.connect("127.0.0.1", broker_port, 30)
        self.client.loop_start()
        if not self._connected.wait(5):
            raise TimeoutError("observer could not connect")
        time.sleep(0.1)  # let the SUBACK arrive before the test acts

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            payload: Any = json.loads(message.payload)
        except ValueError:
            payload = message.payload
        with self._condition:
            self.messages.append((message.topic, payload, bool(message.retain)))
            self._condition.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._condition:
            self.publish_results[mid] = reason
            self._condition.notify_all()

    def publish(self, topic: str, payload: Any, retain: bool = False) -> int:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        info = self.client.publish(topic, data, qos=1, retain=retain)
        return info.mid

    def publish_reason(self, mid: int, timeout: float = 5.0) -> Any:
        with self._condition:
            self._condition.wait_for(lambda: mid in self.publish_results, timeout)
            return self.publish_results.get(mid)

    def wait_for(self, predicate: Callable[[str, Any], bool], timeout: float = 10.0, after: int = 0) -> tuple[str, Any]:
        """The first message (from index `after` on) that matches; raises if none arrives in time."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for topic, payload, _ in self.messages[after:]:
                    if predicate(topic, payload):
                        return topic, payload
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n".join(f"  {t} {p}" for t, p, _ in self.messages[-15:])
                    raise TimeoutError(f"no matching message in {timeout} s; last seen:\n{seen}")
                self._condition.wait(remaining)

    def ack_for(self, command_id: str | None, site: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        return self.wait_for(lambda t, p: t.endswith(f"/site/{site}/ack") and isinstance(p, dict)
                             and p.get("id") == command_id, timeout, after)[1]

    def mark(self) -> int:
        with self._condition:
            return len(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
