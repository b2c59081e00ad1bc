"""Steering the fleet: signed commands with a live table of answers, status and watch."""

from __future__ import annotations

import argparse
import queue
import sys
import time
from typing import Any

from appliance.console import commands
from appliance.console import floor as floors
from appliance.console.context import Context
from appliance.console.errors import BadInput, InvalidFields
from appliance.console.fleet import Tracker, send_and_collect
from appliance.console.output import Live, health_summary, print_json, table
from appliance.core.clock import rfc3339
from appliance.core.floor import FLOOR_MODES, MODERATED
from appliance.core.protocol import COMMAND_ID, MAX_TITLE_CHARS, site_topic
from appliance.core.urls import URL_SCHEMES

ACK_COLUMNS = [("site", "SITE"), ("result", "RESULT"), ("state", "STATE"), ("latency_ms", "MS"), ("detail", "DETAIL")]
STATUS_COLUMNS = [("site", "SITE"), ("kind", "KIND"), ("online", "ONLINE"), ("state", "STATE"),
                  ("meeting", "MEETING"), ("floor_text", "FLOOR"), ("health", "HEALTH"), ("version", "VERSION"),
                  ("last_seen", "LAST SEEN")]
LIVE_ROWS = 40  # larger fleets get a one-line live summary instead of a table that scrolls away


def _ack_table(tracker: Tracker, final: bool) -> str:
    rows = tracker.rows()
    for row in rows:
        row["detail"] = f"{row['error'].get('code')}: {row['error'].get('message')}" if row["error"] else ""
        if row["result"] in ("no answer", "never seen", "offline") and not final:
            row["result"] = "waiting"
    counts = tracker.summary()
    line = (f"{counts['ok']} ok, {counts['refused']} refused, {counts['no_answer']} "
            f"{'without answer' if final else 'waiting'} of {counts['targeted']}\n")
    if not final and len(rows) > LIVE_ROWS:
        return line
    return table(rows, ACK_COLUMNS) + line


def run_command(ctx: Context, command_type: str, body: dict[str, Any], target: commands.Target,
                args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    timeout = commands.parse_duration(args.timeout, "--timeout")
    signed = commands.build(command_type, body, target, commands.parse_duration(args.expires), ctx.signing_key())
    live = Live() if not ctx.json else Live(stream=_NullTty())
    with ctx.fleet() as fleet:
        if not ctx.json:
            print(f"{command_type} {signed['id']} -> {target.label} ({len(target.sites)} site"
                  f"{'s' if len(target.sites) != 1 else ''})", flush=True)
        tracker = send_and_collect(fleet, signed, target.topics, [site.id for site in target.sites], timeout,
                                   progress=lambda t: live.show(_ack_table(t, final=False)))
    ctx.store.record_command(signed, target.label)
    rows = tracker.rows()
    ctx.store.record_results(signed["id"], rows)
    counts = tracker.summary()
    failed = counts["ok"] < counts["targeted"]
    if ctx.json:
        print_json({"command": signed, "target": target.label, "summary": counts, "results": rows,
                    "unexpected": sorted(tracker.unexpected)})
    else:
        live.clear()
        print(_ack_table(tracker, final=True), end="")
        if failed:
            print(f"not every site accepted {signed['id']}", file=sys.stderr)
    return (1 if failed else 0), signed


class _NullTty:
    def isatty(self) -> bool:
        return False


def _target(ctx: Context, args: argparse.Namespace) -> commands.Target:
    return commands.resolve_target(ctx.store, args.sites, args.group, ctx.topic_prefix)


def meeting_start_body(store: Any, *, title: str | None, program_url: str | None, ingest_url: str | None,
                       meeting_id: str | None = None, auto_join: bool = False, floor: str = MODERATED) -> dict[str, Any]:
    """The body of a `meeting.start`, checked as the devices would; InvalidFields naming every bad field
    (by its CLI option) otherwise. Shared by `meeting start` and the dashboard's form."""
    errors: dict[str, str] = {}
    title = (title or "").strip()
    if not title or len(title) > MAX_TITLE_CHARS:
        errors["title"] = f"--title must be 1-{MAX_TITLE_CHARS} characters"
    known_hosts = store.get_meta("media_hosts") or []
    for name, option, url in (("program_url", "--program-url", program_url), ("ingest_url", "--ingest-url", ingest_url)):
        if not url:
            errors[name] = f"{option} is required"
            continue
        try:
            commands.check_media_url(option, url.replace("{site}", "site"), known_hosts, URL_SCHEMES[name])
        except BadInput as exc:
            errors[name] = exc.message
    if floor not in FLOOR_MODES:
        errors["floor"] = f"--floor {floor!r} must be one of {', '.join(FLOOR_MODES)}"
    meeting_id = meeting_id or (commands.meeting_id_from(title) if title else None)
    if meeting_id is not None and not COMMAND_ID.match(meeting_id):
        errors["meeting_id"] = f"--meeting-id {meeting_id!r}: expected 1-64 of [A-Za-z0-9_.:-]"
    if errors:
        raise InvalidFields(errors)
    return {"meeting_id": meeting_id, "title": title, "program_url": program_url, "ingest_url": ingest_url,
            "auto_join": bool(auto_join), "floor": floor}


def meeting_end_target(store: Any, meeting_id: str | None, sites: str | None, group: str | None,
                       prefix: str) -> tuple[str, commands.Target]:
    """Which meeting to end (default: the last one started here) and on which sites (default: the same)."""
    last = store.last_meeting()
    meeting_id = meeting_id or (last["body"]["meeting_id"] if last else None)
    if not meeting_id:
        raise BadInput("no meeting was started from this console: give --meeting-id")
    if not COMMAND_ID.match(meeting_id):
        raise BadInput(f"--meeting-id {meeting_id!r}: expected 1-64 of [A-Za-z0-9_.:-]")
    if not sites and not group:
        label = store.meeting_target(meeting_id)
        if label is None:
            raise BadInput(f"meeting {meeting_id!r} was not started from this console: give --sites or --group")
        return meeting_id, commands.target_from_label(store, label, prefix)
    return meeting_id, commands.resolve_target(store, sites, group, prefix)


def cmd_meeting_start(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    body = meeting_start_body(ctx.store, title=args.title, program_url=args.program_url, ingest_url=args.ingest_url,
                              meeting_id=args.meeting_id, auto_join=args.auto_join, floor=args.floor)
    code, _ = run_command(ctx, "meeting.start", body, _target(ctx, args), args)
    return code


def cmd_meeting_end(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    meeting_id, target = meeting_end_target(ctx.store, args.meeting_id, args.sites, args.group, ctx.topic_prefix)
    code, _ = run_command(ctx, "meeting.end", {"meeting_id": meeting_id}, target, args)
    return code


def cmd_simple(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    code, _ = run_command(ctx, args.command_type, {}, _target(ctx, args), args)
    return code


# --- status (watch builds on it: watch.py) -----------------------------------------------------------------------------
def _status_row(site_id: str, kind: str | None, state: dict[str, Any] | None, last_seen: str | None) -> dict[str, Any]:
    state = state or {}
    meeting = state.get("meeting") if isinstance(state.get("meeting"), dict) else None
    return {
        "site": site_id, "kind": kind or "(unknown)", "online": state.get("online"),
        "state": state.get("state") or "never seen", "meeting": meeting.get("meeting_id") if meeting else None,
        "meeting_title": meeting.get("title") if meeting else None,
        "floor": state.get("floor") if isinstance(state.get("floor"), dict) else None,
        "health": health_summary(state.get("health")) if state.get("online") else None,
        "health_detail": state.get("health"), "version": state.get("version"), "last_seen": last_seen,
    }


class StatusBoard:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.kinds = {site.id: site.kind for site in ctx.store.sites()}
        self.floor = floors.FloorView(ctx.topic_prefix)
        self.states = self.floor.states  # the retained states, kept by the floor view
        self.seen = ctx.store.last_seen()  # site -> epoch seconds; RFC 3339 only in the rows shown
        self.prefix = ctx.topic_prefix

    def feed(self, topic: str, payload: bytes) -> str | None:
        site = self.floor.feed(topic, payload)  # the floor view keeps every retained state it reads
        if site is not None and (self.states.get(site) or {}).get("online"):
            self.seen[site] = time.time()
        return site

    def row(self, site_id: str) -> dict[str, Any]:
        seen = self.seen.get(site_id)
        return _status_row(site_id, self.kinds.get(site_id), self.states.get(site_id),
                           rfc3339(seen) if seen is not None else None)

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(site_id) for site_id in sorted(set(self.kinds) | set(self.states))]

    def text(self) -> str:
        rows, now = self.rows(), time.time()
        for row in rows:
            row["floor_text"] = floors.floor_cell(row["floor"], now)
        online = sum(1 for row in rows if row["online"])
        meeting = sum(1 for row in rows if row["state"] == "in_meeting")
        return (table(rows, STATUS_COLUMNS) + f"{len(rows)} sites, {online} online, {meeting} in a meeting\n"
                + floors.hands_line(self.floor, now))

    def save(self) -> None:
        self.ctx.store.mark_seen({site: at for site, at in self.seen.items() if site in self.states})


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    board = StatusBoard(ctx)
    with ctx.fleet() as fleet:
        fleet.subscribe([site_topic(fleet.prefix, "+", "state")])
        fleet.sync()
        while True:
            try:
                topic, payload, _, _ = fleet.messages.get_nowait()
            except queue.Empty:
                break
            board.feed(topic, payload)
    board.save()
    if ctx.json:
        print_json(board.rows())
    else:
        print(board.text(), end="")
    return 0
