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
- It logs its own connection losses, failed attempts and reconnections (stderr, the journal under systemd).
  Under systemd (console-systemd/appliance-console-collect.service) it sends READY=1 once its
  subscriptions are granted, and WATCHDOG=1 from the storing loop. `--metrics ADDR:PORT`: metrics.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.adapters.systemd import Notifier
from appliance.console import metrics, records, update_cli
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
                 tick: Callable[[], object] | None = None, tick_s: float = TICK_S,
                 on_stored: Callable[[str, bytes], None] | None = None, alive: Callable[[], object] | None = None) -> None:
        parts = urlsplit(url)
        self.url, self.prefix, self.name = url, prefix, name
        self.host, self.port = parts.hostname or "", parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.db = records.connect(database, any_thread=True)
        self.stats = Stats()
        self.tick, self.tick_s, self._next_tick = tick, tick_s, 0.0
        self.on_stored, self.alive = on_stored, alive
        self.losses = 0              # connections lost (not counting our own DISCONNECT)
        self._lost_at: float | None = None
        self._failed_attempts = 0
        self._subscribe_mid: int | None = None
        self.client_id = f"console-collect-{name}"
        self._sync_topic = f"{prefix}/console/{self.client_id}/sync"
        self._inbox: queue.SimpleQueue[tuple[str, bytes, int, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._closing = False
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
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    # --- paho's thread ----------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refusal = f"the broker refused the collector's login: {reason}"
            if self.stats.connects:  # at start-up, connect() reports it
                log.error("%s; retrying", self._refusal)
            return
        self.stats.connects += 1
        shared = [(f"$share/{SHARE_GROUP}/{site_topic(self.prefix, '+', leaf)}", 1) for leaf in DEVICE_TOPICS]
        retained = [(site_topic(self.prefix, "+", leaf), 1) for leaf in RETAINED_DEVICE_TOPICS]
        self._subscribe_mid = client.subscribe(shared + retained + [(self._sync_topic, 1)])[1]
        client.publish(self._sync_topic, b"sync", qos=1)
        session = "resumed" if flags.session_present else "new"
        if self._lost_at is None:
            log.info("connected to %s (session %s, %s)", self.url, self.client_id, session)
        else:
            log.warning("reconnected to %s after %.1f s (session %s, %s)", self.url,
                        time.monotonic() - self._lost_at, self.client_id, session)
        self._lost_at, self._failed_attempts = None, 0

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            log.error("the broker refused subscriptions of the collector: %s", ", ".join(refused))
        self._connected.set()  # subscribed: what connect() (and READY=1) wait for

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()
        if self._stop.is_set() or self._closing or not self.stats.connects:  # a refusal at start: connect() says so
            return
        if self._lost_at is None:
            self.losses += 1
            self._lost_at = time.monotonic()
            log.warning("lost the connection to %s: %s; reconnecting", self.url, reason)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._failed_attempts += 1
        attempts = self._failed_attempts
        if attempts <= 3 or attempts & (attempts - 1) == 0:  # 1, 2, 3, 4, 8, 16...: the journal stays readable
            log.warning("cannot reach the broker at %s (attempt %d); retrying", self.url, attempts)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

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
            if self.alive is not None:
                self.alive()
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
        self._closing = True
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
        if self.on_stored is not None:
            for topic, payload, _, _ in batch:
                self.on_stored(topic, payload)


def _setup_logging() -> None:
    """INFO and up on stderr (the journal under systemd, which adds its own time stamps); nothing changes if the
    program already set up logging (an embedding program, the tests)."""
    journal = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s" if journal
                        else "%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_collect(ctx: Context, args: argparse.Namespace) -> int:
    address = metrics.parse_address(args.metrics) if args.metrics is not None else None
    url = ctx.console_url()
    name = args.name
    if not name or not all(char.isalnum() or char in "-_" for char in name) or len(name) > 32:
        raise BadInput(f"--name {name!r} must be 1-32 letters, digits, '-' or '_'")
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    _setup_logging()
    credentials = ctx.store.get_meta("console_credentials")
    notifier = Notifier()
    watchdog = _Watchdog(notifier)
    fleet_metrics = metrics.FleetMetrics(ctx.home.database, ctx.topic_prefix) if address else None
    collector = Collector(url, CONSOLE_USERNAME, credentials["password"], str(ctx.home.ca_cert), ctx.home.database,
                          name=name, prefix=ctx.topic_prefix, tick=lambda: update_cli.advance_active(ctx),
                          on_stored=fleet_metrics.observe if fleet_metrics else None, alive=watchdog.alive)
    server = None
    if fleet_metrics is not None and address is not None:
        fleet_metrics.collector = collector
        server = metrics.MetricsServer(address, fleet_metrics)  # before connecting: a bad address changes nothing
    try:
        collector.connect()
    except BaseException:
        if server is not None:
            server.server.server_close()
        raise
    if server is not None:
        server.start()
        log.info("metrics at http://%s/metrics", args.metrics)
    notifier.ready()  # subscribed (connect() waits for the SUBACK)
    notifier.status(f"collecting from {url} as {collector.client_id}")
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    if threading.current_thread() is threading.main_thread():
        for signum in previous:
            signal.signal(signum, lambda *_: collector.stop())
    if not ctx.json:
        print(f"collecting from {url} as {collector.client_id} into {ctx.home.database} (Ctrl-C to stop)", flush=True)
    try:
        stats = collector.run(duration)
    finally:
        notifier.stopping()
        collector.close()
        if server is not None:
            server.stop()
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    summary = stats.as_dict()
    if ctx.json:
        print_json(summary)
    else:
        print(f"stored {summary['stored']} messages ({summary['ignored']} ignored) in {summary['seconds']} s")
    return 0


class _Watchdog:
    """WATCHDOG=1 at half of systemd's WATCHDOG_USEC, from the storing loop: a loop stuck (a database that
    never answers) stops the pings and systemd restarts the service."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier, self.next = notifier, 0.0

    def alive(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval and time.monotonic() >= self.next:
            self.next = time.monotonic() + interval
            self.notifier.watchdog()
