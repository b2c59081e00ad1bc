"""`appliance-console collect`: every device message into the console's SQLite, nothing lost.

- A persistent MQTT v5 session (fixed client id per collector name, clean_start=False, a session
  expiry of 7 days): while the collector is down the broker queues its share of the messages.
- A shared subscription (`$share/collect/...`): several collectors split the stream, and one that
  stops hands its part to the others (its own queued share waits for it to come back).
- Shared subscriptions get no retained messages (MQTT v5), so on every connect a plain
  subscription to the retained topics (state, uptime, self-test) is made and dropped again once a
  marker published after it came back: the retained copies fill whatever the queue lost.
- Manual acknowledgements: a message is PUBACKed only after the transaction holding it is
  committed, so a crash between delivery and commit means the broker delivers it again, and the
  idempotent tables (records.py) make that harmless.
- Every few seconds (`TICK_S`) a cheap check moves active update rollouts on (update_rollout.py):
  it sends the next ring once the previous committed, or records a halt. One read when none is active.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.console import records, update_cli
from appliance.console.commands import parse_duration
from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.fleet import no_delay
from appliance.console.output import print_json
from appliance.console.store import CONSOLE_USERNAME
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, DEVICE_TOPICS, RETAINED_DEVICE_TOPICS, site_topic

log = logging.getLogger("appliance.console.collect")

SESSION_EXPIRY_S = 7 * 86400
SHARE_GROUP = "collect"
MAX_BATCH = 2000
TICK_S = 5.0  # how often active update rollouts are checked


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    ignored: int = 0
    batches: int = 0
    connects: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "stored": self.stored, "ignored": self.ignored, "batches": self.batches,
                "connects": self.connects, "seconds": round(time.monotonic() - self.started, 1)}


class Collector:
    def __init__(self, url: str, username: str, password: str, ca_file: str | None, database: Any,
                 name: str = "main", prefix: str = DEFAULT_TOPIC_PREFIX,
                 tick: Callable[[], object] | None = None, tick_s: float = TICK_S) -> None:
        parts = urlsplit(url)
        self.url, self.prefix, self.name = url, prefix, name
        self.host, self.port = parts.hostname or "", parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.db = records.connect(database, any_thread=True)
        self.stats = Stats()
        self.tick, self.tick_s, self._next_tick = tick, tick_s, 0.0
        self.client_id = f"console-collect-{name}"
        self._sync_topic = f"{prefix}/console/{self.client_id}/sync"
        self._inbox: queue.SimpleQueue[tuple[str, bytes, int, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._refusal = ""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.username_pw_set(username, password)
        if parts.scheme == "mqtts":
            client.tls_set(ca_certs=ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(1, 30)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *args: self._connected.clear()
        client.on_message = self._on_message
        self.client = client

    # --- paho's thread ----------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refusal = f"the broker refused the collector's login: {reason}"
            return
        self.stats.connects += 1
        shared = [(f"$share/{SHARE_GROUP}/{site_topic(self.prefix, '+', leaf)}", 1) for leaf in DEVICE_TOPICS]
        retained = [(site_topic(self.prefix, "+", leaf), 1) for leaf in RETAINED_DEVICE_TOPICS]
        client.subscribe(shared + retained + [(self._sync_topic, 1)])
        client.publish(self._sync_topic, b"sync", qos=1)
        self._connected.set()
        log.info("connected to %s (session %s, %s)", self.url, self.client_id,
                 "resumed" if flags.session_present else "new")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._sync_topic:
            # Every retained copy was queued before this marker: the plain subscriptions can go.
            client.unsubscribe([site_topic(self.prefix, "+", leaf) for leaf in RETAINED_DEVICE_TOPICS]
                               + [self._sync_topic])
        self._inbox.put((message.topic, bytes(message.payload), message.mid, message.qos))

    # --- the storing thread -----------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=properties)
        except ssl.SSLError as exc:
            raise Refused(f"TLS with the broker at {self.url} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise Refused(f"cannot reach the broker at {self.url}: {exc.strerror or exc}") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.1):
            if self._refusal or time.monotonic() > deadline:
                self.client.loop_stop()
                raise Refused(self._refusal or f"the broker at {self.url} did not answer within {timeout:g} s")

    def run(self, duration: float | None = None) -> Stats:
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            batch = self._take(0.2)
            if batch:
                self._store(batch)
            self._tick()
        self._store(self._take(0.0))
        return self.stats

    def _tick(self) -> None:
        """The periodic work besides storing (update rollouts); its failures are logged, never fatal."""
        if self.tick is None or time.monotonic() < self._next_tick:
            return
        self._next_tick = time.monotonic() + self.tick_s
        try:
            self.tick()
        except Refused as exc:
            log.warning("rollout check: %s", exc.message)
        except Exception:
            log.exception("rollout check failed")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        # A plain DISCONNECT keeps the session (and its queue) on the broker for the next start.
        self.client.disconnect()
        self.client.loop_stop()
        self.db.close()

    def _take(self, wait: float) -> list[tuple[str, bytes, int, int]]:
        batch = []
        try:
            batch.append(self._inbox.get(timeout=wait) if wait else self._inbox.get_nowait())
            while len(batch) < MAX_BATCH:
                batch.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _store(self, batch: list[tuple[str, bytes, int, int]]) -> None:
        if not batch:
            return
        received = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for topic, payload, _, _ in batch:
                if topic == self._sync_topic:
                    continue
                if records.ingest(self.db, topic, payload, received, self.prefix):
                    self.stats.stored += 1
                else:
                    self.stats.ignored += 1
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.stats.received += len(batch)
        self.stats.batches += 1
        for _, _, mid, qos in batch:
            if qos > 0:
                self.client.ack(mid, qos)


def cmd_collect(ctx: Context, args: argparse.Namespace) -> int:
    url = ctx.console_url()
    name = args.name
    if not name or not all(char.isalnum() or char in "-_" for char in name) or len(name) > 32:
        raise BadInput(f"--name {name!r} must be 1-32 letters, digits, '-' or '_'")
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    credentials = ctx.store.get_meta("console_credentials")
    collector = Collector(url, CONSOLE_USERNAME, credentials["password"], str(ctx.home.ca_cert), ctx.home.database,
                          name=name, prefix=ctx.topic_prefix, tick=lambda: update_cli.advance_active(ctx))
    collector.connect()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    if threading.current_thread() is threading.main_thread():
        for signum in previous:
            signal.signal(signum, lambda *_: collector.stop())
    if not ctx.json:
        print(f"collecting from {url} as {collector.client_id} into {ctx.home.database} (Ctrl-C to stop)", flush=True)
    try:
        stats = collector.run(duration)
    finally:
        collector.close()
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    summary = stats.as_dict()
    if ctx.json:
        print_json(summary)
    else:
        print(f"stored {summary['stored']} messages ({summary['ignored']} ignored) in {summary['seconds']} s")
    return 0
