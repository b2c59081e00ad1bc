"""Rollouts of a release: where each site is, and what happens next (decided by pure functions).

A rollout has stages, sent one after the other: `--ring all` is the canary ring, then the main
ring; `--ring canary` the canary ring only; `--sites`/`--group` one stage of the sites named. The
next stage is sent once every site of the current one is finished (committed, or failed within the
threshold). A stage whose failures (`update.failed`, `update.rolled_back`, a refused command, no
answer before the command expired) exceed `max_failures` halts the rollout: nothing more is sent.

`site_progress` and `decide` only read what they are given, so `update status` and `collect` (every
few seconds, see collect.py) reach the same decision from the same database; `advance` applies it,
claiming a stage in one transaction so that two processes never send it twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.core import update as up

CANARY, MAIN, SELECTED = "canary", "main", "selected"
RINGS = (CANARY, MAIN)
ACTIVE, HALTED, DONE, STOPPED = "active", "halted", "done", "stopped"
EVENT_SLACK_S = 60.0  # a site's clock may be a little behind the console's: its events can predate sent_at

COMMITTED, FAILED, UPDATING, WAITING, NOT_SENT = "committed", "failed", "updating", "waiting", "not sent"


def stages_of(target: str) -> list[str]:
    """The stages of a rollout's target, in the order they are sent."""
    if target == "ring:all":
        return [CANARY, MAIN]
    if target == "ring:canary":
        return [CANARY]
    return [SELECTED]


@dataclass
class SiteProgress:
    site: str
    stage: str
    outcome: str                      # committed | failed | updating | waiting | not sent
    running: str | None = None
    other_slot: str | None = None
    phase: str | None = None
    progress: int | None = None
    online: bool | None = None
    downloaded: bool = False
    installed: bool = False
    rebooted: bool = False
    committed: bool = False
    rolled_back: bool = False
    failure: str | None = None        # why, for a failed site
    detail: str = ""                  # what a waiting site waits for
    command_id: str | None = None
    sent_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def site_progress(version: str, stage: str, sent: dict[str, Any] | None, state: dict[str, Any] | None,
                  events: list[dict[str, Any]], ack: dict[str, Any] | None, now: float, site: str = "") -> SiteProgress:
    """Where one site is with `version`.

    `sent`: {"command_id", "sent_at", "expires_s"} once the command went out, else None. `state`: its
    last retained state. `events`: its `update.*` events for this version since the command (any order).
    `ack`: {"ok", "error"} of the command, if it answered.
    """
    row = SiteProgress(site, stage, NOT_SENT)
    state = state or {}
    software = state.get("software") if isinstance(state.get("software"), dict) else {}
    update = software.get("update") if isinstance(software.get("update"), dict) else None
    row.running, row.other_slot, row.online = software.get("running"), software.get("other_slot"), state.get("online")
    if update is not None and update.get("version") == version:
        row.phase = update.get("phase")
        row.progress = update.get("progress") if isinstance(update.get("progress"), int) else None
    if sent is None:
        return row
    row.command_id, row.sent_at = sent.get("command_id"), sent.get("sent_at")
    types = {event.get("type"): event for event in sorted(events, key=lambda e: str(e.get("at")))}
    phase_index = up.PHASES.index(row.phase) if row.phase in up.PHASES else -1
    row.downloaded = up.DOWNLOADED_EVENT in types or phase_index >= up.PHASES.index(up.INSTALLING)
    row.installed = up.INSTALLED_EVENT in types or phase_index >= up.PHASES.index(up.INSTALLED)
    row.committed = up.COMMITTED_EVENT in types or (row.running == version and update is None)
    row.rolled_back = up.ROLLED_BACK_EVENT in types and not row.committed
    row.rebooted = row.phase == up.TRYING or row.rolled_back or up.COMMITTED_EVENT in types
    if row.committed:
        row.outcome, row.downloaded, row.installed = COMMITTED, True, True
        return row
    failures = [event for event in events if event.get("type") in (up.FAILED_EVENT, up.ROLLED_BACK_EVENT)]
    if failures:
        last = max(failures, key=lambda e: str(e.get("at")))
        row.outcome = FAILED
        if last["type"] == up.ROLLED_BACK_EVENT:
            row.failure = f"rolled back: {last.get('reason') or 'no reason given'}"
        else:
            row.failure = f"failed at {last.get('step') or '?'}: {last.get('reason') or 'no reason given'}"
        return row
    if ack is not None and not ack.get("ok"):
        error = ack.get("error") if isinstance(ack.get("error"), dict) else {}
        row.outcome = FAILED
        row.failure = f"refused: {error.get('code', '?')}: {error.get('message', '')}".rstrip(": ")
        return row
    if row.phase is not None:
        row.outcome = UPDATING
        return row
    row.outcome = WAITING
    expired = row.sent_at is not None and now > row.sent_at + float(sent.get("expires_s") or 0)
    if ack is None and expired:
        row.outcome, row.failure = FAILED, "no answer before the command expired (offline?)"
    elif ack is None and not state:
        row.detail = "never seen: no answer yet"
    elif ack is None:
        row.detail = "no answer yet" if row.online is not False else "offline: no answer yet"
    else:
        row.detail = "accepted; waits until the site is idle" if row.online is not False else "accepted; offline"
    return row


@dataclass
class Decision:
    status: str                       # active | halted | done
    stage: str | None                 # the stage being worked on (None when done)
    send: list[str] = field(default_factory=list)   # sites to send the command to now
    reason: str | None = None         # why halted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(stages: list[str], sites: list[SiteProgress], max_failures: int) -> Decision:
    """What a rollout does next, from where its sites are."""
    for stage in stages:
        members = [site for site in sites if site.stage == stage]
        failed = [site for site in members if site.outcome == FAILED]
        if len(failed) > max_failures:
            named = "; ".join(f"{site.site}: {site.failure}" for site in failed[:3])
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            return Decision(HALTED, stage, reason=f"ring {stage}: {len(failed)} failed, more than the {max_failures} "
                                                  f"allowed ({named}{more})")
        unsent = [site.site for site in members if site.outcome == NOT_SENT]
        if unsent:
            return Decision(ACTIVE, stage, send=unsent)
        if any(site.outcome not in (COMMITTED, FAILED) for site in members):
            return Decision(ACTIVE, stage)
    return Decision(DONE, None)


def counts(sites: list[SiteProgress], stage: str | None = None) -> dict[str, int]:
    chosen = [site for site in sites if stage is None or site.stage == stage]
    result = {"sites": len(chosen)}
    for outcome in (COMMITTED, FAILED, UPDATING, WAITING, NOT_SENT):
        result[outcome.replace(" ", "_")] = sum(1 for site in chosen if site.outcome == outcome)
    return result


# --- the database --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rollout:
    id: int
    version: str
    target: str
    allow_downgrade: bool
    max_failures: int
    expires_s: float
    status: str
    reason: str | None
    started_at: float

    @property
    def stages(self) -> list[str]:
        return stages_of(self.target)


_ROLLOUT_COLUMNS = "id, version, target, allow_downgrade, max_failures, expires_s, status, reason, started_at"


def rollouts(db: sqlite3.Connection, version: str | None = None, status: str | None = None) -> list[Rollout]:
    """Newest first."""
    sql, params = f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE 1", []  # noqa: S608
    if version is not None:
        sql, params = sql + " AND version = ?", [*params, version]
    if status is not None:
        sql, params = sql + " AND status = ?", [*params, status]
    return [Rollout(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6], row[7], row[8])
            for row in db.execute(sql + " ORDER BY id DESC", params)]


def create(db: sqlite3.Connection, version: str, target: str, members: dict[str, str], allow_downgrade: bool,
           max_failures: int, expires_s: float, now: float) -> int:
    """Record a rollout and its sites (site -> stage); inside the caller's transaction."""
    cursor = db.execute("INSERT INTO rollouts (version, target, allow_downgrade, max_failures, expires_s, status, "
                        "started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (version, target, int(allow_downgrade), max_failures, expires_s, ACTIVE, now, now))
    rollout_id = int(cursor.lastrowid or 0)
    db.executemany("INSERT INTO rollout_sites (rollout, site, ring) VALUES (?, ?, ?)",
                   [(rollout_id, site, stage) for site, stage in members.items()])
    return rollout_id


def progress(db: sqlite3.Connection, rollout: Rollout, now: float) -> list[SiteProgress]:
    """Every site of the rollout, from what `collect` stored (states, events, acks)."""
    rows = db.execute("SELECT site, ring, command_id, sent_at, ack_ok, ack_error, ack_at FROM rollout_sites "
                      "WHERE rollout = ? ORDER BY site", (rollout.id,)).fetchall()
    sites = [row[0] for row in rows]
    marks = ",".join("?" * len(sites)) or "''"
    states = {site: json.loads(payload) for site, payload in db.execute(
        f"SELECT site, payload FROM site_state WHERE site IN ({marks})", sites)}  # noqa: S608
    earliest = min((row[3] for row in rows if row[3] is not None), default=now) - EVENT_SLACK_S
    events: dict[str, list[dict[str, Any]]] = {}
    for site, at, payload in db.execute(f"SELECT site, at, payload FROM events WHERE site IN ({marks}) "  # noqa: S608
                                        "AND type LIKE 'update.%' AND at >= ?", [*sites, earliest]):
        events.setdefault(site, []).append({**json.loads(payload), "_at": at})
    result = []
    for site, stage, command_id, sent_at, ack_ok, ack_error, ack_at in rows:
        sent = None if sent_at is None else {"command_id": command_id, "sent_at": sent_at,
                                             "expires_s": rollout.expires_s}
        ack = None
        if ack_ok is not None:
            ack = {"ok": bool(ack_ok), "error": json.loads(ack_error) if ack_error else None}
        elif command_id:
            stored = db.execute("SELECT ok, error, at FROM acks WHERE site = ? AND id = ? ORDER BY at LIMIT 1",
                                (site, command_id)).fetchone()
            if stored is not None:
                ack = {"ok": bool(stored[0]), "error": json.loads(stored[1]) if stored[1] else None}
                ack_at = stored[2]
        # This command's events come after its ack, on the site's own clock: an earlier attempt's events (a
        # rollout of the same version halted a minute ago) do not count. Without the ack: the console's
        # clock, with some slack for a site's clock behind it.
        since = ack_at if ack_at is not None else (sent_at or now) - EVENT_SLACK_S
        mine = [event for event in events.get(site, [])
                if event.get("version") == rollout.version and sent_at is not None and event["_at"] >= since]
        result.append(site_progress(rollout.version, stage, sent, states.get(site), mine, ack, now, site))
    return result


def _transaction(db: sqlite3.Connection, work: Callable[[], Any]) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def set_status(db: sqlite3.Connection, rollout_id: int, status: str, reason: str | None, now: float) -> bool:
    """Leave `active` for `status`; False when another process did it first."""
    return _transaction(db, lambda: db.execute(
        "UPDATE rollouts SET status = ?, reason = ?, updated_at = ? WHERE id = ? AND status = ?",
        (status, reason, now, rollout_id, ACTIVE)).rowcount == 1)


def claim(db: sqlite3.Connection, rollout_id: int, sites: list[str], now: float) -> list[str]:
    """Mark `sites` as being sent to, so that no other process sends them too; the ones claimed."""
    def work() -> list[str]:
        if db.execute("SELECT status FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()[0] != ACTIVE:
            return []
        return [site for site in sites if db.execute(
            "UPDATE rollout_sites SET sent_at = ? WHERE rollout = ? AND site = ? AND sent_at IS NULL",
            (now, rollout_id, site)).rowcount == 1]
    return _transaction(db, work)


def unclaim(db: sqlite3.Connection, rollout_id: int, sites: list[str]) -> None:
    """The command could not be sent (broker unreachable): the next check tries again."""
    _transaction(db, lambda: db.executemany(
        "UPDATE rollout_sites SET sent_at = NULL, command_id = NULL WHERE rollout = ? AND site = ?",
        [(rollout_id, site) for site in sites]))


def record_sent(db: sqlite3.Connection, rollout_id: int, results: dict[str, dict[str, Any]]) -> None:
    """site -> {"command_id", "sent_at", "ack": {"ok", "error", "at"} | None} after sending ("at": the ack's
    time on the site's clock, epoch seconds, or None)."""
    def work() -> None:
        for site, result in results.items():
            ack = result.get("ack")
            db.execute("UPDATE rollout_sites SET command_id = ?, sent_at = ?, ack_ok = ?, ack_error = ?, ack_at = ? "
                       "WHERE rollout = ? AND site = ?",
                       (result["command_id"], result["sent_at"], None if ack is None else int(bool(ack["ok"])),
                        json.dumps(ack["error"]) if ack and ack.get("error") else None,
                        None if ack is None else ack.get("at"), rollout_id, site))
    _transaction(db, work)


Sender = Callable[[Rollout, list[str]], dict[str, dict[str, Any]]]


def advance(db: sqlite3.Connection, rollout: Rollout, send: Sender, now: float | None = None) -> Decision:
    """Decide for one active rollout and act on it: record a halt or the end, or send the next stage."""
    now = time.time() if now is None else now
    decision = decide(rollout.stages, progress(db, rollout, now), rollout.max_failures)
    if decision.status in (HALTED, DONE):
        set_status(db, rollout.id, decision.status, decision.reason, now)
    elif decision.send:
        claimed = claim(db, rollout.id, decision.send, now)
        if claimed:
            try:
                results = send(rollout, claimed)
            except BaseException:
                unclaim(db, rollout.id, claimed)
                raise
            record_sent(db, rollout.id, results)
    return decision


def has_active(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM rollouts WHERE status = ? LIMIT 1", (ACTIVE,)).fetchone() is not None


def advance_all(db: sqlite3.Connection, send: Sender, now: float | None = None) -> list[tuple[Rollout, Decision]]:
    """Advance every active rollout (cheap when there is none: one indexed read)."""
    if not has_active(db):
        return []
    return [(rollout, advance(db, rollout, send, now)) for rollout in rollouts(db, status=ACTIVE)]
