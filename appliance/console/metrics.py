"""`collect --metrics ADDR:PORT`: Prometheus metrics at /metrics, with the official prometheus_client.

Read at each scrape from the console's database (what every collector stored, so any of several
collectors gives the fleet's view), except each site's MQTT reconnect counter: the database does not
keep it, so it is the latest telemetry this collector received itself. Names and meanings: docs/operations.md.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.console import records, rollout
from appliance.console.errors import BadInput, Refused
from appliance.console.fleet import decode, parse_topic
from appliance.core.clock import parse_rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX

READY_EVERY_S = 60.0   # readiness reads a week of heartbeats: computed at most this often
SITE_LABELS = ["site", "kind"]


def parse_address(text: str, option: str = "--metrics") -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT` or `:PORT` (every interface) -> (host, port); BadInput (exit 2) otherwise."""
    host, sep, port_text = (text or "").rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadInput(f"{option} {text!r} must be ADDR:PORT with a port from 1 to 65535, e.g. 127.0.0.1:9464, "
                       "[::1]:9464 or :9464 (every interface)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadInput(f"{option} {text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise BadInput(f"{option} {text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if host:
        try:
            socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise BadInput(f"{option} {text!r}: cannot resolve {host!r} ({exc.strerror})") from None
    return host, int(port_text)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape every 15 s would fill the journal


class FleetMetrics:
    """A prometheus_client custom collector: every metric computed when scraped."""

    def __init__(self, database: Path, prefix: str = DEFAULT_TOPIC_PREFIX,
                 collector: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.database, self.prefix, self.collector, self.clock = database, prefix, collector, clock
        self._reconnects: dict[str, tuple[float, float]] = {}  # site -> (telemetry time, mqtt_reconnects)
        self._lock = threading.Lock()
        self._ready: tuple[float, dict[str, int]] | None = None  # (computed at, kind -> ready sites)

    # --- fed by the collector, on its storing thread ---------------------------------------------
    def observe(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic, self.prefix)
        if not parsed or parsed[1] != "telemetry":
            return
        document = decode(payload)
        value = document.get("mqtt_reconnects") if document else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return
        try:
            at = parse_rfc3339(document.get("at"))
        except (TypeError, ValueError):
            at = 0.0
        with self._lock:
            if at >= self._reconnects.get(parsed[0], (float("-inf"), 0))[0]:
                self._reconnects[parsed[0]] = (at, float(value))

    # --- prometheus_client, on the HTTP server's thread --------------------------------------------
    def describe(self) -> list[Any]:
        return []  # nothing to check at registration (and no database read then)

    def collect(self) -> Iterator[Any]:
        db = sqlite3.connect(f"{Path(self.database).absolute().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            yield from self._site_metrics(db)
            yield from self._fleet_metrics(db)
        finally:
            db.close()
        yield from self._collector_metrics()

    def _site_metrics(self, db: sqlite3.Connection) -> Iterator[Any]:
        rows = db.execute(
            "SELECT s.id, s.kind, st.online, st.state, ls.at, "
            "(SELECT t.cpu_temp_c FROM telemetry t WHERE t.site = s.id ORDER BY t.at DESC LIMIT 1) "
            "FROM sites s LEFT JOIN site_state st ON st.site = s.id LEFT JOIN last_seen ls ON ls.site = s.id "
            "ORDER BY s.id").fetchall()
        up = GaugeMetricFamily("appliance_site_up", "1 when the site's retained state says online, else 0 "
                               "(offline by its last will, or never seen)", labels=SITE_LABELS)
        meeting = GaugeMetricFamily("appliance_site_in_meeting", "1 when the site is online in the state in_meeting",
                                    labels=SITE_LABELS)
        seen = GaugeMetricFamily("appliance_site_last_seen_timestamp_seconds",
                                 "when the site was last seen online (Unix time); absent if never", labels=SITE_LABELS)
        temp = GaugeMetricFamily("appliance_site_cpu_temperature_celsius",
                                 "CPU temperature in the site's latest stored telemetry; absent if unknown",
                                 labels=SITE_LABELS)
        reconnects = CounterMetricFamily("appliance_site_mqtt_reconnects",
                                         "the device daemon's broker reconnections since it started, from the latest "
                                         "telemetry this collector received (resets when the daemon restarts)",
                                         labels=SITE_LABELS)
        with self._lock:
            latest = dict(self._reconnects)
        for site, kind, online, state, last_seen, cpu_temp in rows:
            labels = [site, kind]
            up.add_metric(labels, 1.0 if online == 1 else 0.0)
            meeting.add_metric(labels, 1.0 if online == 1 and state == "in_meeting" else 0.0)
            if last_seen is not None:
                seen.add_metric(labels, float(last_seen))
            if cpu_temp is not None:
                temp.add_metric(labels, float(cpu_temp))
            if site in latest:
                reconnects.add_metric(labels, latest[site][1])
        yield from (up, meeting, seen, temp, reconnects)

    def _fleet_metrics(self, db: sqlite3.Connection) -> Iterator[Any]:
        registered: dict[str, int] = {}
        online: dict[str, int] = {}
        for kind, count, up in db.execute("SELECT s.kind, count(*), coalesce(sum(st.online = 1), 0) FROM sites s "
                                          "LEFT JOIN site_state st ON st.site = s.id GROUP BY s.kind"):
            registered[kind], online[kind] = count, up
        ready = self._ready_counts(db)
        families = [
            ("appliance_fleet_sites", "registered sites", registered),
            ("appliance_fleet_online_sites", "sites whose retained state says online", online),
            ("appliance_fleet_ready_sites", "sites ready as `appliance-console rollout` defines it with its defaults "
             "(seen within 24 h, last self-test passed, 95 % office-hours uptime over 7 days); "
             f"recomputed at most every {READY_EVERY_S:g} s", ready),
        ]
        for name, text, counts in families:
            family = GaugeMetricFamily(name, text, labels=["kind"])
            for kind in sorted(registered):
                family.add_metric([kind], float(counts.get(kind, 0)))
            yield family

    def _ready_counts(self, db: sqlite3.Connection) -> dict[str, int]:
        now = self.clock()
        if self._ready is not None and now - self._ready[0] < READY_EVERY_S:
            return self._ready[1]
        criteria = rollout.Criteria(ZoneInfo("Asia/Jakarta"))
        counts: dict[str, int] = {}
        for site in load_recent(db, now, criteria):
            if rollout.evaluate(site, now, criteria)["ready"]:
                counts[site.kind] = counts.get(site.kind, 0) + 1
        self._ready = (now, counts)
        return counts

    def _collector_metrics(self) -> Iterator[Any]:
        collector = self.collector
        if collector is None:
            return
        stats = collector.stats
        yield GaugeMetricFamily("appliance_collect_connected", "1 while this collector is connected to the broker",
                                value=1.0 if collector.connected else 0.0)
        yield CounterMetricFamily("appliance_collect_connects", "this collector's successful connections to the broker",
                                  value=stats.connects)
        yield CounterMetricFamily("appliance_collect_connection_losses",
                                  "times this collector lost its broker connection", value=collector.losses)
        yield CounterMetricFamily("appliance_collect_messages_stored", "device messages this collector stored",
                                  value=stats.stored)


def load_recent(db: sqlite3.Connection, now: float, criteria: rollout.Criteria) -> list[rollout.SiteData]:
    """rollout.load(), reading only the heartbeats that can decide readiness at `now`: the uptime window and the
    `seen within` span (a site with none in that span is not ready either way). No meetings (not needed here)."""
    since = int((now - max(criteria.window_days + 1, criteria.seen_within_s / 86400 + 1) * 86400) // records.BUCKET_S)
    buckets: dict[str, list[int]] = {}
    for site, bucket in db.execute("SELECT site, bucket FROM heartbeats WHERE bucket >= ? ORDER BY site, bucket",
                                   (since,)):
        buckets.setdefault(site, []).append(bucket)
    tests: dict[str, list[tuple[float, bool, list[str]]]] = {}
    for site, at, ok, payload in db.execute("SELECT site, at, ok, payload FROM selftests ORDER BY site, at"):
        failed = list(rollout.failing_checks(json.loads(payload).get("checks") or {}))
        tests.setdefault(site, []).append((at, bool(ok), failed))
    return [rollout.SiteData(id=site, name=name, kind=kind, distance_km=distance, buckets=buckets.get(site, []),
                             selftests=tests.get(site, []), meetings=0)
            for site, name, kind, distance in db.execute("SELECT id, name, kind, distance_km FROM sites ORDER BY id")]


class MetricsServer:
    """The /metrics endpoint on its own threads; bound at construction, so a bad address fails before anything."""

    def __init__(self, address: tuple[str, int], metrics: FleetMetrics) -> None:
        host, port = address
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics)
        server_class = _Server6 if ":" in host else _Server
        try:
            self.server = make_server(host or "", port, make_wsgi_app(registry), server_class, _QuietHandler)
        except OSError as exc:
            where = f"{'[' + host + ']' if ':' in host else host}:{port}"
            if exc.errno == errno.EADDRNOTAVAIL:
                raise BadInput(f"--metrics {where}: no such address on this machine") from None
            raise Refused(f"--metrics {where}: cannot listen there: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
