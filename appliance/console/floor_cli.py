"""`appliance-console floor list|grant|revoke`: argument handling and output around `FloorDesk`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

from appliance.console import commands
from appliance.console.errors import BadInput
from appliance.console.floor import DEFAULT_EXPIRES, FloorPlan, MeetingFloor, SiteFloor, plan_grant, plan_revoke, waited_text
from appliance.console.floor_desk import FloorDesk, FloorOutcome
from appliance.console.output import print_json, printable, table
from appliance.core import floor as fl
from appliance.core.clock import rfc3339
from appliance.core.protocol import COMMAND_ID

# --- the CLI: floor list | grant | revoke -----------------------------------------------------------
ACK_COLUMNS = [("site", "SITE"), ("action", "ACTION"), ("result", "RESULT"), ("floor", "FLOOR"),
               ("latency_ms", "MS"), ("detail", "DETAIL")]
SETTLE_S = 0.5  # how long the CLI waits after the acks for the states to show where every site ended


def _open_desk(ctx: Any, args: argparse.Namespace) -> tuple[FloorDesk, float, float]:
    timeout = commands.parse_duration(args.timeout, "--timeout") if getattr(args, "timeout", None) else 10.0
    expires = commands.parse_duration(getattr(args, "expires", None) or DEFAULT_EXPIRES)
    if expires > commands.MAX_EXPIRY_S:
        raise BadInput(f"--expires must be at most {commands.MAX_EXPIRY_S // 3600} h (the devices' max_command_age_s)")
    meeting_id = getattr(args, "meeting_id", None)
    if meeting_id is not None and not COMMAND_ID.match(meeting_id):
        raise BadInput(f"--meeting-id {meeting_id!r}: expected 1-64 of [A-Za-z0-9_.:-]")
    return FloorDesk(ctx.fleet(), ctx.signing_key(), expires_s=expires), timeout, expires


def cmd_floor_list(ctx: Any, args: argparse.Namespace) -> int:
    ctx.require_init()
    names = {site.id: site.name for site in ctx.store.sites()}
    with ctx.fleet() as fleet:
        desk = FloorDesk(fleet, None)
        desk.load()
    now = time.time()
    meetings = desk.view.meetings()
    if args.meeting_id:
        meetings = [meeting for meeting in meetings if meeting.meeting_id == args.meeting_id]
    if ctx.json:
        print_json({"at": rfc3339(now), "meetings": [meeting.document(now, names) for meeting in meetings]})
        return 0
    if not meetings:
        print(f"no site has joined meeting {args.meeting_id}" if args.meeting_id else "no site is in a meeting")
        return 0
    for index, meeting in enumerate(meetings):
        print(_meeting_text(meeting, now, names), end="\n" if index < len(meetings) - 1 else "")
    return 0


def _meeting_text(meeting: MeetingFloor, now: float, names: Mapping[str, str]) -> str:
    def who(sites: tuple[SiteFloor, ...]) -> str:
        return ", ".join(f"{site.site} ({names[site.site]})" if site.site in names else site.site for site in sites)

    heading = f"{meeting.title or meeting.meeting_id} ({meeting.meeting_id}, {meeting.mode})"
    lines = [printable(heading) + "\n"]
    if meeting.mode == fl.OPEN:
        lines.append("open meeting: every joined site speaks unless muted\n")
    lines.append(printable(f"speaking: {who(meeting.speaking) or 'nobody'}") + "\n")
    if meeting.hands:
        rows = [{"n": index, "site": site.site, "name": names.get(site.site, ""),
                 "raised": time.strftime("%H:%M:%S", time.localtime(site.requested_at)) if site.requested_at else "?",
                 "waited": waited_text(site.waited_s(now))} for index, site in enumerate(meeting.hands, 1)]
        lines.append(f"raised hands, oldest first ({len(rows)}):\n")
        lines.append(table(rows, [("n", "#"), ("site", "SITE"), ("name", "NAME"), ("raised", "RAISED"),
                                  ("waited", "WAITING")]))
    else:
        lines.append("no raised hands\n")
    lines.append(f"{len(meeting.listening)} listening\n")
    return "".join(lines)


def record_outcome(store: Any, outcome: FloorOutcome, operator: str | None = None) -> None:
    """Every floor command sent, and its answers, in the console's command log (`operator`: a dashboard account)."""
    for item, tracker in zip(outcome.sent, outcome.trackers, strict=True):
        store.record_command(item.command, item.label, operator)
        store.record_results(item.command["id"], tracker.rows())


def outcome_document(outcome: FloorOutcome, expires: float) -> dict[str, Any]:
    """What `floor grant|revoke --json` prints (and the dashboard's API answers)."""
    return {"plan": outcome.plan.document(), "expires_s": expires, "summary": outcome.summary(),
            "commands": [item.command for item in outcome.sent], "results": outcome.rows()}


def _report(ctx: Any, outcome: FloorOutcome, expires: float) -> int:
    record_outcome(ctx.store, outcome)
    rows, counts = outcome.rows(), outcome.summary()
    if ctx.json:
        print_json(outcome_document(outcome, expires))
    else:
        for row in rows:
            row["detail"] = f"{row['error'].get('code')}: {row['error'].get('message')}" if row["error"] else ""
        print(table(rows, ACK_COLUMNS), end="")
        print(f"{counts['ok']} ok, {counts['refused']} refused, {counts['no_answer']} without answer "
              f"of {counts['targeted']}")
        if not outcome.ok:
            print("not every site accepted the floor command", file=sys.stderr)
    return 0 if outcome.ok else 1


def _intro(ctx: Any, plan: FloorPlan, expires: float) -> None:
    if ctx.json:
        return
    parts = [f"grant {', '.join(plan.grant)}"] if plan.grant else []
    if plan.revoke:
        parts.append(f"revoke {', '.join(plan.revoke)}")
    note = " (open meeting: nobody else is revoked)" if plan.mode == fl.OPEN and plan.grant else ""
    print(printable(f"meeting {plan.meeting_id}: {'; '.join(parts)}{note}; valid {expires:g} s"), flush=True)


def cmd_floor_grant(ctx: Any, args: argparse.Namespace) -> int:
    ctx.require_init()
    ctx.store.site(args.site)  # BadInput for an unknown site
    desk, timeout, expires = _open_desk(ctx, args)
    with desk.fleet:
        desk.load()
        plan = plan_grant(desk.view, args.site, meeting_id=args.meeting_id, keep_others=args.keep_others)
        _intro(ctx, plan, expires)
        outcome = desk.execute(plan, timeout=timeout, settle_s=SETTLE_S)
    return _report(ctx, outcome, expires)


def cmd_floor_revoke(ctx: Any, args: argparse.Namespace) -> int:
    ctx.require_init()
    if bool(args.site) == bool(args.all):
        raise BadInput("say whose floor to revoke: SITE, or --all (every site speaking or with a hand up)")
    if args.site:
        ctx.store.site(args.site)
    desk, timeout, expires = _open_desk(ctx, args)
    with desk.fleet:
        desk.load()
        plan = plan_revoke(desk.view, args.site or None, meeting_id=args.meeting_id)
        if plan.empty:
            if not ctx.json:
                print(printable(f"meeting {plan.meeting_id}: nobody speaks or has a hand up; nothing sent"))
            else:
                print_json({"plan": plan.document(), "expires_s": expires, "summary": {
                    "targeted": 0, "ok": 0, "refused": 0, "no_answer": 0}, "commands": [], "results": []})
            return 0
        _intro(ctx, plan, expires)
        outcome = desk.execute(plan, timeout=timeout, settle_s=SETTLE_S)
    return _report(ctx, outcome, expires)
