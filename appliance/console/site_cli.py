"""`appliance-console site SITE`: one site whole, from the broker's retained messages and what `collect` stored.

Retained on the broker (fetched now, the freshest): state (with `software`), last self-test, uptime
ledger. Stored by `collect` (console.db): the same three as a fallback, telemetry (not retained: only
the database has it), recent events and when the site was last seen. Exit 0 when shown, 1 when the
broker could not be reached (what the database has is still shown), 2 for an unknown site.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import time
from typing import Any

from appliance.console import floor as floors
from appliance.console import sitelook
from appliance.console.context import Context
from appliance.console.errors import Refused
from appliance.console.fleet import decode, parse_topic
from appliance.console.output import print_json, printable, table
from appliance.core.clock import rfc3339
from appliance.core.protocol import site_topic

UPTIME_DAYS_SHOWN = 7
RETAINED = ("state", "selftest", "uptime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", metavar="SITE")
    parser.add_argument("--events", type=int, default=10, metavar="N", help="how many recent events (default 10)")


def _stored(db: sqlite3.Connection, site: str, events: int) -> dict[str, Any]:
    """What `collect` (and `selftest`) stored for `site`."""
    def one(sql: str) -> sqlite3.Row | None:
        return db.execute(sql, (site,)).fetchone()

    found: dict[str, Any] = {}
    row = one("SELECT payload FROM site_state WHERE site = ?")
    found["state"] = json.loads(row[0]) if row else None
    row = one("SELECT payload FROM selftests WHERE site = ? ORDER BY at DESC LIMIT 1")
    found["selftest"] = json.loads(row[0]) if row else None
    row = one("SELECT at, state, uptime_s, cpu_temp_c, throttled, load1, mem_available_mb, disk_free_mb, boot_id, "
              "mqtt_reconnects, system_uptime_s FROM telemetry WHERE site = ? ORDER BY at DESC LIMIT 1")
    found["telemetry"] = None if row is None else {
        **{key: row[key] for key in row.keys() if key != "throttled"},
        "at": rfc3339(row["at"]), "throttled": json.loads(row["throttled"]) if row["throttled"] else None}
    days = db.execute("SELECT date, up_s, connected_s, in_meeting_s, meetings_joined, boots FROM uptime_days "
                      "WHERE site = ? ORDER BY date", (site,)).fetchall()
    found["uptime"] = {"tz": None, "days": [dict(day) for day in days]} if days else None
    found["events"] = [json.loads(r[0]) for r in db.execute(
        "SELECT payload FROM events WHERE site = ? ORDER BY at DESC LIMIT ?", (site, max(0, events)))]
    row = one("SELECT at FROM last_seen WHERE site = ?")
    found["last_seen"] = row[0] if row else None
    return found


def _retained(ctx: Context, site: str) -> dict[str, Any]:
    """The site's retained state, self-test and uptime on the broker now (Refused when unreachable)."""
    found: dict[str, Any] = {}
    with ctx.fleet(timeout=5.0) as fleet:
        fleet.subscribe([site_topic(fleet.prefix, site, leaf) for leaf in RETAINED])
        fleet.sync()
        while not fleet.messages.empty():
            topic, payload, _, _ = fleet.messages.get_nowait()
            parsed = parse_topic(topic, fleet.prefix)
            if parsed and parsed[0] == site:
                found[parsed[1]] = decode(payload)
    return found


def _newer(first: dict[str, Any] | None, second: dict[str, Any] | None) -> dict[str, Any] | None:
    if not first or not second:
        return first or second
    return first if (sitelook.when(first.get("at")) or 0) >= (sitelook.when(second.get("at")) or 0) else second


def gather(ctx: Context, site_id: str, events: int = 10,
           live: dict[str, Any] | None = None) -> tuple[dict[str, Any], str | None]:
    """The site's document (as `--json` prints it) and, if the broker was unreachable, why.
    `live`: the retained state, selftest and uptime already at hand (the dashboard's subscription);
    without it they are fetched from the broker now."""
    site = ctx.store.site(site_id)  # BadInput (exit 2) for an unknown site
    stored = _stored(ctx.store.db, site.id, events)
    problem = None
    if live is None:
        try:
            live = _retained(ctx, site.id)
        except Refused as exc:
            live, problem = {}, exc.message
    state = live.get("state") or stored["state"]  # the retained state is the current one
    selftest = _newer(live.get("selftest"), stored["selftest"])
    uptime = live.get("uptime") if isinstance((live.get("uptime") or {}).get("days"), list) else stored["uptime"]
    tz = (state or {}).get("tz") or (uptime or {}).get("tz") or sitelook.DEFAULT_TZ
    now = time.time()
    seen = now if (state or {}).get("online") else stored["last_seen"]
    update_events = [event for event in stored["events"] if str(event.get("type", "")).startswith("update.")]
    found = sitelook.problems(state, selftest, update_events[0] if update_events else None, seen, now)
    view = floors.FloorView.from_states({site.id: state} if state else {})
    document = {
        "site": site.as_dict(), "tz": tz, "local_time": sitelook.local_datetime(now, tz),
        "sources": {"broker": problem is None, "database": any(stored[key] for key in ("state", "telemetry", "events"))},
        "online": (state or {}).get("online"), "state": state, "last_seen": rfc3339(seen) if seen else None,
        "problems": [text for _, text in found],
        "software": (state or {}).get("software"),
        "selftest": None if selftest is None else {**selftest, "rows": sitelook.check_rows(selftest)},
        "telemetry": stored["telemetry"], "uptime": uptime,
        "events": [{"at": event.get("at"), "type": event.get("type"),
                    "text": sitelook.describe_event(event, floors.describe_event(site.id, event, view)), "event": event}
                   for event in stored["events"]],
    }
    return document, problem


def _hours(seconds: Any) -> str:
    return f"{seconds / 3600:.1f} h" if isinstance(seconds, (int, float)) else "-"


def _throttling(flags: Any) -> str:
    if not isinstance(flags, dict):
        return "unknown (not a Raspberry Pi, or not exposed)"
    now = [name.replace("_", "-") for name, on in flags.items() if on is True and not name.endswith("_occurred")]
    before = [name[:-len("_occurred")].replace("_", "-") for name, on in flags.items()
              if on is True and name.endswith("_occurred")]
    text = f"NOW: {', '.join(now)}" if now else "none now"
    return text + (f"; since boot: {', '.join(before)}" if before else "") + (f" ({flags['raw']})" if flags.get("raw") else "")


def _at(text: Any, tz: str, now: float) -> str:
    at = sitelook.when(text)
    return f"{sitelook.local_datetime(at, tz)} ({sitelook.ago(now - at)} ago)" if at is not None else "-"


def render(document: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    out = io.StringIO()
    site, state, tz = document["site"], document["state"] or {}, document["tz"]
    distance = f", {site['distance_km']:g} km" if site.get("distance_km") is not None else ""
    out.write(printable(f"{site['id']}: {site['name']} ({site['kind']}{distance})") + "\n")
    meeting = state.get("meeting") if isinstance(state.get("meeting"), dict) else None
    floor = floors.floor_cell(state.get("floor"), now)
    fields = [
        ("state", (state.get("state") or "never seen")
         + (f" since {_at(state['since'], tz, now)}" if state.get("since") else "")
         + (f", meeting {meeting.get('meeting_id')} ({meeting.get('title')})" if meeting else "")
         + (f", floor {floor}" if floor else "")),
        ("online", {True: "yes", False: "no"}.get(state.get("online"), "never seen")
         + (f", last seen {_at(document['last_seen'], tz, now)}" if document["last_seen"] and not state.get("online") else "")),
        ("local time", f"{document['local_time']} ({tz})"),
        ("problems", "; ".join(document["problems"]) or "none"),
        ("health", ", ".join(f"{part} {value}" for part, value in (state.get("health") or {}).items()) or "-"),
        ("software", sitelook.software_text(state)),
        ("version", f"{state.get('version') or '-'}, boot {state.get('boot_id') or '-'}"),
    ]
    for name, value in fields:
        out.write(printable(f"{name + ':':<12}{value}") + "\n")

    selftest = document["selftest"]
    out.write("\nself-test: ")
    if selftest is None:
        out.write("none yet (run `appliance-console selftest --sites " + site["id"] + "`)\n")
    else:
        out.write(f"{'PASSED' if selftest.get('ok') else 'FAILED'} at {_at(selftest.get('at'), tz, now)}\n")
        out.write(_indent(table(selftest["rows"], [("check", "CHECK"), ("result", "RESULT"), ("detail", "DETAIL")])))

    telemetry = document["telemetry"]
    out.write("\ntelemetry: ")
    if telemetry is None:
        out.write("none stored (telemetry is not retained: run `appliance-console collect`)\n")
    else:
        out.write(f"at {_at(telemetry['at'], tz, now)}\n")
        mem, disk = telemetry.get("mem_available_mb"), telemetry.get("disk_free_mb")
        temp = telemetry.get("cpu_temp_c")
        rows = [("CPU temperature", f"{temp:.1f} °C" if temp is not None else "unknown"),
                ("load (1 min)", f"{telemetry['load1']:g}" if telemetry.get("load1") is not None else "unknown"),
                ("memory free", f"{mem:,.0f} MB" if mem is not None else "unknown"),
                ("disk free", f"{disk:,.0f} MB" if disk is not None else "unknown"),
                ("throttling", _throttling(telemetry.get("throttled"))),
                ("reconnects", f"{telemetry['mqtt_reconnects']:.0f} (since the daemon started)"
                 if telemetry.get("mqtt_reconnects") is not None else "unknown"),
                ("up", f"system {_days(telemetry.get('system_uptime_s'))}, daemon {_days(telemetry.get('uptime_s'))}")]
        for name, value in rows:
            out.write(printable(f"  {name + ':':<17}{value}") + "\n")

    uptime = document["uptime"]
    out.write("\nuptime: ")
    if not uptime or not uptime.get("days"):
        out.write("no ledger yet\n")
    else:
        days = [day for day in uptime["days"] if isinstance(day, dict)]
        out.write(f"{len(days)} days in the ledger (days in {uptime.get('tz') or tz}); "
                  f"the last {min(UPTIME_DAYS_SHOWN, len(days))}:\n")
        rows = [{"date": day.get("date"), "up": _hours(day.get("up_s")), "connected": _hours(day.get("connected_s")),
                 "meeting": _hours(day.get("in_meeting_s")), "joined": day.get("meetings_joined"), "boots": day.get("boots")}
                for day in days[-UPTIME_DAYS_SHOWN:]]
        out.write(_indent(table(rows, [("date", "DATE"), ("up", "UP"), ("connected", "CONNECTED"), ("meeting", "IN MEETING"),
                                       ("joined", "MEETINGS"), ("boots", "BOOTS")])))

    out.write("\nrecent events: ")
    if not document["events"]:
        out.write("none stored (events are not retained: run `appliance-console collect`)\n")
    else:
        out.write("newest first\n")
        rows = [{"at": sitelook.local_datetime(at, tz) if (at := sitelook.when(event["at"])) is not None else "-",
                 "type": event["type"], "text": event["text"]} for event in document["events"]]
        out.write(_indent(table(rows, [("at", "WHEN"), ("type", "EVENT"), ("text", "WHAT")])))
    return out.getvalue()


def _days(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "unknown"
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} h"


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def cmd_site(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    document, problem = gather(ctx, args.site, args.events)
    if ctx.json:
        print_json({**document, "broker_problem": problem})
    else:
        print(render(document), end="")
    if problem:
        print(f"appliance-console: {problem}; shown: what the console's database has", file=sys.stderr)
        return 1
    return 0
