"""How one site looks to the operator: its problems, its local time, its self-test and events in words.

Shared by `site`, `selftest` and `watch` (and the rollout report's self-test column), so the same
site reads the same everywhere. Pure: no broker, no database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.console.output import PROBLEM_HEALTH, health_summary, printable
from appliance.core.clock import parse_rfc3339
from appliance.core.selftest import CHECKS

DEFAULT_TZ = "Asia/Jakarta"  # the contract's `time.timezone` default (WIB)
_TZ_IN_PAYLOAD = re.compile(rb'"tz"\s*:\s*"([A-Za-z0-9_+./-]{1,64})"')

# Problem kinds, most urgent first: the order `watch` sorts by.
OFFLINE, HEALTH, SELFTEST, UPDATE = "offline", "health", "selftest", "update"
PROBLEM_KINDS = (OFFLINE, HEALTH, SELFTEST, UPDATE)
UPDATE_FAILURES = ("update.failed", "update.rolled_back")
VERDICT = {True: "ok", False: "FAILED", None: "not tested"}


@lru_cache(maxsize=64)
def zone(name: str | None) -> ZoneInfo:
    """The site's time zone; the contract's default for a missing or unknown name."""
    try:
        return ZoneInfo(name or DEFAULT_TZ)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TZ)


def tz_from_payload(payload: bytes) -> str | None:
    """The `tz` of a state or uptime message, without parsing a 9 KB uptime document as JSON."""
    match = _TZ_IN_PAYLOAD.search(payload)
    return match.group(1).decode("ascii") if match else None


def local_time(at: float, tz: str | None, seconds: bool = False) -> str:
    """`14:05 WIB`: a moment on the site's own clock face, with its zone's abbreviation."""
    moment = datetime.fromtimestamp(at, zone(tz))
    return f"{moment:%H:%M:%S}" if seconds else f"{moment:%H:%M} {moment.tzname()}"


def local_datetime(at: float, tz: str | None) -> str:
    moment = datetime.fromtimestamp(at, zone(tz))
    return f"{moment:%Y-%m-%d %H:%M:%S} {moment.tzname()}"


def when(text: Any) -> float | None:
    try:
        return parse_rfc3339(text)
    except (TypeError, ValueError):
        return None


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def failed_checks(selftest: Mapping[str, Any] | None) -> list[str]:
    checks = (selftest or {}).get("checks")
    if not isinstance(checks, dict):
        return []
    return [name for name, check in checks.items() if isinstance(check, dict) and check.get("ok") is False]


def check_rows(selftest: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every check of a self-test result, in the device's order: name, ok (True/False/None), verdict, detail."""
    checks = (selftest or {}).get("checks")
    checks = checks if isinstance(checks, dict) else {}
    names = [*CHECKS, *sorted(name for name in checks if name not in CHECKS)]
    rows = []
    for name in names:
        check = checks.get(name)
        if not isinstance(check, dict):
            if name not in checks:
                continue
            check = {}
        ok = check.get("ok") if isinstance(check.get("ok"), bool) else None
        rows.append({"check": name, "ok": ok, "result": VERDICT[ok], "detail": printable(str(check.get("detail") or ""))})
    return rows


def update_failure(event: Mapping[str, Any] | None) -> str | None:
    """`update 1.3.0 failed at download: ...` when the site's latest update event is a failure."""
    if not event or event.get("type") not in UPDATE_FAILURES:
        return None
    version = event.get("version") or "?"
    if event["type"] == "update.rolled_back":
        return printable(f"update {version} rolled back: {event.get('reason') or '?'}")
    return printable(f"update {version} failed at {event.get('step') or '?'}: {event.get('reason') or '?'}")


def problems(state: Mapping[str, Any] | None, selftest: Mapping[str, Any] | None,
             update_event: Mapping[str, Any] | None, last_seen: float | None = None,
             now: float | None = None) -> list[tuple[str, str]]:
    """(kind, text) for every problem of a site, most urgent first; empty for a site that is fine
    (and for one never seen: not installed yet is not a fault)."""
    found: list[tuple[str, str]] = []
    if not state:
        return found
    if state.get("online") is False or state.get("state") == "offline":
        seen = f", last seen {ago((now or time.time()) - last_seen)} ago" if last_seen else ""
        found.append((OFFLINE, f"offline{seen}"))
    else:
        summary = health_summary(state.get("health"))
        if summary not in ("ok", "-"):
            found.append((HEALTH, printable(summary)))
    failed = failed_checks(selftest)
    if selftest and selftest.get("ok") is False:
        found.append((SELFTEST, printable(f"self-test failed: {', '.join(failed) or '?'}")))
    failure = update_failure(update_event)
    if failure:
        found.append((UPDATE, failure))
    return found


def problem_rank(found: list[tuple[str, str]], seen: bool) -> int:
    """0 offline, 1 health, 2 self-test, 3 update, 4 fine, 5 never seen."""
    if found:
        return PROBLEM_KINDS.index(found[0][0])
    return len(PROBLEM_KINDS) if seen else len(PROBLEM_KINDS) + 1


def software_text(state: Mapping[str, Any] | None) -> str:
    """`1.4.1 (other slot 1.4.0); updating to 1.5.0: downloading 42%`."""
    software = (state or {}).get("software")
    if not isinstance(software, dict):
        return str((state or {}).get("version") or "-")
    text = f"{software.get('running') or '?'} (other slot {software.get('other_slot') or 'none'})"
    update = software.get("update")
    if isinstance(update, dict):
        progress = update.get("progress")
        text += (f"; updating to {update.get('version') or '?'}: {update.get('phase') or '?'}"
                 + (f" {progress}%" if isinstance(progress, (int, float)) and not isinstance(progress, bool) else ""))
    return printable(text)


def update_cell(state: Mapping[str, Any] | None) -> str:
    """The short form for a table: `1.5.0 downloading 42%`, blank when no update runs."""
    software = (state or {}).get("software")
    update = software.get("update") if isinstance(software, dict) else None
    if not isinstance(update, dict):
        return ""
    progress = update.get("progress")
    shown = f" {progress}%" if isinstance(progress, (int, float)) and not isinstance(progress, bool) else ""
    return printable(f"{update.get('version') or '?'} {update.get('phase') or '?'}{shown}")


def describe_event(event: Mapping[str, Any], floor_text: str | None = None) -> str:
    """Any device event in words (`floor_text`: the floor view's sentence for a floor event)."""
    kind = str(event.get("type") or "?")
    if floor_text:
        return floor_text
    result, reason = event.get("result"), event.get("reason")
    if kind == "button.press":
        text = {"joining": "button pressed: joining", "no_meeting": "button pressed, but no meeting was announced",
                "ignored": "button pressed (ignored)", "debounced": "button pressed twice (taken as one)"}.get(
            str(result), f"button pressed: {result}")
    elif kind == "button.hold":
        text = "button held: leaving the meeting" if result == "leaving" else f"button held ({result})"
    elif kind == "meeting.joined":
        text = f"joined {event.get('meeting_id') or 'the meeting'}" + (
            f" degraded (uplink {event.get('uplink')}, program {event.get('program')})" if event.get("degraded") else "")
    elif kind == "meeting.left":
        text = f"left {event.get('meeting_id') or 'the meeting'}" + (f" ({reason})" if reason else "")
    elif kind == "media.error":
        text = f"media error: {event.get('kind') or '?'} {event.get('status') or ''}: {event.get('detail') or ''}".rstrip(": ")
    elif kind == "selftest.started":
        text = "self-test started" + (" (interactive, at the site)" if event.get("interactive") else "")
    elif kind == "update.downloaded":
        text = f"update {event.get('version')} downloaded and verified"
    elif kind == "update.installed":
        text = f"update {event.get('version')} installed in the other slot"
    elif kind == "update.committed":
        text = f"update {event.get('version')} committed (previous {event.get('previous')})"
    elif kind in UPDATE_FAILURES:
        text = update_failure(event) or kind
    elif kind == "provision.rejected":
        found = event.get("problems")
        text = "site file rejected" + (f": {'; '.join(map(str, found[:3]))}" if isinstance(found, list) and found else "")
    else:
        extra = ", ".join(f"{key}={value}" for key, value in event.items()
                          if key not in ("v", "site", "at", "type", "receipt") and value not in (None, ""))
        text = kind + (f" ({extra})" if extra else "")
    return printable(text)


def health_problems(health: Any) -> dict[str, str]:
    return {part: str(value) for part, value in (health or {}).items() if value in PROBLEM_HEALTH} \
        if isinstance(health, dict) else {}
