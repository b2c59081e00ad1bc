"""Light simulated sites: many real MQTT connections in one thread, each running the real device core.

For benchmarks and tests of the console at fleet scale (a real daemon per site would need 2,000
processes). Mode "core" answers with `ApplianceCore` (signature checks, state machine, acks and
retained state exactly as a device). A message whose payload starts with `ECHO` is answered with a
bare ack instead, without the core: that measures the broker's own round trip on the same
connections. `SimSite.press()` is a short press of the site's panel button (thread-safe: the fleet's
thread runs it), so tests can raise a hand in a meeting.
"""

from __future__ import annotations

import contextlib
import json
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from appliance.console.fleet import no_delay
from appliance.console.store import site_username
from appliance.core.clock import SystemClock
from appliance.core.io import (
    BrokerConnected,
    ButtonDown,
    ButtonUp,
    CommandStored,
    DuckProgram,
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
    SetMicrophone,
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
IGNORED_EFFECTS = (SetLed, ShowScreen, StartUplink, StopUplink, StartProgram, StopProgram, SetMicrophone, DuckProgram,
                   NotifyStatus,
                   SaveUptime, SelftestDone, Log)
NO_HARDWARE = {"ok": None, "detail": "simulated site: no hardware"}
T = TypeVar("T")


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
        self.fleet: SimFleet | None = None  # set by the SimFleet that drives this site

    def call(self, action: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `action` where this site's core runs (the fleet's thread, once started; the core is not
        thread-safe) and return its result."""
        if self.fleet is None:
            return action()
        return self.fleet.call(action, timeout)

    def press(self) -> None:
        """A short press of the panel button (down, then up at once), as a person makes it."""
        self.call(lambda: self.perform(self.core.handle(ButtonDown()) + self.core.handle(ButtonUp())))

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
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()  # call() wakes the selector at once
        for site in sites:
            site.fleet = self

    def call(self, action: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `action` on the fleet's thread (at once when called there, or before the fleet runs)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return action()
        done = threading.Event()
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = action()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = exc
            finally:
                done.set()

        self._calls.put(run)
        self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise TimeoutError(f"the simulated sites' thread did not run the call within {timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["result"]  # type: ignore[return-value]

    def _run_calls(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                run = self._calls.get_nowait()
            except queue.Empty:
                break
            run()
        for site in self.sites:  # what the calls published goes out now, not at the next tick
            if site.client.want_write():
                site.client.loop_write()

    def start(self, timeout: float = 60.0) -> SimFleet:
        self.selector = selectors.DefaultSelector()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
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
                if key.data is None:
                    self._run_calls()
                    continue
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
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
