"""The moderator's commands on the wire: `FloorDesk` keeps one connected `Fleet` with the floor
view loaded; `grant()` / `revoke()` plan, sign and publish every command at once, then collect
every ack (`send()` does that for any commands). Used by the CLI and by long-running processes.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.console import commands
from appliance.console.fleet import Fleet, Tracker
from appliance.console.floor import (
    ACTIONS,
    AFTER,
    GRANT,
    REVOKE,
    FloorPlan,
    FloorView,
    MeetingFloor,
    floor_status,
    plan_grant,
    plan_revoke,
)
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic


# --- commands and their answers ---------------------------------------------------------------------
@dataclass(frozen=True)
class Outgoing:
    """One signed command and where it goes: each addressed site's own cmd topic."""

    command: dict[str, Any]
    topics: tuple[str, ...]
    expected: tuple[str, ...]

    @property
    def label(self) -> str:  # the console database's target, as for `--sites`
        return "sites:" + ",".join(self.expected)


def site_commands(command_type: str, body: dict[str, Any], site_ids: Iterable[str], signing_key: Any, *,
                  prefix: str = DEFAULT_TOPIC_PREFIX, expires_s: float) -> list[Outgoing]:
    """Signed `command_type` commands for these sites: one command naming them all in `to` (split when
    the list would not fit a device's payload limit), published to each one's cmd topic."""
    ids = list(dict.fromkeys(site_ids))
    chunks: list[list[str]] = []
    for site_id in ids:
        if not chunks or len(",".join([*chunks[-1], site_id])) > commands.MAX_TO_BYTES:
            chunks.append([])
        chunks[-1].append(site_id)
    out = []
    for chunk in chunks:
        topics = [site_topic(prefix, site_id, "cmd") for site_id in chunk]
        target = commands.Target("sites:" + ",".join(chunk), topics, chunk, [])  # sites: not looked up
        out.append(Outgoing(commands.build(command_type, body, target, expires_s, signing_key),
                            tuple(topics), tuple(chunk)))
    return out


def plan_commands(plan: FloorPlan, signing_key: Any, *, prefix: str = DEFAULT_TOPIC_PREFIX,
                  expires_s: float = 30.0) -> list[Outgoing]:
    """The plan's revokes and grants, signed, revokes first."""
    body = {"meeting_id": plan.meeting_id}
    return (site_commands(REVOKE, body, plan.revoke, signing_key, prefix=prefix, expires_s=expires_s)
            + site_commands(GRANT, body, plan.grant, signing_key, prefix=prefix, expires_s=expires_s))


@dataclass
class FloorOutcome:
    """What a grant or revoke sent and how every site answered."""

    plan: FloorPlan
    sent: list[Outgoing]
    trackers: list[Tracker]
    floors: dict[str, str | None] = field(default_factory=dict)  # site -> its floor status after, as far as seen

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for outgoing, tracker in zip(self.sent, self.trackers, strict=True):
            for row in tracker.rows():
                rows.append({"site": row["site"], "action": ACTIONS.get(outgoing.command["type"], outgoing.command["type"]),
                             "command_id": outgoing.command["id"], **{k: v for k, v in row.items() if k != "site"},
                             "floor": self.floors.get(row["site"])})
        return rows

    def summary(self) -> dict[str, int]:
        counts = {"targeted": 0, "ok": 0, "refused": 0, "no_answer": 0}
        for tracker in self.trackers:
            for key, value in tracker.summary().items():
                counts[key] += value
        return counts

    @property
    def ok(self) -> bool:
        counts = self.summary()
        return counts["ok"] == counts["targeted"]

    def last_ack_at(self) -> float | None:
        """Monotonic time the last ack arrived (None if one is missing)."""
        if not all(tracker.done for tracker in self.trackers):
            return None
        return max(tracker.sent_at + answer["latency_s"] for tracker in self.trackers for answer in tracker.answers.values())


class FloorDesk:
    """The moderator's desk over one connected Fleet: the live FloorView and the floor commands.

    `load()` once (subscribes to the sites' states and acks and reads every retained state), then
    `grant()` / `revoke()` as often as needed; between calls, `pump()` (or any call) takes in what
    arrived, so the view stays current. Thread-safe: any thread may call; one at a time reads the
    connection and every waiter sees every ack.
    """

    def __init__(self, fleet: Fleet, signing_key: Any, *, expires_s: float = 30.0) -> None:
        self.fleet = fleet
        self.signing_key = signing_key
        self.expires_s = expires_s
        self.view = FloorView(fleet.prefix)
        self._changed = threading.Condition()
        self._reading = threading.Lock()
        self._pending: list[Tracker] = []

    def load(self) -> FloorView:
        prefix = self.fleet.prefix
        self.fleet.subscribe([site_topic(prefix, "+", "state"), site_topic(prefix, "+", "ack")])
        self.fleet.sync()
        self.pump()
        return self.view

    def meetings(self) -> list[MeetingFloor]:
        """The floor of every running meeting, as the view has it now (safe from any thread)."""
        self.pump()
        with self._changed:
            return self.view.meetings()

    # --- reading the connection -----------------------------------------------------------------
    def _take(self, message: tuple[str, bytes, bool, float]) -> None:
        topic, payload, _, arrived = message
        self.view.feed(topic, payload)
        for tracker in self._pending:
            tracker.feed(topic, payload, arrived)

    def _read(self, timeout: float) -> int:
        """Caller holds _reading. Wait up to `timeout` for a message, then take all that arrived."""
        messages = self.fleet.messages
        try:
            first = messages.get(timeout=timeout) if timeout > 0 else messages.get_nowait()
        except queue.Empty:
            return 0
        count = 1
        with self._changed:
            self._take(first)
            while True:
                try:
                    self._take(messages.get_nowait())
                except queue.Empty:
                    break
                count += 1
            self._changed.notify_all()
        return count

    def pump(self, timeout: float = 0.0) -> int:
        """Take in every message that arrived (waiting up to `timeout` s for one); how many."""
        if not (self._reading.acquire(timeout=timeout) if timeout > 0 else self._reading.acquire(blocking=False)):
            return 0
        try:
            return self._read(timeout)
        finally:
            self._reading.release()

    def wait(self, done: Callable[[FloorView], bool], timeout: float) -> bool:
        """Until `done(view)` (asked under the desk's lock) or `timeout` s; whether it became true."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                if done(self.view):
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._reading.acquire(blocking=False):
                try:
                    self._read(min(remaining, 0.05))
                finally:
                    self._reading.release()
            else:  # another thread reads: it wakes us when anything arrives
                with self._changed:
                    if not done(self.view):
                        self._changed.wait(min(remaining, 0.05))

    # --- sending ----------------------------------------------------------------------------------
    def send(self, outgoing: list[Outgoing], timeout: float = 10.0) -> list[Tracker]:
        """Publish every command (all at once), then collect every ack until all answered or `timeout`."""
        trackers = [Tracker(item.command["id"], list(item.expected), self.fleet.prefix) for item in outgoing]
        items = [(topic, json.dumps(item.command, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
                 for item in outgoing for topic in item.topics]
        with self._changed:
            for tracker in trackers:  # what is known so far: a site that never answers shows offline etc.
                tracker.states = dict(self.view.states)
            self._pending.extend(trackers)
        try:
            sent_at = time.monotonic()
            for tracker in trackers:
                tracker.sent_at = sent_at
            self.fleet.publish(items)
            self.wait(lambda view: all(tracker.done for tracker in trackers), timeout)
        finally:
            with self._changed:
                done = {id(tracker) for tracker in trackers}
                self._pending = [tracker for tracker in self._pending if id(tracker) not in done]
        return trackers

    def execute(self, plan: FloorPlan, *, timeout: float = 10.0, expires_s: float | None = None,
                settle_s: float = 0.0) -> FloorOutcome:
        """Send a plan; with `settle_s`, also wait that long at most for the sites' states to show the result."""
        sent = plan_commands(plan, self.signing_key, prefix=self.fleet.prefix,
                             expires_s=self.expires_s if expires_s is None else expires_s)
        trackers = self.send(sent, timeout)
        expect = {site: AFTER[item.command["type"]] for item, tracker in zip(sent, trackers, strict=True)
                  for site, answer in tracker.answers.items() if answer.get("ok")}

        def settled(view: FloorView) -> bool:
            return all(floor_status(view, site) == status for site, status in expect.items())

        if settle_s > 0 and expect:
            self.wait(settled, settle_s)
        with self._changed:
            floors = {site: floor_status(self.view, site) for item in sent for site in item.expected}
        return FloorOutcome(plan, sent, trackers, floors)

    def grant(self, site_id: str, *, meeting_id: str | None = None, keep_others: bool = False,
              timeout: float = 10.0, expires_s: float | None = None, settle_s: float = 0.0) -> FloorOutcome:
        self.pump()
        with self._changed:
            plan = plan_grant(self.view, site_id, meeting_id=meeting_id, keep_others=keep_others)
        return self.execute(plan, timeout=timeout, expires_s=expires_s, settle_s=settle_s)

    def revoke(self, site_id: str | None = None, *, meeting_id: str | None = None, timeout: float = 10.0,
               expires_s: float | None = None, settle_s: float = 0.0) -> FloorOutcome:
        """`site_id` None: every site of the meeting that speaks or has a hand up."""
        self.pump()
        with self._changed:
            plan = plan_revoke(self.view, site_id, meeting_id=meeting_id)
        return self.execute(plan, timeout=timeout, expires_s=expires_s, settle_s=settle_s)
