"""`appliance-console selftest`: run the sites' self-test from the centre and wait for every result.

The signed `selftest` command goes out like any other (acks in a live counter); then the console waits
on each site's retained `selftest` topic, subscribed to before the command was sent, for the result of
*this* run: the first report whose `at` is not earlier than the site's ack of this command (both times
by the site's own clock, so a console clock that is off does not matter, and the retained result of an
earlier run never counts). An unattended run takes ~10-20 s on a real site (the audio check plays
clicks), at most ~35 s (the probes' own 30 s limit). Every result is stored like `collect` stores it,
so the rollout report has it even when `collect` is not running.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.console import commands, records, sitelook
from appliance.console.context import Context
from appliance.console.fleet import Tracker, decode, parse_topic, send_and_collect
from appliance.console.output import Live, print_json, table
from appliance.core.protocol import site_topic

DEFAULT_TIMEOUT = "60"
COLUMNS = [("site", "SITE"), ("check", "CHECK"), ("result", "RESULT"), ("detail", "DETAIL")]
ORDER = {"passed": 0, "failed": 1, "refused": 2, "no result": 3}


@dataclass
class SelftestWait:
    """The acks (a Tracker) and the self-test reports of the targeted sites; who is done."""

    expected: list[str]
    prefix: str
    tracker: Tracker | None = None
    reports: dict[str, list[tuple[dict[str, Any], bytes]]] = field(default_factory=dict)

    def observe(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = parse_topic(topic, self.prefix)
        if parsed is None or parsed[1] != "selftest" or parsed[0] not in self.expected:
            return
        document = decode(payload)
        if document is not None and isinstance(document.get("checks"), dict):
            self.reports.setdefault(parsed[0], []).append((document, bytes(payload)))

    def result(self, site: str) -> tuple[dict[str, Any], bytes] | None:
        """This run's report for `site`: the first one not older than the site's ok ack."""
        answer = (self.tracker.answers if self.tracker else {}).get(site)
        acked = sitelook.when(answer.get("at")) if answer and answer.get("ok") else None
        if acked is None:
            return None
        for document, payload in self.reports.get(site, ()):
            at = sitelook.when(document.get("at"))
            if at is not None and at >= acked:
                return document, payload
        return None

    def waiting(self) -> list[str]:
        """Sites still to hear from: no ack yet, or an ok ack and no result yet."""
        answers = self.tracker.answers if self.tracker else {}
        return [site for site in self.expected
                if site not in answers or (answers[site].get("ok") and self.result(site) is None)]

    def rows(self) -> list[dict[str, Any]]:
        acks = {row["site"]: row for row in self.tracker.rows()} if self.tracker else {}
        rows = []
        for site in self.expected:
            ack = acks.get(site) or {"result": "no answer", "error": None}
            found = self.result(site)
            row: dict[str, Any] = {"site": site, "ack": ack["result"], "ok": None, "at": None, "checks": [],
                                   "error": ack.get("error")}
            if found is not None:
                document = found[0]
                row.update(ok=document.get("ok") is True, at=document.get("at"), checks=sitelook.check_rows(document),
                           result="passed" if document.get("ok") is True else "failed",
                           failed=sitelook.failed_checks(document))
            elif ack["result"] == "refused":
                row["result"] = "refused"
            else:
                row["result"] = "no result"
                row["why"] = ("acknowledged, but no result arrived in time" if ack["result"] == "ok"
                              else f"{ack['result']}: the command was not acknowledged")
            rows.append(row)
        rows.sort(key=lambda row: ORDER.get(row["result"], 9))  # problems last, next to the summary
        return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"targeted": len(rows), "passed": 0, "failed": 0, "refused": 0, "no_result": 0}
    for row in rows:
        counts[row["result"].replace(" ", "_")] += 1
    return counts


def text(rows: list[dict[str, Any]], tz_of: dict[str, str]) -> str:
    lines = []
    for row in rows:
        if row["result"] in ("passed", "failed"):
            at = sitelook.when(row["at"])
            stamp = sitelook.local_datetime(at, tz_of.get(row["site"])) if at is not None else row["at"]
            failed = f"; failed: {', '.join(row['failed'])}" if row.get("failed") else ""
            lines.append({"site": row["site"], "check": "(all)", "result": "PASSED" if row["ok"] else "FAILED",
                          "detail": f"at {stamp}{failed}"})
            lines += [{"site": row["site"], **check} for check in row["checks"]]
        elif row["result"] == "refused":
            error = row["error"] or {}
            lines.append({"site": row["site"], "check": "-", "result": "refused",
                          "detail": f"{error.get('code')}: {error.get('message')}"})
        else:
            lines.append({"site": row["site"], "check": "-", "result": "no result", "detail": row["why"]})
    counts = summary(rows)
    return (table(lines, COLUMNS) + f"{counts['passed']} passed, {counts['failed']} failed, {counts['refused']} refused, "
            f"{counts['no_result']} without result of {counts['targeted']}\n")


def cmd_selftest(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    timeout = commands.parse_duration(args.timeout, "--timeout")
    target = commands.resolve_target(ctx.store, args.sites, args.group, ctx.topic_prefix)
    signed = commands.build("selftest", {}, target, commands.parse_duration(args.expires), ctx.signing_key())
    ids = [site.id for site in target.sites]
    wait = SelftestWait(ids, ctx.topic_prefix)
    live = Live() if not ctx.json else Live(stream=_NullTty())

    def progress(tracker: Tracker | None = None) -> None:
        if tracker is not None:
            wait.tracker = tracker
        waiting = len(wait.waiting()) if wait.tracker else len(ids)
        live.show(f"{len(ids) - waiting} of {len(ids)} done, waiting for {waiting} "
                  f"(acks and results; up to {timeout:g} s)\n")

    with ctx.fleet() as fleet:
        # Subscribed before the command goes out, so no result can slip past; the retained copies
        # that come now are earlier runs and never match this one (see SelftestWait.result).
        fleet.subscribe([site_topic(fleet.prefix, "+", "selftest")])
        if not ctx.json:
            print(f"selftest {signed['id']} -> {target.label} ({len(ids)} site{'s' if len(ids) != 1 else ''}); "
                  "an unattended self-test takes 10-20 s", flush=True)
        started = time.monotonic()

        observe = wait.observe
        wait.tracker = send_and_collect(fleet, signed, target.topics, ids, timeout, progress=progress, observe=observe)
        deadline = started + timeout
        shown = 0.0
        while wait.waiting() and time.monotonic() < deadline:
            try:
                topic, payload, retained, _ = fleet.messages.get(timeout=min(0.2, max(0.01, deadline - time.monotonic())))
                observe(topic, payload, retained)
            except queue.Empty:
                pass
            if time.monotonic() - shown >= 0.2:
                progress()
                shown = time.monotonic()
    rows = wait.rows()
    tz_of = {site: str(state["tz"]) for site, state in wait.tracker.states.items() if isinstance(state.get("tz"), str)}
    _store(ctx, signed, target.label, wait, rows)
    counts = summary(rows)
    failed = counts["passed"] < counts["targeted"]
    if ctx.json:
        print_json({"command": signed, "target": target.label, "summary": counts, "results": rows})
    else:
        live.clear()
        print(text(rows, tz_of), end="")
        if failed:
            print("not every site passed its self-test", file=sys.stderr)
    return 1 if failed else 0


def _store(ctx: Context, signed: dict[str, Any], label: str, wait: SelftestWait, rows: list[dict[str, Any]]) -> None:
    """The command and its results, and each site's report into `selftests` as `collect` would (idempotent)."""
    ctx.store.record_command(signed, label)
    ctx.store.record_results(signed["id"], json.loads(json.dumps(rows)))
    received = time.time()
    with ctx.store.transaction() as db:
        for site in wait.expected:
            found = wait.result(site)
            if found is not None:
                records.ingest(db, site_topic(ctx.topic_prefix, site, "selftest"), found[1], received, ctx.topic_prefix)


class _NullTty:
    def isatty(self) -> bool:
        return False
