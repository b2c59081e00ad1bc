"""`collect --metrics ADDR:PORT`: a real collector process, a real broker, /metrics fetched over HTTP and read
with prometheus_client's own parser; the collector's log of its connection losses."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.console import records
from appliance.core.clock import rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.localnet import free_port
from appliance_dev.waiting import wait_until
from tests.console.conftest import Console
from tests.console.test_collect import start_collect

PREFIX = DEFAULT_TOPIC_PREFIX


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def site(metrics: dict, name: str, site_id: str, kind: str = "kecamatan") -> float | None:
    return metrics.get((name, (("kind", kind), ("site", site_id))))


def fleet(metrics: dict, name: str, kind: str = "kecamatan") -> float | None:
    return metrics.get((name, (("kind", kind),)))


def seed_a_ready_week(console: Console, ready: str, failing: str) -> None:
    """Eight days of heartbeats up to now for both sites, a passed self-test for `ready` and a failed one for
    `failing`: what a week of `collect` would have stored."""
    now = time.time()
    db = records.connect(console.home / "console.db")
    try:
        first, last = int((now - 8 * 86400) // records.BUCKET_S), int(now // records.BUCKET_S)
        db.executemany("INSERT OR IGNORE INTO heartbeats VALUES (?, ?)",
                       [(site_id, bucket) for site_id in (ready, failing) for bucket in range(first, last + 1)])
        for site_id, ok in ((ready, True), (failing, False)):
            payload = {"v": 1, "site": site_id, "at": rfc3339(now - 3600), "ok": ok,
                       "checks": {"camera": {"ok": ok, "detail": "x"}}}
            records.ingest(db, site_topic(PREFIX, site_id, "selftest"), json.dumps(payload).encode(), now)
    finally:
        db.close()


def test_metrics_show_each_site_and_the_fleet_and_collect_logs_its_reconnection(fleet_broker: Console,
                                                                                tmp_path: Path) -> None:
    console = fleet_broker
    seed_a_ready_week(console, "kalibaru", "pesanggaran")
    port = free_port()
    collector = start_collect(console, "--metrics", f"127.0.0.1:{port}")
    wait_until(lambda: "metrics at" in (console.home / "collect.log").read_text(), 15, what="collect serving metrics")

    now = time.time()
    sites = {}
    for site_id in ("kalibaru", "pesanggaran", "wongsorejo"):
        console.ok("provision", site_id, "--out", str(tmp_path / site_id))
        sites[site_id] = console.site_client(tmp_path / site_id)
    states = {"kalibaru": (True, "in_meeting"), "pesanggaran": (True, "idle"), "wongsorejo": (False, "offline")}
    for site_id, (online, state) in states.items():
        document = {"v": 1, "site": site_id, "online": online, "state": state}
        if online:
            document["at"] = rfc3339(now)
        sites[site_id].publish(site_topic(PREFIX, site_id, "state"), document, retain=True)
    sites["kalibaru"].publish(site_topic(PREFIX, "kalibaru", "telemetry"),
                              {"v": 1, "site": "kalibaru", "at": rfc3339(now + 1), "uptime_s": 60, "mqtt_reconnects": 3,
                               "cpu_temp_c": 48.5, "state": "in_meeting", "boot_id": "b"})

    def with_telemetry() -> dict | None:
        metrics = scrape(port)
        return metrics if site(metrics, "appliance_site_cpu_temperature_celsius", "kalibaru") else None

    metrics = wait_until(with_telemetry, 15, what="kalibaru's telemetry in the metrics")
    assert site(metrics, "appliance_site_up", "kalibaru") == 1.0
    assert site(metrics, "appliance_site_up", "pesanggaran") == 1.0
    assert site(metrics, "appliance_site_up", "wongsorejo") == 0.0  # its last will
    assert site(metrics, "appliance_site_up", "licin") == 0.0  # never seen
    assert site(metrics, "appliance_site_in_meeting", "kalibaru") == 1.0
    assert site(metrics, "appliance_site_in_meeting", "pesanggaran") == 0.0
    assert site(metrics, "appliance_site_cpu_temperature_celsius", "kalibaru") == 48.5
    assert site(metrics, "appliance_site_mqtt_reconnects_total", "kalibaru") == 3.0
    assert site(metrics, "appliance_site_last_seen_timestamp_seconds", "kalibaru") == pytest.approx(now + 1, abs=0.01)
    assert site(metrics, "appliance_site_last_seen_timestamp_seconds", "licin") is None
    assert fleet(metrics, "appliance_fleet_sites") == 25.0
    assert fleet(metrics, "appliance_fleet_online_sites") == 2.0
    # Ready as the rollout report counts it (with its defaults).
    report = console.ok("rollout", "--json").json
    assert fleet(metrics, "appliance_fleet_ready_sites") == report["summary"]["kecamatan"]["ready"] == 1.0
    assert metrics[("appliance_collect_connected", ())] == 1.0

    # The broker goes away and comes back: collect says so in its log, and in its metrics.
    console.broker.restart()
    log = console.home / "collect.log"
    wait_until(lambda: "reconnected to" in log.read_text(), 20, what=f"collect's reconnection in its log:\n{log.read_text()}")
    text = log.read_text()
    assert "lost the connection to" in text and text.index("lost the connection") < text.index("reconnected to")
    metrics = scrape(port)
    assert metrics[("appliance_collect_connection_losses_total", ())] == 1.0
    assert metrics[("appliance_collect_connects_total", ())] == 2.0
    assert metrics[("appliance_collect_connected", ())] == 1.0
    for client in sites.values():
        client.close()
    collector.terminate()
    assert collector.wait(15) == 0


@pytest.mark.parametrize("address", ["9464", "localhost", ":0", "127.0.0.1:65536", "127.0.0.1:http", "[zz]:9464",
                                     "::1:9464", "no-such-host.invalid:9464", "", "10.255.255.254:9464"])
def test_a_bad_metrics_address_is_exit_2(console: Console, address: str) -> None:
    console.ok("init", "--broker-url", "mqtts://localhost:18883", "--media-host", "127.0.0.1")
    result = console.run("collect", "--metrics", address)
    assert result.code == 2, result.err
    assert "--metrics" in result.err


def test_a_metrics_port_in_use_is_refused_before_connecting(console: Console) -> None:
    console.ok("init", "--broker-url", "mqtts://localhost:18883", "--media-host", "127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = console.run("collect", "--metrics", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.code == 1 and "cannot listen there" in result.err, result.err
