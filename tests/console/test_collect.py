"""`collect`: persistent shared session into SQLite, idempotent, gap filled after console downtime."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from appliance.console import records
from appliance.console.collect import Collector
from appliance.console.store import CONSOLE_USERNAME, Store
from appliance.core.clock import rfc3339
from tests.console.conftest import ROOT, Console, stop
from tests.support.site import request

SITES = ["kalibaru", "pesanggaran", "wongsorejo"]


def start_site(console: Console, site: str, tmp: Path) -> subprocess.Popen:
    """Like Console.start_daemon, with telemetry every 5 s so the test sees several in seconds."""
    directory = tmp / f"device-{site}"
    console.ok("provision", site, "--out", str(directory / "boot"))
    overlay = directory / "test.toml"
    overlay.write_text(
        f'[broker]\nca_file = "{directory / "boot" / "ca.pem"}"\n[telemetry]\ninterval_s = 5\n'
        '[panel]\nbackend = "mock"\n[camera]\nbackend = "none"\n[display]\nbackend = "none"\n'
        f'[paths]\nstate_dir = "{directory / "state"}"\ncontrol_socket = "{directory / "control.sock"}"\n')
    log = open(directory / "daemon.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(directory / "boot" / "appliance-site.toml"),
         "--config", str(overlay)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    console.processes.append(process)
    return process


def start_collect(console: Console, *extra: str) -> subprocess.Popen:
    log = open(console.home / "collect.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "appliance.console", "--home", str(console.home), "collect",
                                *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    console.processes.append(process)
    return process


def query(console: Console, sql: str, *params: object) -> list[tuple]:
    db = records.connect(console.home / "console.db")
    try:
        return [tuple(row) for row in db.execute(sql, params)]
    finally:
        db.close()


def wait_until(check, timeout: float = 20.0, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.2)


def test_console_down_then_collect_restarted_fills_the_gap(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    collector = start_collect(console)
    a, b = start_site(console, SITES[0], tmp_path), start_site(console, SITES[1], tmp_path)
    wait_until(lambda: {row[0] for row in query(console, "SELECT DISTINCT site FROM telemetry")} >= set(SITES[:2]),
               what="telemetry from both sites")
    stop(collector, signal.SIGKILL)  # the console crashes
    down_at = time.time()
    # While it is down: a self-test at site A, site B goes away, site C appears for the first time.
    selftest = request(str(tmp_path / f"device-{SITES[0]}" / "control.sock"), {"cmd": "selftest"}, timeout=30)
    assert selftest["ok"]
    stop(b)
    c = start_site(console, SITES[2], tmp_path)
    time.sleep(11)  # two telemetry intervals of A and C pass unseen
    up_at = time.time()
    collector = start_collect(console)
    wait_until(lambda: query(console, "SELECT count(*) FROM selftests WHERE site = ?", SITES[0])[0][0] == 1,
               what="the self-test made while the console was down")
    wait_until(lambda: query(console, "SELECT state FROM site_state WHERE site = ?", SITES[1]) == [("offline",)],
               what="site B's will")
    wait_until(lambda: query(console, "SELECT count(*) FROM uptime_days WHERE site = ?", SITES[2])[0][0] == 1,
               what="site C's retained uptime")
    gap = query(console, "SELECT count(*) FROM telemetry WHERE site = ? AND at > ? AND at < ?", SITES[0], down_at, up_at)
    assert gap[0][0] >= 2, "telemetry sent while the console was down was queued in its session and stored"
    stop(collector)
    before = {table: query(console, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
              for table in ("selftests", "state_log", "uptime_days", "events")}
    collector = start_collect(console, "--duration", "3")  # retained copies delivered again: nothing new
    collector.wait(15)
    after = {table: query(console, f"SELECT count(*) FROM {table}")[0][0] for table in before}  # noqa: S608
    assert after["selftests"] == before["selftests"] and after["state_log"] == before["state_log"]
    assert after["uptime_days"] == before["uptime_days"]
    report = console.ok("rollout", "--json").json
    rows = {row["id"]: row for row in report["sites"]}
    assert rows[SITES[0]]["selftest"]["ok"] is False  # this machine has no microphone: the self-test fails
    assert any(r["code"] == "selftest_failed" for r in rows[SITES[0]]["reasons"])
    assert rows[SITES[2]]["last_seen"] is not None and rows["licin"]["reasons"][0]["code"] == "never_connected"
    for process in (a, c):
        stop(process)


def _collector(console: Console, name: str) -> Collector:
    store = Store(console.home / "console.db")
    url, password = store.get_meta("broker_url"), store.get_meta("console_credentials")["password"]
    store.close()
    return Collector(url, CONSOLE_USERNAME, password, str(console.home / "ca" / "ca.pem"),
                     console.home / "console.db", name=name)


def _publisher(console: Console) -> mqtt.Client:
    """A plain console client (not a collector: it must not join the share group)."""
    store = Store(console.home / "console.db")
    password = store.get_meta("console_credentials")["password"]
    store.close()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(CONSOLE_USERNAME, password)
    client.tls_set(ca_certs=str(console.home / "ca" / "ca.pem"))
    client.connect("localhost", console.port)
    client.loop_start()
    return client


def test_two_collectors_share_the_stream_without_loss_or_duplicates(fleet_broker: Console) -> None:
    console = fleet_broker
    first, second = _collector(console, "a"), _collector(console, "b")
    for collector in (first, second):
        collector.connect()
    threads = [threading.Thread(target=collector.run, args=(5.0,)) for collector in (first, second)]
    for thread in threads:
        thread.start()
    publisher = _publisher(console)
    base = time.time() - 3600
    infos = [publisher.publish(f"rapat/v1/site/{SITES[n % 3]}/telemetry",
                                      json.dumps({"v": 1, "site": SITES[n % 3], "at": rfc3339(base + n), "state": "idle"}),
                                      qos=1) for n in range(600)]
    for info in infos:
        info.wait_for_publish(10)
    for thread in threads:
        thread.join(20)
    publisher.loop_stop()
    publisher.disconnect()
    for collector in (first, second):
        collector.close()
    assert query(console, "SELECT count(*) FROM telemetry")[0][0] == 600
    assert first.stats.stored > 0 and second.stats.stored > 0  # both took a share
    assert first.stats.stored + second.stats.stored == 600


def test_ingest_is_idempotent(tmp_path: Path) -> None:
    db = records.connect(tmp_path / "c.db")
    messages = [
        ("rapat/v1/site/x/state", {"v": 1, "site": "x", "online": True, "state": "idle", "at": "2026-11-27T01:00:00.000Z"}),
        ("rapat/v1/site/x/state", {"v": 1, "site": "x", "online": False, "state": "offline"}),
        ("rapat/v1/site/x/telemetry", {"v": 1, "site": "x", "at": "2026-11-27T01:01:00.000Z", "throttled": None}),
        ("rapat/v1/site/x/ack", {"v": 1, "site": "x", "id": None, "type": None, "ok": False, "at": "2026-11-27T01:02:00Z"}),
        ("rapat/v1/site/x/event", {"v": 1, "site": "x", "type": "meeting.joined", "at": "2026-11-27T01:03:00Z"}),
        ("rapat/v1/site/x/uptime", {"v": 1, "site": "x", "tz": "Asia/Jakarta", "at": "2026-11-27T01:04:00Z",
                                    "days": [{"date": "2026-11-27", "up_s": 600, "connected_s": 500, "in_meeting_s": 0,
                                              "meetings_joined": 1, "boots": 1}]}),
        ("rapat/v1/site/x/selftest", {"v": 1, "site": "x", "at": "2026-11-27T01:05:00Z", "ok": True, "checks": {}}),
    ]
    for _ in range(3):
        for topic, payload in messages:
            assert records.ingest(db, topic, json.dumps(payload).encode(), time.time())
    assert records.counts(db) == {"site_state": 1, "state_log": 2, "acks": 1, "events": 1, "telemetry": 1,
                                  "uptime_days": 1, "selftests": 1, "heartbeats": 1}
    older = dict(messages[5][1], at="2026-11-27T00:00:00Z",
                 days=[{"date": "2026-11-27", "up_s": 10, "connected_s": 10, "meetings_joined": 0, "boots": 1}])
    records.ingest(db, "rapat/v1/site/x/uptime", json.dumps(older).encode(), time.time())
    assert db.execute("SELECT up_s FROM uptime_days").fetchone()[0] == 600  # a late old copy never lowers totals
    assert not records.ingest(db, "rapat/v1/site/x/telemetry", b"not json", time.time())
    assert not records.ingest(db, "elsewhere/x", b"{}", time.time())
    db.close()


def test_collect_bad_name_is_refused(fleet_broker: Console) -> None:
    result = fleet_broker.run("collect", "--name", "bad name!")
    assert result.code == 2 and "--name" in result.err
