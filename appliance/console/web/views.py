"""From what the hub knows to what a page shows: rows, meeting panels, acks; rendered with Jinja2.

The same templates render the first page and every live update (the server sends the changed
fragment's HTML over SSE; the page swaps it in), so a row looks the same before and after a change.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from appliance.console import sitelook
from appliance.console.output import printable
from appliance.console.web.hub import LiveHub
from appliance.console.web.i18n import translator
from appliance.core import floor as fl

TEMPLATES = Path(__file__).parent / "templates"
UPLINK_PROBLEMS = ("retrying", "failed")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["printable"] = lambda value: printable(str(value)) if value is not None else ""
    return env


def ago_text(t: Any, seconds: float) -> str:
    return t("ago", t=sitelook.ago(seconds))


def hours_text(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}"


def dot_class(row: dict[str, Any]) -> str:
    """The map dot's colour class for a board row."""
    if not row["online"]:
        return "never" if row["state"] == "never seen" else "off"
    return "problem" if row["problems"] else ("meeting" if row["state"] == "in_meeting" else "ok")


class Views:
    def __init__(self, hub: LiveHub, sites: dict[str, dict[str, Any]]) -> None:
        self.hub = hub
        self.sites = sites  # id -> {"name", "kind", "lat", "lon"}: the registered sites
        self.env = environment()

    def render(self, template: str, lang: str, **context: Any) -> str:
        return self.env.get_template(template).render(t=translator(lang), lang=lang, **context)

    # --- the fleet --------------------------------------------------------------------------------
    def uptime_today(self, site: str, tz: str, now: float) -> float | None:
        document = self.hub.uptime.get(site) or {}
        days = document.get("days") if isinstance(document.get("days"), list) else []
        if not days or not isinstance(days[-1], dict):
            return None
        today = datetime.fromtimestamp(now, sitelook.zone(document.get("tz") or tz)).date().isoformat()
        value = days[-1].get("up_s") if days[-1].get("date") == today else 0.0
        return float(value) if isinstance(value, (int, float)) else None

    def row(self, site: str, now: float) -> dict[str, Any]:
        """One site's row (call with the hub's lock held)."""
        board = self.hub.board
        row = board.row(site, now)
        seen = board.seen.get(site)
        state = board.states.get(site) or {}
        uptime = self.uptime_today(site, row["tz"], now)
        floor = row["floor"] or {}
        registered = self.sites.get(site, {})
        return {
            "site": site, "name": registered.get("name") or site, "kind": row["kind"],
            "lat": registered.get("lat"), "lon": registered.get("lon"),
            "online": bool(row["online"]), "state": row["state"], "meeting": row["meeting"],
            "floor": floor.get("status") if isinstance(floor, dict) else None,
            "health": row["health"] or "-", "problems": row["problems"], "problem_kinds": row["problem_kinds"],
            "rank": row["rank"], "version": row["version"] or "-", "seen": seen, "uptime_s": uptime,
            "uplink": (state.get("health") or {}).get("uplink") if isinstance(state.get("health"), dict) else None,
            "local_time": row["local_time"], "dot": dot_class(row),
        }

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self.hub.lock:
            ids = set(self.hub.board.kinds) | set(self.hub.board.states)
            rows = [self.row(site, now) for site in ids]
        rows.sort(key=lambda row: (row["rank"], row["site"]))
        return rows

    def row_html(self, row: dict[str, Any], lang: str, now: float) -> str:
        return self.render("_row.html", lang, row=row, now=now, ago=ago_text, hours=hours_text)

    def counts(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        return {"n": len(rows), "online": sum(1 for r in rows if r["online"]),
                "meeting": sum(1 for r in rows if r["state"] == "in_meeting")}

    # --- meetings ---------------------------------------------------------------------------------
    def meeting_ids(self) -> list[str]:
        """Every meeting some online site is in or was invited to, the one started last from here first."""
        with self.hub.lock:
            found = {}
            for state in self.hub.board.states.values():
                meeting = state.get("meeting") if isinstance(state.get("meeting"), dict) else None
                if state.get("online") and meeting and isinstance(meeting.get("meeting_id"), str):
                    found.setdefault(meeting["meeting_id"], meeting.get("title"))
            last = self.hub.last_started
        ids = sorted(found)
        if last in found:
            ids.remove(last)
            ids.insert(0, last)
        return ids

    def meeting(self, meeting_id: str, now: float) -> dict[str, Any]:
        with self.hub.lock:
            board = self.hub.board
            grid, title = [], None
            for site, state in sorted(board.states.items()):
                meeting = state.get("meeting") if isinstance(state.get("meeting"), dict) else None
                if not meeting or meeting.get("meeting_id") != meeting_id or not state.get("online"):
                    continue
                title = title or meeting.get("title")
                health = state.get("health") if isinstance(state.get("health"), dict) else {}
                floor = state.get("floor") if isinstance(state.get("floor"), dict) else {}
                grid.append({"site": site, "name": self.sites.get(site, {}).get("name") or site,
                             "state": state.get("state"), "floor": floor.get("status"), "uplink": health.get("uplink"),
                             "uplink_bad": health.get("uplink") in UPLINK_PROBLEMS})
            floor_view = board.floor.meeting(meeting_id)
            hands = [{"site": s.site, "name": self.sites.get(s.site, {}).get("name") or s.site,
                      "requested_at": s.requested_at, "waited_s": s.waited_s(now)}
                     for s in (floor_view.hands if floor_view else ())]
            speaking = [s.site for s in floor_view.speaking] if floor_view else []
            mode = floor_view.mode if floor_view else None
            acks = self.acks(meeting_id)
        return {"meeting_id": meeting_id, "title": title, "grid": grid, "hands": hands, "speaking": speaking,
                "listening": len(floor_view.listening) if floor_view else 0, "mode": mode, "acks": acks,
                "moderated": mode == fl.MODERATED}

    def acks(self, meeting_id: str) -> dict[str, Any] | None:
        tracked = self.hub.acks_for(meeting_id)
        if tracked is None:
            return None
        rows = []
        for site in tracked.expected:
            answer = tracked.answers.get(site)
            error = (answer or {}).get("error") if isinstance((answer or {}).get("error"), dict) else None
            rows.append({"site": site, "result": None if answer is None else ("ok" if answer.get("ok") else "refused"),
                         "detail": f"{error.get('code')}: {error.get('message')}" if error else "",
                         "latency_ms": (answer or {}).get("latency_ms")})
        answered = sum(1 for row in rows if row["result"])
        return {"command_id": tracked.command_id, "type": tracked.command_type, "operator": tracked.operator,
                "rows": rows, "answered": answered, "missing": len(rows) - answered}

    def meeting_panels(self, lang: str, role: str, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        return {mid: self.render("_meeting.html", lang, m=self.meeting(mid, now), role=role, now=now, hours=hours_text)
                for mid in self.meeting_ids()}
