"""What an operator can change from the dashboard: start and end meetings, grant and revoke the floor.

The same checks, commands and command log as the CLI (`operate.meeting_start_body`, `commands.build`,
`FloorDesk`, `floor_cli.record_outcome`), sent over the hub's connection, signed here with the
console's key (the browser never sees it), and recorded with the operator's name. Floor actions are
serialised: a second grant is planned only after the first one's acks and states are in, so two
operators clicking at once end with one consistent floor that both pages show.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any

from appliance.console import commands, operate
from appliance.console.context import Context
from appliance.console.errors import BadInput, InvalidFields
from appliance.console.floor_cli import SETTLE_S, outcome_document, record_outcome
from appliance.console.floor_desk import Outgoing
from appliance.console.home import Home
from appliance.console.web.hub import LiveHub
from appliance.core.protocol import COMMAND_ID, SITE_ID

COMMAND_TIMEOUT_S = 10.0
MEETING_EXPIRES_S = 600.0  # as the CLI's default --expires 10m
FLOOR_EXPIRES_S = 30.0     # as `floor grant`: a late grant must not unmute a site by surprise


def _text(form: dict[str, Any], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(part) for part in value)
    return str(value).strip() or None


class Actions:
    def __init__(self, home: Home, hub: LiveHub) -> None:
        self.home = home
        self.hub = hub
        self._floor = threading.Lock()     # one floor plan at a time: plan, send, wait for the states
        self._meetings = threading.Lock()  # one meeting start/end at a time

    @contextmanager
    def _context(self):  # noqa: ANN202 - a Context of this thread's own (SQLite connections stay in their thread)
        ctx = Context(self.home)
        try:
            yield ctx
        finally:
            ctx.close()

    def _send(self, ctx: Context, command: dict[str, Any], target: commands.Target, meeting_id: str,
              operator: str) -> dict[str, Any]:
        desk = self.hub.require_desk()
        outgoing = [Outgoing(command, tuple(target.topics), tuple(site.id for site in target.sites))]
        self.hub.track(outgoing, meeting_id, operator)
        tracker = desk.send(outgoing, COMMAND_TIMEOUT_S)[0]
        rows = tracker.rows()
        ctx.store.record_command(command, target.label, operator)
        ctx.store.record_results(command["id"], rows)
        return {"command": command, "target": target.label, "summary": tracker.summary(), "results": rows,
                "operator": operator}

    def start_meeting(self, operator: str, form: dict[str, Any]) -> dict[str, Any]:
        """`form`: title, sites (a,b or a list) or group, floor, program_url, ingest_url, auto_join, meeting_id."""
        with self._context() as ctx:
            ctx.require_init()
            errors: dict[str, str] = {}
            body = None
            try:
                body = operate.meeting_start_body(
                    ctx.store, title=_text(form, "title"), program_url=_text(form, "program_url"),
                    ingest_url=_text(form, "ingest_url"), meeting_id=_text(form, "meeting_id"),
                    auto_join=str(form.get("auto_join", "")).lower() in ("1", "true", "on", "yes"),
                    floor=_text(form, "floor") or operate.MODERATED)
            except InvalidFields as exc:
                errors.update(exc.fields)
            sites, group = _text(form, "sites"), _text(form, "group")
            try:
                target = commands.resolve_target(ctx.store, sites, group, ctx.topic_prefix)
            except BadInput as exc:
                errors["group" if group and not sites else "sites"] = exc.message
            if errors:
                raise InvalidFields(errors)
            assert body is not None
            with self._meetings:
                command = commands.build("meeting.start", body, target, MEETING_EXPIRES_S, self.hub.signing_key)
                result = self._send(ctx, command, target, body["meeting_id"], operator)
            with self.hub.lock:
                self.hub.last_started = body["meeting_id"]
            return result

    def end_meeting(self, operator: str, meeting_id: str, form: dict[str, Any]) -> dict[str, Any]:
        if not COMMAND_ID.match(meeting_id or ""):
            raise InvalidFields({"meeting_id": f"meeting id {meeting_id!r}: expected 1-64 of [A-Za-z0-9_.:-]"})
        with self._context() as ctx:
            ctx.require_init()
            meeting_id, target = operate.meeting_end_target(ctx.store, meeting_id, _text(form, "sites"),
                                                            _text(form, "group"), ctx.topic_prefix)
            with self._meetings:
                command = commands.build("meeting.end", {"meeting_id": meeting_id}, target, MEETING_EXPIRES_S,
                                         self.hub.signing_key)
                return self._send(ctx, command, target, meeting_id, operator)

    def floor(self, operator: str, action: str, form: dict[str, Any]) -> dict[str, Any]:
        """`action` grant or revoke; `form`: site, optional meeting_id."""
        site, meeting_id = _text(form, "site"), _text(form, "meeting_id")
        if not site or not SITE_ID.match(site):
            raise InvalidFields({"site": f"site {site!r}: expected a site id such as kalibaru"})
        if meeting_id is not None and not COMMAND_ID.match(meeting_id):
            raise InvalidFields({"meeting_id": f"meeting id {meeting_id!r}: expected 1-64 of [A-Za-z0-9_.:-]"})
        with self._context() as ctx:
            ctx.require_init()
            ctx.store.site(site)  # BadInput for an unknown site
            desk = self.hub.require_desk()
            with self._floor:
                if action == "grant":
                    outcome = desk.grant(site, meeting_id=meeting_id, timeout=COMMAND_TIMEOUT_S,
                                         expires_s=FLOOR_EXPIRES_S, settle_s=SETTLE_S)
                else:
                    outcome = desk.revoke(site, meeting_id=meeting_id, timeout=COMMAND_TIMEOUT_S,
                                          expires_s=FLOOR_EXPIRES_S, settle_s=SETTLE_S)
            record_outcome(ctx.store, outcome, operator)
            return {**outcome_document(outcome, FLOOR_EXPIRES_S), "operator": operator}
