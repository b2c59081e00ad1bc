"""The dashboard's one MQTT connection and what it knows, pushed to every open page.

One thread owns the connection (the console's own login, MQTT v5, TLS, as `watch` and `floor` use
it): it subscribes to every site's state, ack, event, self-test, uptime and telemetry, feeds the
same `WatchBoard` that `watch` draws (problems, floor, time zones) and a `FloorDesk` that sends the
floor and meeting commands, and tells every subscribed page what changed, at most every
`FLUSH_S`: which rows changed, which sites were heard from at all (the site page re-fetches its
part), and whether what the rollout report counts changed (a site coming online, a self-test).
It also remembers the heartbeat buckets it heard lately, so the rollout page need not wait for
`collect` to have stored them. When the broker goes away it says so at once (the pages show a
banner and grey out what they show), then reconnects with a jittered back-off and reloads every
retained message.
"""

from __future__ import annotations

import logging
import queue
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.console.fleet import Fleet, decode, parse_topic
from appliance.console.floor_desk import FloorDesk, Outgoing
from appliance.console.records import BUCKET_S
from appliance.console.watch import WatchBoard
from appliance.core.clock import parse_rfc3339
from appliance.core.protocol import site_topic

log = logging.getLogger("appliance.console.web")

FLUSH_S = 0.03           # changes are batched this long at most: well inside the 500 ms a person notices
TELEMETRY_KEPT = 240     # per site, in memory, for the site page's graph (the database has the rest)
EVENTS_KEPT = 200
BACKOFF_S = (0.5, 10.0)  # reconnect: first wait, longest wait (doubled each time, with jitter)
EXTRA_LEAVES = ("event", "selftest", "uptime", "telemetry")  # the desk subscribes to state and ack itself
HEARD_KEPT_S = 3600.0    # heartbeat buckets heard, kept this long per site (collect's are read every 5 min)


class TeeQueue(queue.Queue):
    """The Fleet's message queue that also hands every message to `observe` (paho's thread), so the
    desk keeps reading its queue as always and the hub sees the same messages."""

    def __init__(self, observe: Callable[[Any], None]) -> None:
        super().__init__()
        self._observe = observe

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._observe(item)


@dataclass(frozen=True)
class BrokerLogin:
    url: str
    username: str
    password: str
    ca_file: str | None
    prefix: str


@dataclass
class TrackedCommand:
    """A command sent from the dashboard, whose acks the meeting page shows as they arrive."""

    command_id: str
    command_type: str
    meeting_id: str | None
    expected: tuple[str, ...]
    operator: str
    sent_at: float
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Change:
    """What one flush tells the pages."""

    seq: int
    sites: set[str]
    meetings: bool
    acks: bool
    events: list[tuple[float, str, str]]
    broker: bool
    touched: set[str] = field(default_factory=set)  # sites any message came from (state, self-test, telemetry...)
    rollout: bool = False  # what the rollout report counts changed: a site came online, a new self-test
    # The pages' messages for this change, made once per (language, role) and shared by every open page
    # (in the server's event loop only). Made per page, 20 pages cost the hub's lock 20 renders of every
    # changed row per flush, and the meeting's acks waited behind them.
    rendered: dict[tuple[str, str], list[str]] = field(default_factory=dict, compare=False, repr=False)

    def empty(self) -> bool:
        return not (self.sites or self.meetings or self.acks or self.events or self.broker or self.touched
                    or self.rollout)


class LiveHub:
    def __init__(self, login: BrokerLogin, board: WatchBoard, signing_key: Any, *, expires_s: float = 30.0) -> None:
        self.login = login
        self.board = board
        self.signing_key = signing_key
        self.expires_s = expires_s
        self.lock = threading.RLock()  # the board, the tables below and the listeners
        self.desk: FloorDesk | None = None
        self.broker_ok = False
        self.broker_problem = "connecting to the broker"
        self.seq = 0
        self.run_id = secrets.token_hex(4)  # a page's place in the stream holds for this server's run only
        self.site_seq: dict[str, int] = {}
        self.touch_seq: dict[str, int] = {}  # site -> seq of the last flush that heard from it
        self.rollout_seq = 0  # seq of the last flush that changed what the rollout report counts
        self.heard: dict[str, set[int]] = {}  # site -> heartbeat buckets heard lately (records.BUCKET_S)
        self.telemetry: dict[str, deque[dict[str, Any]]] = {}
        self.uptime: dict[str, dict[str, Any]] = {}
        self.events: deque[tuple[float, str, str]] = deque(maxlen=EVENTS_KEPT)
        self.tracked: dict[str, TrackedCommand] = {}
        self.last_started: str | None = None
        self._listeners: list[Callable[[Change], None]] = []
        self._incoming: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = Change(0, set(), False, False, [], False)

    # --- a page's place in the stream ------------------------------------------------------------
    def mark(self, seq: int) -> str:
        """What a page keeps of the changes it has: this run's id and the last flush it holds."""
        return f"{self.run_id}.{seq}"

    def position(self, mark: str | None) -> int:
        """The flush a page's mark says it holds; 0 (send everything) for none, a malformed one, or one
        from another run: after a restart the flush numbers start again, and an old page's number
        would otherwise hide every row that changed since, showing stale rows as live."""
        run, _, seq = (mark or "").partition(".")
        if run != self.run_id or not seq.isdigit() or int(seq) > self.seq:
            return 0
        return int(seq)

    # --- life ------------------------------------------------------------------------------------
    def start(self) -> LiveHub:
        self._thread = threading.Thread(target=self._run, name="dashboard-mqtt", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def listen(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """`listener(change)` after every flush (in the hub's thread; keep it short); returns the way to stop."""
        with self.lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self.lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return stop

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.broker_ok:
                return True
            time.sleep(0.02)
        return False

    # --- the connection's thread -----------------------------------------------------------------
    def _run(self) -> None:
        wait = BACKOFF_S[0]
        while not self._stop.is_set():
            fleet = None
            try:
                fleet = self._connect()
                wait = BACKOFF_S[0]
                self._serve(fleet)
            except Exception as exc:  # noqa: BLE001 - any failure: say so, wait, try again
                self._set_broker(False, getattr(exc, "message", None) or str(exc) or type(exc).__name__)
            finally:
                self.desk = None
                if fleet is not None:
                    try:
                        fleet.close()
                    except Exception:  # noqa: BLE001 - a dead connection may not close cleanly
                        pass
            if self._stop.wait(wait * random.uniform(0.7, 1.3)):  # noqa: S311 - jitter, not secrecy
                break
            wait = min(wait * 2, BACKOFF_S[1])

    def _connect(self) -> Fleet:
        login = self.login
        self._lost.clear()
        fleet = Fleet(login.url, login.username, login.password, login.ca_file, login.prefix, timeout=5.0)
        fleet.messages = TeeQueue(self._observe)
        fleet.connect()
        on_disconnect = fleet.client.on_disconnect

        def lost(*args: Any) -> None:
            on_disconnect(*args)
            self._lost.set()

        fleet.client.on_disconnect = lost
        fleet.subscribe([site_topic(login.prefix, "+", leaf) for leaf in EXTRA_LEAVES])
        desk = FloorDesk(fleet, self.signing_key, expires_s=self.expires_s)
        desk.load()  # state and ack, then a sync: every retained message has arrived
        self._take_incoming()
        self.desk = desk
        with self.lock:
            self._pending.sites.update(self.board.kinds)  # everything may have changed while away
            self._pending.touched.update(self.board.kinds)
            self._pending.meetings = self._pending.rollout = True
        self._set_broker(True, None)
        return fleet

    def _serve(self, fleet: Fleet) -> None:
        last_flush = 0.0
        while not self._stop.is_set():
            if self._lost.is_set():
                raise ConnectionError("the connection to the broker was lost")
            try:
                first = self._incoming.get(timeout=FLUSH_S)
            except queue.Empty:
                first = None
            if first is not None:
                self._take(*first)
            self._take_incoming()
            if self.desk is not None:
                self.desk.pump()  # keep the desk's own queue drained and its view current
            if time.monotonic() - last_flush >= FLUSH_S:
                self._flush()
                last_flush = time.monotonic()

    def _observe(self, message: tuple[str, bytes, bool, float]) -> None:
        self._incoming.put((message[0], message[1]))

    def _take_incoming(self) -> None:
        while True:
            try:
                topic, payload = self._incoming.get_nowait()
            except queue.Empty:
                return
            self._take(topic, payload)

    def _take(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic, self.login.prefix)
        if parsed is None:
            return
        site, leaf = parsed
        with self.lock:
            pending = self._pending
            if leaf != "ack":
                pending.touched.add(site)
            if leaf == "ack":
                self._take_ack(site, decode(payload))
                return
            if leaf == "event":
                event = decode(payload)
                if event is not None:
                    text = self.board.note_event(site, event)
                    item = (time.time(), site, text)
                    self.events.append(item)
                    pending.events.append(item)
                    pending.meetings = pending.meetings or str(event.get("type", "")).startswith(("floor.", "meeting."))
                return
            if leaf == "telemetry":
                document = decode(payload)
                if document is not None:
                    self.telemetry.setdefault(site, deque(maxlen=TELEMETRY_KEPT)).append(document)
                    self._heard(site, document.get("at"))
                return
            if leaf == "uptime":
                document = decode(payload)
                if document is not None:
                    self.uptime[site] = document
                    pending.sites.add(site)
            if leaf == "state":
                was_online = (self.board.states.get(site) or {}).get("online") is True
                document = decode(payload)
                if document is not None and document.get("online") is True:
                    self._heard(site, document.get("at"))
                    pending.rollout = pending.rollout or not was_online
            elif leaf == "selftest":
                before = (self.board.selftests.get(site) or {}).get("at")
                document = decode(payload)
                pending.rollout = pending.rollout or document is None or document.get("at") != before
            changed = self.board.feed(topic, payload)
            if changed is not None:
                pending.sites.add(changed)
                if leaf == "state":
                    pending.meetings = True

    def _heard(self, site: str, at: Any) -> None:
        """A heartbeat bucket, as `collect` stores one for a site's online state or telemetry (lock held)."""
        try:
            moment = parse_rfc3339(at)
        except (TypeError, ValueError):
            return
        buckets = self.heard.setdefault(site, set())
        buckets.add(int(moment // BUCKET_S))
        if len(buckets) > 2 * HEARD_KEPT_S / BUCKET_S:
            newest = max(buckets)
            buckets.difference_update([b for b in buckets if b < newest - HEARD_KEPT_S / BUCKET_S])

    def _take_ack(self, site: str, ack: dict[str, Any] | None) -> None:
        if ack is None:
            return
        tracked = self.tracked.get(str(ack.get("id")))
        if tracked is not None and site in tracked.expected:
            tracked.answers[site] = {**ack, "latency_ms": round((time.monotonic() - tracked.sent_at) * 1000, 1)}
            self._pending.acks = True

    def _set_broker(self, ok: bool, problem: str | None) -> None:
        with self.lock:
            changed = ok != self.broker_ok or problem != self.broker_problem
            self.broker_ok, self.broker_problem = ok, problem
            if changed:
                if not ok:
                    log.warning("dashboard: broker unavailable: %s", problem)
                self._pending.broker = True
        self._flush()

    def _flush(self) -> None:
        with self.lock:
            pending = self._pending
            if pending.empty():
                return
            self.seq += 1
            pending.seq = self.seq
            for site in pending.sites:
                self.site_seq[site] = self.seq
            for site in pending.touched:
                self.touch_seq[site] = self.seq
            if pending.rollout:
                self.rollout_seq = self.seq
            self._pending = Change(0, set(), False, False, [], False)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(pending)
            except Exception:  # noqa: BLE001 - one broken page must not stop the others' updates
                log.exception("dashboard: a listener failed")

    # --- sending (request threads) ---------------------------------------------------------------
    def require_desk(self) -> FloorDesk:
        from appliance.console.errors import Refused  # noqa: PLC0415 - avoid a cycle at import

        desk = self.desk
        if desk is None or not self.broker_ok:
            raise Refused(f"the broker is not reachable now ({self.broker_problem}); nothing was sent")
        return desk

    def track(self, outgoing: list[Outgoing], meeting_id: str | None, operator: str) -> None:
        """Show these commands' acks on the meeting page as they arrive."""
        with self.lock:
            for item in outgoing:
                command = item.command
                self.tracked[command["id"]] = TrackedCommand(command["id"], command["type"], meeting_id, item.expected,
                                                             operator, time.monotonic())
            while len(self.tracked) > 50:
                self.tracked.pop(next(iter(self.tracked)))
            self._pending.acks = True

    def acks_for(self, meeting_id: str | None) -> TrackedCommand | None:
        """The latest meeting command (start or end) sent from here for this meeting."""
        with self.lock:
            found = [t for t in self.tracked.values() if t.meeting_id == meeting_id and t.command_type.startswith("meeting.")]
            return found[-1] if found else None
