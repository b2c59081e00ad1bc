"""Light simulated sites: many real MQTT connections in one thread, each running the real device core.

For benchmarks and tests of the console at fleet scale (a real daemon per site would need 2,000
processes). Mode "core" answers with `ApplianceCore` (signature checks, state machine, acks and
retained state exactly as a device). A message whose payload starts with `ECHO` is answered with a
bare ack instead, without the core: that measures the broker's own round trip on the same
connections.
"""

from __future__ import annotations

import json
import selectors
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from appliance.console.fleet import no_delay
from appliance.console.store import site_username
from appliance.core.clock import SystemClock
from appliance.core.io import (
    BrokerConnected,
    CommandStored,
    Log,
    MessageReceived,
    NotifyStatus,
    ProbeCamera,
    Publish,
    RememberCommand,
    RunProbes,
    SaveUptime,
    SelftestCheckDone,
    SelftestDone,
    SetLed,
    ShowScreen,
    StartProgram,
    StartUplink,
    StopProgram,
    StopUplink,
    Unhandled,
)
from appliance.core.machine import ApplianceCore, CoreSettings
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, CommandPolicy, Topics
from appliance.core.signing import public_key_from_base64

# What a site without panel, screen, media, disk or systemd simply does not do.
IGNORED_EFFECTS = (SetLed, ShowScreen, StartUplink, StopUplink, StartProgram, StopProgram, NotifyStatus, SaveUptime,
                   SelftestDone, Log)
NO_HARDWARE = {"ok": None, "detail": "simulated site: no hardware"}


@dataclass(frozen=True)
class SiteSpec:
    id: str
    kind: str
    password: str


class SimSite:
    def __init__(self, spec: SiteSpec, url_host: str, port: int, ca_file: str, public_key: str,
                 allowed_hosts: tuple[str, ...]) -> None:
        self.spec = spec
        self.host, self.port = url_host, port
        self.topics = Topics(DEFAULT_TOPIC_PREFIX, spec.id, spec.kind)
        policy = CommandPolicy(spec.id, public_key_from_base64(public_key), allowed_media_hosts=allowed_hosts)
        self.core = ApplianceCore(CoreSettings(spec.id, spec.kind, policy, version="sim"), SystemClock())
        self.ready = False
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"appliance-{spec.id}", protocol=mqtt.MQTTv5)
        client.username_pw_set(site_username(spec.id), spec.password)  # as `provision` writes it
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.topics.state, json.dumps({"v": 1, "site": spec.id, "online": False, "state": "offline"}),
                        qos=1, retain=True)
        client.max_inflight_messages_set(100)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: setattr(self, "ready", True)
        client.on_message = self._on_message
        self.client = client

    def connect(self) -> None:
        self.client.connect(self.host, self.port, keepalive=60)

    def perform(self, effects: list) -> list:
        """Carry out the core's effects as a site with no hardware would; returns the publishes'
        MQTTMessageInfo. Every effect type is named here: a new one fails loudly (io.Unhandled)."""
        infos, answers = [], []
        for effect in effects:
            if isinstance(effect, Publish):
                infos.append(self.client.publish(effect.topic, json.dumps(effect.payload), qos=1, retain=effect.retain))
            elif isinstance(effect, RememberCommand):
                answers.append(CommandStored(effect.command_id, True))  # no disk: "stored" at once
            elif isinstance(effect, RunProbes):
                answers += [SelftestCheckDone(name, NO_HARDWARE) for name in effect.names]
            elif isinstance(effect, ProbeCamera):
                answers.append(SelftestCheckDone("camera", NO_HARDWARE))
            elif not isinstance(effect, IGNORED_EFFECTS):
                raise Unhandled(f"a simulated site has no handler for effect {type(effect).__name__}")
        for answer in answers:
            infos += self.perform(self.core.handle(answer))
        return infos

    def tick(self) -> None:
        """Fire the core's deadlines (button hold, join timeout, self-test waits), as the loop would."""
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.core.clock.monotonic():
            self.perform(self.core.tick())

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            return
        client.subscribe([(topic, 1) for topic in self.topics.subscriptions])
        self.perform(self.core.start() + self.core.handle(BrokerConnected()))

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        if message.payload.startswith(b"ECHO"):
            client.publish(self.topics.ack, b'{"echo":' + message.payload[4:] + b"}", qos=1)
            return
        self.perform(self.core.handle(MessageReceived(message.topic, message.payload, bool(message.retain))))


class SimFleet:
    """Drives every SimSite from one selector thread (paho's external-loop API)."""

    def __init__(self, sites: list[SimSite]) -> None:
        self.sites = sites
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> SimFleet:
        self.selector = selectors.DefaultSelector()
        for site in self.sites:
            site.connect()
            self.selector.register(site.client.socket(), selectors.EVENT_READ, site)
        self._thread = threading.Thread(target=self._loop, name="sim-sites", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(site.ready for site in self.sites):
            if time.monotonic() > deadline:
                missing = [site.spec.id for site in self.sites if not site.ready]
                self.stop()
                raise RuntimeError(f"simulated sites not subscribed after {timeout:g} s: {missing[:10]}")
            time.sleep(0.02)
        return self

    def _loop(self) -> None:
        next_misc = time.monotonic() + 1.0
        while not self._stop.is_set():
            touched = set()
            for key, _ in self.selector.select(timeout=0.05):
                site: SimSite = key.data
                client = site.client
                client.loop_read(50)
                sock = client.socket()
                while sock is not None and getattr(sock, "pending", lambda: 0)():
                    client.loop_read(50)
                touched.add(site)
            for site in touched:
                if site.client.want_write():
                    site.client.loop_write()
            if time.monotonic() >= next_misc:
                next_misc = time.monotonic() + 1.0
                for site in self.sites:
                    site.tick()
                    site.client.loop_misc()
                    if site.client.want_write():
                        site.client.loop_write()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        # Like the daemon: leave with the will, so the fleet sees these sites go offline.
        with_will = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        for site in self.sites:
            try:
                site.client.disconnect(reasoncode=with_will)
                site.client.loop_write()
            except Exception:  # noqa: BLE001 - a half-open sim connection must not stop the others closing
                pass
            sock = site.client.socket()
            if sock is not None:
                sock.close()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
