"""`collect`: persistent shared session into SQLite, idempotent, gap filled after console downtime."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.console import records
from appliance.console.collect import Collector
from appliance.console.store import CONSOLE_USERNAME, Store
from appliance.core.clock import rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, Topics, site_topic
from appliance_dev.waiting import stop_process, wait_until
from tests.console.conftest import ROOT, Console

SITES = ["kalibaru", "pesanggaran", "wongsorejo"]
TELEMETRY_EVERY_5_S = "[telemetry]\ninterval_s = 5\n"  # so the test sees several in seconds
PREFIX = DEFAULT_TOPIC_PREFIX


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


def test_console_down_then_collect_restarted_fills_the_gap(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    collector = start_collect(console)
    a, b = (console.start_daemon(site, tmp_path, extra=TELEMETRY_EVERY_5_S) for site in SITES[:2])
    wait_until(lambda: {row[0] for row in query(console, "SELECT DISTINCT site FROM telemetry")} >= set(SITES[:2]), 20,
               what="telemetry from both sites")
    stop_process(collector, signal.SIGKILL)  # the console crashes
    down_at = time.time()
    witness = console.console_client(site_topic(PREFIX, SITES[0], "telemetry"))
    # While it is down: a self-test at site A, site B goes away, site C appears for the first time.
    assert a.control({"cmd": "selftest"})["ok"]
    b.stop()
    c = console.start_daemon(SITES[2], tmp_path, extra=TELEMETRY_EVERY_5_S)
    wait_until(lambda: len(witness.messages) >= 2, 20, what="two telemetry messages of A while the console is down")
    witness.close()
    up_at = time.time()
    collector = start_collect(console)
    wait_until(lambda: query(console, "SELECT count(*) FROM selftests WHERE site = ?", SITES[0])[0][0] == 1, 20,
               what="the self-test made while the console was down")
    wait_until(lambda: query(console, "SELECT state FROM site_state WHERE site = ?", SITES[1]) == [("offline",)], 20,
               what="site B's will")
    wait_until(lambda: query(console, "SELECT count(*) FROM uptime_days WHERE site = ?", SITES[2])[0][0] == 1, 20,
               what="site C's retained uptime")
    gap = query(console, "SELECT count(*) FROM telemetry WHERE site = ? AND at > ? AND at < ?", SITES[0], down_at, up_at)
    assert gap[0][0] >= 2, "telemetry sent while the console was down was queued in its session and stored"
    stop_process(collector)
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
    for daemon in (a, c):
        daemon.stop()


def _collector(console: Console, name: str) -> Collector:
    store = Store(console.home / "console.db")
    url, password = store.get_meta("console_url"), store.get_meta("console_credentials")["password"]
    store.close()
    return Collector(url, CONSOLE_USERNAME, password, str(console.home / "ca" / "ca.pem"),
                     console.home / "console.db", name=name)


def test_two_collectors_share_the_stream_without_loss_or_duplicates(fleet_broker: Console) -> None:
    console = fleet_broker
    first, second = _collector(console, "a"), _collector(console, "b")
    for collector in (first, second):
        collector.connect()
    threads = [threading.Thread(target=collector.run, args=(5.0,)) for collector in (first, second)]
    for thread in threads:
        thread.start()
    publisher = console.console_client()  # a plain client: it must not join the collectors' share group
    base = time.time() - 3600
    packets = [publisher.publish_nowait(site_topic(PREFIX, SITES[n % 3], "telemetry"),
                                        {"v": 1, "site": SITES[n % 3], "at": rfc3339(base + n), "state": "idle"})
               for n in range(600)]
    for packet in packets:
        publisher.puback(packet, 10)
    for thread in threads:
        thread.join(20)
    publisher.close()
    for collector in (first, second):
        collector.close()
    assert query(console, "SELECT count(*) FROM telemetry")[0][0] == 600
    assert first.stats.stored > 0 and second.stats.stored > 0  # both took a share
    assert first.stats.stored + second.stats.stored == 600


def test_ingest_is_idempotent(tmp_path: Path) -> None:
    db = records.connect(tmp_path / "c.db")
    x = Topics(PREFIX, "x", "other")
    messages = [
        (x.state, {"v": 1, "site": "x", "online": True, "state": "idle", "at": "2026-11-27T01:00:00.000Z"}),
        (x.state, {"v": 1, "site": "x", "online": False, "state": "offline"}),
        (x.telemetry, {"v": 1, "site": "x", "at": "2026-11-27T01:01:00.000Z", "throttled": None}),
        (x.ack, {"v": 1, "site": "x", "id": None, "type": None, "ok": False, "at": "2026-11-27T01:02:00Z"}),
        (x.event, {"v": 1, "site": "x", "type": "meeting.joined", "at": "2026-11-27T01:03:00Z"}),
        (x.uptime, {"v": 1, "site": "x", "tz": "Asia/Jakarta", "at": "2026-11-27T01:04:00Z",
                                    "days": [{"date": "2026-11-27", "up_s": 600, "connected_s": 500, "in_meeting_s": 0,
                                              "meetings_joined": 1, "boots": 1}]}),
        (x.selftest, {"v": 1, "site": "x", "at": "2026-11-27T01:05:00Z", "ok": True, "checks": {}}),
    ]
    for _ in range(3):
        for topic, payload in messages:
            assert records.ingest(db, topic, json.dumps(payload).encode(), time.time())
    assert records.counts(db) == {"site_state": 1, "state_log": 2, "acks": 1, "events": 1, "telemetry": 1,
                                  "uptime_days": 1, "selftests": 1, "heartbeats": 1}
    older = dict(messages[5][1], at="2026-11-27T00:00:00Z",
                 days=[{"date": "2026-11-27", "up_s": 10, "connected_s": 10, "meetings_joined": 0, "boots": 1}])
    records.ingest(db, x.uptime, json.dumps(older).encode(), time.time())
    assert db.execute("SELECT up_s FROM uptime_days").fetchone()[0] == 600  # a late old copy never lowers totals
    assert not records.ingest(db, x.telemetry, b"not json", time.time())
    assert not records.ingest(db, "elsewhere/x", b"{}", time.time())
    db.close()


def test_collect_bad_name_is_refused(fleet_broker: Console) -> None:
    result = fleet_broker.run("collect", "--name", "bad name!")
    assert result.code == 2 and "--name" in result.err
