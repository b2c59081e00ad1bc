"""`appliance-console rollout`: which sites are ready for the target, why the others are not, and the
travel that online meetings saved. Computed from what `collect` stored; method in docs/operations.md.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import io
import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.console import records
from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.home import atomic_write
from appliance.console.output import print_json, table
from appliance.console.rollout_html import id_number, render
from appliance.core.clock import parse_rfc3339, rfc3339

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_BURNUP_DAYS = 180


@dataclass(frozen=True)
class Criteria:
    tz: ZoneInfo
    seen_within_s: float = 86400.0
    uptime_min_pct: float = 95.0
    window_days: int = 7
    office_start: dtime = dtime(7, 0)
    office_end: dtime = dtime(16, 0)
    workdays: tuple[int, ...] = (0, 1, 2, 3, 4)
    speed_kmh: float = 40.0

    def describe(self) -> dict[str, Any]:
        return {"seen_within_h": self.seen_within_s / 3600, "uptime_min_pct": self.uptime_min_pct,
                "window_days": self.window_days,
                "office_hours": f"{self.office_start:%H:%M}-{self.office_end:%H:%M}",
                "workdays": ",".join(WEEKDAYS[day] for day in self.workdays), "timezone": str(self.tz.key),
                "bucket_min": records.BUCKET_S // 60}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (for a projector)")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per site as CSV")
    parser.add_argument("--target", metavar="YYYY-MM-DD", help="the rollout target (default: 31 October of this year)")
    parser.add_argument("--as-of", metavar="TIME", help="compute as of this RFC 3339 time (default: now)")
    parser.add_argument("--uptime-min", default="95", metavar="PCT", help="office-hours uptime needed (default 95)")
    parser.add_argument("--window-days", default="7", metavar="DAYS", help="uptime window (default 7)")
    parser.add_argument("--office-hours", default="07:00-16:00", metavar="HH:MM-HH:MM", help="(default 07:00-16:00)")
    parser.add_argument("--workdays", default="mon-fri", metavar="DAYS", help="mon-fri (default), mon-sat or a list")
    parser.add_argument("--seen-within", default="24", metavar="HOURS", help="online within (default 24 h)")
    parser.add_argument("--targets", default="kecamatan=25,desa=217", metavar="KIND=N,...",
                        help="sites needed per kind (default kecamatan=25,desa=217)")
    parser.add_argument("--speed-kmh", default="40", metavar="KMH", help="average road speed for hours (default 40)")
    parser.add_argument("--tz", default="Asia/Jakarta", help="the regency's time zone (default Asia/Jakarta)")


def _number(text: str, option: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{option} {text!r} is not a number") from None
    if not low <= value <= high:
        raise BadInput(f"{option} {text!r} must be between {low:g} and {high:g}")
    return value


def parse_criteria(args: argparse.Namespace) -> Criteria:
    try:
        tz = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"--tz {args.tz!r} is not a known time zone") from None
    try:
        start_text, end_text = args.office_hours.split("-")
        start, end = dtime.fromisoformat(start_text), dtime.fromisoformat(end_text)
    except ValueError:
        raise BadInput(f"--office-hours {args.office_hours!r} must look like 07:00-16:00") from None
    if start >= end or start.minute % 5 or end.minute % 5:
        raise BadInput(f"--office-hours {args.office_hours!r}: start before end, on 5-minute steps")
    return Criteria(tz, _number(args.seen_within, "--seen-within", 1, 24 * 30) * 3600,
                    _number(args.uptime_min, "--uptime-min", 0, 100), int(_number(args.window_days, "--window-days", 1, 60)),
                    start, end, parse_workdays(args.workdays), _number(args.speed_kmh, "--speed-kmh", 1, 200))


def parse_workdays(text: str) -> tuple[int, ...]:
    days: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.strip().partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise BadInput(f"--workdays {text!r}: use mon-fri, mon-sat or names like mon,tue,wed")
        low, high = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        days.update(range(low, high + 1))
    return tuple(sorted(days))


def parse_targets(text: str) -> dict[str, int]:
    targets = {}
    for part in text.split(","):
        kind, _, number = part.partition("=")
        if kind.strip() not in ("kecamatan", "desa", "other") or not number.strip().isdigit():
            raise BadInput(f"--targets {text!r} must look like kecamatan=25,desa=217")
        targets[kind.strip()] = int(number)
    return targets


# --- the data, per site -------------------------------------------------------------------------
@dataclass
class SiteData:
    id: str
    name: str
    kind: str
    distance_km: float | None
    buckets: list[int]                       # sorted heartbeat buckets
    selftests: list[tuple[float, bool, list[str]]]  # sorted by time: (at, ok, failed checks)
    meetings: int
    failing: dict[float, dict[str, str]] = field(default_factory=dict)  # self-test time -> failed check -> detail

    def first_seen(self) -> float | None:
        return self.buckets[0] * records.BUCKET_S if self.buckets else None


def failing_checks(checks: dict[str, Any]) -> dict[str, str]:
    """A self-test's failed checks: name -> detail."""
    return {name: str(check.get("detail") or "") for name, check in checks.items()
            if isinstance(check, dict) and check.get("ok") is False}


def load(db: sqlite3.Connection, store_db: sqlite3.Connection) -> list[SiteData]:
    sites = []
    for row in store_db.execute("SELECT id, name, kind, distance_km FROM sites ORDER BY kind, id"):
        buckets = [r[0] for r in db.execute("SELECT bucket FROM heartbeats WHERE site = ? ORDER BY bucket", (row[0],))]
        tests, failing = [], {}
        for at, ok, payload in db.execute("SELECT at, ok, payload FROM selftests WHERE site = ? ORDER BY at", (row[0],)):
            failing[at] = failing_checks(json.loads(payload).get("checks") or {})
            tests.append((at, bool(ok), list(failing[at])))
        meetings = db.execute("SELECT coalesce(sum(meetings_joined), 0) FROM uptime_days WHERE site = ?",
                              (row[0],)).fetchone()[0]
        sites.append(SiteData(row[0], row[1], row[2], row[3], buckets, tests, int(meetings), failing))
    return sites


def office_buckets(day: date, criteria: Criteria, until: float) -> range:
    """The heartbeat buckets of one day's office hours that ended before `until`."""
    if day.weekday() not in criteria.workdays:
        return range(0)
    start = datetime.combine(day, criteria.office_start, criteria.tz).timestamp()
    end = min(datetime.combine(day, criteria.office_end, criteria.tz).timestamp(), until)
    first, last = int(start // records.BUCKET_S), int(end // records.BUCKET_S)
    return range(first, max(first, last))


def evaluate(site: SiteData, at: float, criteria: Criteria) -> dict[str, Any]:
    """Readiness of one site as of `at`, with a reason for every criterion it fails."""
    reasons: list[dict[str, str]] = []
    seen_index = bisect.bisect_right(site.buckets, int(at // records.BUCKET_S)) - 1
    last_seen = min(at, (site.buckets[seen_index] + 1) * records.BUCKET_S) if seen_index >= 0 else None
    if last_seen is None:
        reasons.append(_reason("never_connected", "never connected: not provisioned or not installed",
                               "belum pernah terhubung: belum dipasang atau belum diprovisi"))
    elif at - last_seen > criteria.seen_within_s:
        ago = (at - last_seen) / 3600
        when = datetime.fromtimestamp(last_seen, criteria.tz).strftime("%d-%m %H:%M %Z")  # %Z: WIB, WITA or WIT
        reasons.append(_reason("offline", f"offline: last seen {when} ({_hours(ago, 'en')} ago)",
                               f"tidak daring: terakhir terlihat {when} ({_hours(ago, 'id')} lalu)"))
    tests = [test for test in site.selftests if test[0] <= at]
    selftest = None
    if not tests:
        reasons.append(_reason("no_selftest", "no self-test yet", "belum ada uji mandiri"))
    else:
        test_at, ok, failed = tests[-1]
        selftest = {"at": rfc3339(test_at), "ok": ok, "failed": failed, "details": site.failing.get(test_at, {})}
        if not ok:
            names = ", ".join(failed) or "?"
            reasons.append(_reason("selftest_failed", f"last self-test failed: {names}",
                                   f"uji mandiri terakhir gagal: {names}"))
    pct = office_uptime(site, at, criteria)
    if pct is not None and pct < criteria.uptime_min_pct:
        reasons.append(_reason("uptime", f"office-hours uptime {pct:.1f}% over {criteria.window_days} days "
                               f"(needs {criteria.uptime_min_pct:g}%)",
                               f"waktu aktif jam kerja {id_number(pct, 1)}% dalam {criteria.window_days} hari "
                               f"(perlu {id_number(criteria.uptime_min_pct)}%)"))
    return {"id": site.id, "name": site.name, "kind": site.kind, "ready": not reasons, "reasons": reasons,
            "last_seen": rfc3339(last_seen) if last_seen else None, "selftest": selftest,
            "office_uptime_pct": None if pct is None else round(pct, 2), "meetings_joined": site.meetings,
            "distance_km": site.distance_km}


def office_uptime(site: SiteData, at: float, criteria: Criteria) -> float | None:
    today = datetime.fromtimestamp(at, criteria.tz).date()
    total = up = 0
    for offset in range(criteria.window_days):
        window = office_buckets(today - timedelta(days=offset), criteria, at)
        if not window:
            continue
        total += len(window)
        up += bisect.bisect_left(site.buckets, window.stop) - bisect.bisect_left(site.buckets, window.start)
    return 100.0 * up / total if total else None


def _reason(code: str, en: str, id_: str) -> dict[str, str]:
    return {"code": code, "text": en, "text_id": id_}


def _hours(hours: float, language: str) -> str:
    if hours >= 72:
        return f"{hours / 24:.0f} days" if language == "en" else f"{id_number(hours / 24, 0)} hari"
    return f"{hours:.0f} h" if language == "en" else f"{id_number(hours, 0)} jam"


# --- the report ---------------------------------------------------------------------------------
def build(sites: list[SiteData], at: float, target: date, targets: dict[str, int], criteria: Criteria) -> dict[str, Any]:
    rows = [evaluate(site, at, criteria) for site in sites]
    today = datetime.fromtimestamp(at, criteria.tz).date()
    kinds = sorted(set(targets) | {row["kind"] for row in rows}, key=lambda k: ("kecamatan", "desa", "other").index(k))
    summary = {kind: {"ready": sum(1 for r in rows if r["kind"] == kind and r["ready"]),
                      "registered": sum(1 for r in rows if r["kind"] == kind),
                      "target": targets.get(kind)} for kind in kinds}
    needed = sum(targets.values())
    burnup = burn_up(sites, at, criteria)
    projection = project(burnup, today, target, needed)
    with_distance = [s for s in sites if s.distance_km is not None]
    km = sum(s.meetings * 2 * float(s.distance_km) for s in with_distance)  # type: ignore[arg-type]
    travel = {"meetings_joined": sum(s.meetings for s in sites),
              "meetings_without_distance": sum(s.meetings for s in sites if s.distance_km is None),
              "km": round(km, 1), "hours": round(km / criteria.speed_kmh, 1), "speed_kmh": criteria.speed_kmh}
    return {"v": 1, "as_of": rfc3339(at), "today": today.isoformat(), "target": target.isoformat(),
            "days_left": (target - today).days, "criteria": criteria.describe(), "summary": summary,
            "ready_total": sum(1 for r in rows if r["ready"]), "needed_total": needed,
            "sites": rows, "burnup": burnup, "projection": projection, "travel": travel}


def burn_up(sites: list[SiteData], at: float, criteria: Criteria) -> list[dict[str, Any]]:
    """Ready sites per workday, as of the end of that day's office hours (weekends would only show
    sites switched off for the weekend as 'offline')."""
    firsts = [first for site in sites if (first := site.first_seen()) is not None]
    if not firsts:
        return []
    tz = criteria.tz
    today = datetime.fromtimestamp(at, tz).date()
    day = max(datetime.fromtimestamp(min(firsts), tz).date(), today - timedelta(days=MAX_BURNUP_DAYS))
    points = []
    while day <= today:
        if day.weekday() in criteria.workdays:
            end = min(at, datetime.combine(day, criteria.office_end, tz).timestamp())
            ready = [site.kind for site in sites if evaluate(site, end, criteria)["ready"]]
            points.append({"date": day.isoformat(), "ready": len(ready), "kecamatan": ready.count("kecamatan"),
                           "desa": ready.count("desa")})
        day += timedelta(days=1)
    return points


def project(burnup: list[dict[str, Any]], today: date, target: date, needed: int) -> dict[str, Any]:
    """A straight line through the pace of the last 14 days (or of as many as there are)."""
    if not burnup:
        return {"pace_per_day": 0.0, "span_days": 0, "at_target": None, "complete_on": None}
    now = burnup[-1]["ready"]
    base = next((p for p in burnup if date.fromisoformat(p["date"]) >= today - timedelta(days=14)), burnup[-1])
    span = (date.fromisoformat(burnup[-1]["date"]) - date.fromisoformat(base["date"])).days
    pace = (now - base["ready"]) / span if span else 0.0
    at_target = None if target < today else min(needed, round(now + pace * (target - today).days))
    complete_on = None
    if now >= needed:
        complete_on = next(p["date"] for p in burnup if p["ready"] >= needed)
    elif pace > 0:
        complete_on = (today + timedelta(days=math.ceil((needed - now) / pace - 1e-9))).isoformat()
    return {"pace_per_day": round(pace, 2), "span_days": span, "at_target": at_target, "complete_on": complete_on}


COLUMNS = [("id", "SITE"), ("kind", "KIND"), ("ready_text", "READY"), ("uptime", "UPTIME%"),
           ("meetings_joined", "MEETINGS"), ("why", "WHY NOT")]


def text_report(report: dict[str, Any]) -> str:
    out = io.StringIO()
    days = report["days_left"]
    out.write(f"Rollout as of {report['as_of']}: target {report['target']} "
              f"({f'{days} days left' if days >= 0 else f'passed {-days} days ago'})\n")
    for kind, numbers in report["summary"].items():
        target = numbers["target"] if numbers["target"] is not None else numbers["registered"]
        out.write(f"  {kind:<10} {numbers['ready']:>4}/{target} ready ({numbers['registered']} registered)\n")
    projection, travel = report["projection"], report["travel"]
    out.write(f"  pace {projection['pace_per_day']:g} sites/day; all {report['needed_total']} ready: "
              f"{projection['complete_on'] or 'not at this pace'}\n")
    unknown = travel["meetings_without_distance"]
    out.write(f"  travel avoided: {travel['meetings_joined']} meetings joined online = {travel['km']:g} km, "
              f"{travel['hours']:g} h at {travel['speed_kmh']:g} km/h"
              + (f" ({unknown} meetings at sites without a known distance not counted)" if unknown else "") + "\n\n")
    rows = [{**row, "ready_text": "yes" if row["ready"] else "NO",
             "uptime": row["office_uptime_pct"], "why": "; ".join(r["text"] for r in row["reasons"])}
            for row in report["sites"]]
    out.write(table(rows, COLUMNS))
    return out.getvalue()


# A spreadsheet runs a cell that starts with one of these as a formula (`=HYPERLINK(...)` in a site name
# would become a link, or worse): OWASP's list for CSV injection.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would read as a formula gets a leading `'`, so it shows as text.
    Numbers are left as they are (none here is negative)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_report(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["site", "name", "kind", "ready", "reasons", "last_seen", "last_selftest_ok",
                     "office_uptime_pct", "meetings_joined", "distance_km"])
    for row in report["sites"]:
        selftest = row["selftest"] or {}
        writer.writerow(map(spreadsheet_safe, [row["id"], row["name"], row["kind"], "yes" if row["ready"] else "no",
                         "; ".join(r["text"] for r in row["reasons"]), row["last_seen"] or "",
                         "" if not selftest else ("yes" if selftest["ok"] else "no"),
                         "" if row["office_uptime_pct"] is None else row["office_uptime_pct"],
                         row["meetings_joined"], "" if row["distance_km"] is None else row["distance_km"]]))
    return out.getvalue()


def cmd_rollout(ctx: Context, args: argparse.Namespace) -> int:

    criteria = parse_criteria(args)
    targets = parse_targets(args.targets)
    try:
        at = parse_rfc3339(args.as_of) if args.as_of else time.time()
    except ValueError:
        raise BadInput(f"--as-of {args.as_of!r} is not an RFC 3339 time (e.g. 2026-10-01T09:00:00+07:00)") from None
    today = datetime.fromtimestamp(at, criteria.tz).date()
    try:
        target = date.fromisoformat(args.target) if args.target else date(today.year, 10, 31)
    except ValueError:
        raise BadInput(f"--target {args.target!r} must be a date YYYY-MM-DD") from None
    if not ctx.home.database.exists():
        raise Refused(f"no console database in {ctx.home.root}: run `appliance-console init` and `collect` first")
    db = records.connect(ctx.home.database)
    try:
        report = build(load(db, ctx.store.db), at, target, targets, criteria)
    finally:
        db.close()
    outputs = {}
    if args.html:
        outputs[args.html] = render(report)
    if args.csv:
        outputs[args.csv] = csv_report(report)
    for path, text in outputs.items():
        try:
            atomic_write(path, text)
        except OSError as exc:
            raise Refused(f"cannot write {path}: {exc.strerror or exc}") from None
    if ctx.json:
        print_json(report)
    else:
        print(text_report(report), end="")
        for path in outputs:
            print(f"written: {path}")
    return 0
