"""The appliance's state machine: events in, effects out, time from an injected clock.

States follow the contract: idle -> meeting_available -> joining -> in_meeting -> leaving -> idle
(or back to meeting_available when the meeting goes on without us).
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass, field
from typing import Any

from appliance.core import led
from appliance.core.clock import Clock, rfc3339
from appliance.core.io import (
    BrokerConnected,
    BrokerDisconnected,
    ButtonDown,
    ButtonUp,
    CheckpointDue,
    Effect,
    Event,
    HealthReport,
    Log,
    MediaStatus,
    MessageReceived,
    NotifyStatus,
    ProvisionRejected,
    Publish,
    PublishDenied,
    RememberCommand,
    RunSelftest,
    SaveUptime,
    SetLed,
    ShowScreen,
    StartProgram,
    StartUplink,
    StopProgram,
    StopUplink,
    TelemetryDue,
)
from appliance.core.presentation import (
    IDLE,
    IN_MEETING,
    JOINING,
    LEAVING,
    MEETING_AVAILABLE,
    led_pattern,
    screen_name,
)
from appliance.core.protocol import (
    INVALID_STATE,
    RETAINED_COMMAND,
    Command,
    CommandPolicy,
    CommandRejected,
    Topics,
    check_command,
    identify,
)
from appliance.core.uptime import UptimeLedger

BROKEN_HEALTH = ("missing", "error")
UPLINK_STOPPED = ("idle", "failed")
PROGRAM_STOPPED = ("idle", "failed")


@dataclass(frozen=True)
class Meeting:
    meeting_id: str
    title: str
    program_url: str
    ingest_url: str
    auto_join: bool = False


@dataclass(frozen=True)
class CoreSettings:
    site_id: str
    site_kind: str
    policy: CommandPolicy
    site_name: str = ""
    topic_prefix: str = "rapat/v1"
    hold_s: float = 3.0
    camera_enabled: bool = False
    display_enabled: bool = False
    version: str = "0.0.0"
    boot_id: str = ""
    join_timeout_s: float = 20.0
    leave_timeout_s: float = 2.0
    notice_s: float = 6.0
    timezone: str = "Asia/Jakarta"
    # The 90-day uptime message is ~9 KB: republished every 60 s that is ~13 MB a day per site.
    uptime_publish_s: float = 60.0


@dataclass
class Outcome:
    ok: bool
    message: str
    effects: list[Effect] = field(default_factory=list)


class ApplianceCore:
    def __init__(self, settings: CoreSettings, clock: Clock, replay_memory: dict[str, float] | None = None,
                 uptime: UptimeLedger | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.topics = Topics(settings.topic_prefix, settings.site_id, settings.site_kind)
        self.state = IDLE
        self.meeting: Meeting | None = None
        self.since = clock.wall()
        self.started_at = clock.monotonic()
        self.broker_connected = False
        self.publish_denied = ""
        self.reconnects = 0
        self._connected_once = False
        self.health: dict[str, str] = {
            "broker": "error",
            "panel": "ok",
            "camera": "missing" if settings.camera_enabled else "disabled",
            "display": "missing" if settings.display_enabled else "disabled",
            "uplink": "idle",
            "program": "idle",
            "clock": "unsynced",
        }
        self._replay = {key: value for key, value in (replay_memory or {}).items() if value > clock.wall()}
        self._expiries = [(expiry, key) for key, expiry in self._replay.items()]
        heapq.heapify(self._expiries)
        self._button_down_at: float | None = None
        self._hold_fired = False
        self._state_deadline: float | None = None
        self._leave_reason = ""
        self.provision_problems: tuple[str, ...] = ()
        # Until a backend has reported, "missing" is a default, not a finding: it must not blink "broken".
        self._reported: set[str] = set()
        self._notice: tuple[str, float] | None = None
        self._effects: list[Effect] = []
        self._shown: tuple[Any, ...] | None = None
        self._published: tuple[Any, ...] | None = None
        self.uptime = uptime or UptimeLedger(settings.timezone)
        self._connect_checkpoint = False
        self._uptime_published_at: float | None = None

    # --- public API -----------------------------------------------------------------------------
    def start(self) -> list[Effect]:
        self._log("info", f"site {self.settings.site_id} starting in state {self.state}")
        self.uptime.start(self.clock.monotonic(), self.settings.boot_id, self.broker_connected, self.state == IN_MEETING)
        return self._finish()

    def redraw(self) -> list[Effect]:
        """Show the LED and screen of the current state again (after a self-test borrowed them)."""
        self._shown = None
        return self._finish()

    def handle(self, event: Event) -> list[Effect]:
        handler = getattr(self, f"_on_{type(event).__name__}")
        handler(event)
        return self._finish()

    def local(self, action: str) -> Outcome:
        """A request from the local control socket (`appliance join|leave`)."""
        try:
            self._require_allowed(action, {})
        except CommandRejected as refusal:
            return Outcome(False, refusal.message, self._finish())
        message = self._apply(action, {})
        return Outcome(True, message, self._finish())

    def next_deadline(self) -> float | None:
        deadlines = [self._state_deadline]
        if self._button_down_at is not None and not self._hold_fired:
            deadlines.append(self._button_down_at + self.settings.hold_s)
        if self._notice:
            deadlines.append(self._notice[1])
        pending = [deadline for deadline in deadlines if deadline is not None]
        return min(pending) if pending else None

    def tick(self) -> list[Effect]:
        now = self.clock.monotonic()
        if self._button_down_at is not None and not self._hold_fired and now >= self._button_down_at + self.settings.hold_s:
            self._hold_fired = True
            self._on_hold()
        if self._notice and now >= self._notice[1]:
            self._notice = None
        if self._state_deadline is not None and now >= self._state_deadline:
            self._state_deadline = None
            if self.state == JOINING:
                self._log("warning", f"join timed out after {self.settings.join_timeout_s:g} s: {self._media_summary()}")
                self._enter_meeting(degraded=True)
            elif self.state == LEAVING:
                self._log("warning", f"media did not stop within {self.settings.leave_timeout_s:g} s; leaving anyway")
                self._finish_leaving()
        return self._finish()

    def status(self) -> dict[str, Any]:
        return {
            **self._state_payload(),
            "broker_connected": self.broker_connected,
            "led": self._led_pattern().name,
            "screen": self._screen()[0],
            "provision_problems": list(self.provision_problems),
        }

    # --- events ---------------------------------------------------------------------------------
    def _on_BrokerConnected(self, event: BrokerConnected) -> None:
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self.broker_connected = True
        self.publish_denied = ""
        self.health["broker"] = "ok"
        self._published = None  # republish the retained state on every (re)connect
        self._connect_checkpoint = True  # and the retained ledger, with the outage just ended on it

    def _on_BrokerDisconnected(self, event: BrokerDisconnected) -> None:
        self.broker_connected = False
        self.health["broker"] = "error"
        self._log("warning", f"broker connection lost: {event.reason}")

    def _on_PublishDenied(self, event: PublishDenied) -> None:
        self.publish_denied = f"{event.topic}: {event.reason}"
        self.health["broker"] = "error"
        self._log("error", f"broker refused a publish to {event.topic}: {event.reason}")

    def _on_MessageReceived(self, event: MessageReceived) -> None:
        if event.retained:
            command_id, command_type = identify(event.payload)
            self._ack(command_id, command_type, RETAINED_COMMAND, "retained commands are ignored; publish with retain=false")
            return
        try:
            command = check_command(event.payload, self.settings.policy, self.clock.wall(), self._replay.__contains__)
        except CommandRejected as refusal:
            self._refuse(refusal.command_id, refusal.command_type, refusal)
            return
        try:
            self._require_allowed(command.type, command.body)
        except CommandRejected as refusal:
            self._refuse(command.id, command.type, refusal)
            return
        self._remember(command)
        self._log("info", f"command {command.id} ({command.type}) accepted")
        self._apply(command.type, command.body)
        self._ack(command.id, command.type)

    def _on_ButtonDown(self, event: ButtonDown) -> None:
        if self._button_down_at is None:
            self._button_down_at = self.clock.monotonic()
            self._hold_fired = False

    def _on_ButtonUp(self, event: ButtonUp) -> None:
        if self._button_down_at is None:
            return
        was_hold = self._hold_fired
        self._button_down_at = None
        self._hold_fired = False
        if not was_hold:
            self._on_short_press()

    def _on_MediaStatus(self, event: MediaStatus) -> None:
        previous = self.health.get(event.kind)
        self.health[event.kind] = event.status
        if event.status in ("retrying", "failed") and previous != event.status:
            self._event("media.error", kind=event.kind, status=event.status, detail=event.detail)
        if self.state == JOINING:
            self._maybe_joined()
        elif self.state == LEAVING and self._media_stopped():
            self._finish_leaving()

    def _on_HealthReport(self, event: HealthReport) -> None:
        if self.health.get(event.component) != event.value and event.value in BROKEN_HEALTH:
            self._log("error", f"{event.component} is {event.value}: {event.detail}")
        self.health[event.component] = event.value
        self._reported.add(event.component)
        if self.state == JOINING:
            self._maybe_joined()

    def _on_CheckpointDue(self, event: CheckpointDue) -> None:
        self._checkpoint()

    def _checkpoint(self, publish: bool = False) -> None:
        # The ledger's segment up to now still carries the flags from before this event.
        ledger = self.uptime
        changed = ledger.checkpoint(self.clock.monotonic(), self.clock.wall(), self.health["clock"] == "synced")
        self._emit(SaveUptime(tuple(copy.copy(ledger.days[date]) for date in sorted(changed)),
                              copy.deepcopy(ledger.state), ledger.pending(), tuple(sorted(ledger.days))))
        now = self.clock.monotonic()
        due = self._uptime_published_at is None or now - self._uptime_published_at >= self.settings.uptime_publish_s - 1
        if self.broker_connected and (publish or due):
            self._uptime_published_at = now
            self._emit(Publish(self.topics.uptime, self.uptime_payload(), retain=True))

    def uptime_payload(self) -> dict[str, Any]:
        return {"v": 1, "site": self.settings.site_id, "tz": self.uptime.timezone,
                "days": self.uptime.messages_days(), "at": rfc3339(self.clock.wall())}

    def _on_ProvisionRejected(self, event: ProvisionRejected) -> None:
        self.provision_problems = event.problems
        self._log("error", "site file on the boot partition rejected: " + "; ".join(event.problems))
        self._event("provision.rejected", problems=list(event.problems))

    def _on_TelemetryDue(self, event: TelemetryDue) -> None:
        if not self.broker_connected:
            return  # queued, it would arrive late with an old `at` and pass for connected time at the console
        payload = {
            "v": 1,
            "site": self.settings.site_id,
            "at": rfc3339(self.clock.wall()),
            "uptime_s": round(self.clock.monotonic() - self.started_at, 1),
            "boot_id": self.settings.boot_id,
            "mqtt_reconnects": self.reconnects,
            "state": self.state,
            **event.sample,
        }
        self._emit(Publish(self.topics.telemetry, payload))

    # --- the panel button -----------------------------------------------------------------------
    def _on_short_press(self) -> None:
        if self.state == MEETING_AVAILABLE:
            self._event("button.press", result="joining")
            self._begin_join()
        elif self.state == IDLE:
            self._event("button.press", result="no_meeting")
            self._show_notice("no_meeting")
        else:
            self._event("button.press", result="ignored")
            self._show_notice("hold_to_leave" if self.state in (JOINING, IN_MEETING) else "please_wait")

    def _on_hold(self) -> None:
        if self.state in (JOINING, IN_MEETING):
            self._event("button.hold", result="leaving")
            self._begin_leave(reason="button")
        else:
            self._event("button.hold", result="ignored")
            self._show_notice("nothing_to_leave")

    # --- commands -------------------------------------------------------------------------------
    def _require_allowed(self, action: str, body: dict[str, Any]) -> None:
        """Raise invalid_state when the current state cannot take `action`."""
        problem = None
        if action == "meeting.start":
            busy = self.state in (JOINING, IN_MEETING)
            if busy and self.meeting and self.meeting.meeting_id != body["meeting_id"]:
                problem = f"already in meeting {self.meeting.meeting_id!r}; end it first"
        elif action == "meeting.end":
            if self.meeting is None or self.meeting.meeting_id != body["meeting_id"]:
                current = self.meeting.meeting_id if self.meeting else "none"
                problem = f"meeting {body['meeting_id']!r} is not the current meeting (current: {current})"
        elif action == "selftest":
            if self.state in (JOINING, IN_MEETING, LEAVING):
                problem = "no self-test during a meeting; leave the meeting first"
        elif action == "join":
            if self.state == IDLE:
                problem = "no meeting has been announced to this site"
            elif self.state == LEAVING:
                problem = "still leaving the previous meeting; try again in a moment"
        if problem:
            raise CommandRejected(INVALID_STATE, f"{problem} (state {self.state})")

    def _apply(self, action: str, body: dict[str, Any]) -> str:
        if action == "meeting.start":
            meeting = Meeting(body["meeting_id"], body["title"], body["program_url"],
                              body["ingest_url"].replace("{site}", self.settings.site_id), bool(body.get("auto_join")))
            if self.state in (IDLE, MEETING_AVAILABLE):
                self.meeting = meeting
                self._transition(MEETING_AVAILABLE)
                if meeting.auto_join:
                    self._begin_join()
            elif self.state == LEAVING:
                self.meeting = meeting  # offered again as soon as the old one is left
            return f"meeting {meeting.meeting_id} announced"
        if action == "meeting.end":
            self.meeting = None
            if self.state == MEETING_AVAILABLE:
                self._transition(IDLE)
            elif self.state in (JOINING, IN_MEETING):
                self._begin_leave(reason="meeting.end")
            return "meeting ended"
        if action == "join":
            if self.state == MEETING_AVAILABLE:
                self._begin_join()
                return "joining"
            return f"already {self.state}"
        if action == "leave":
            if self.state in (JOINING, IN_MEETING):
                self._begin_leave(reason="leave")
                return "leaving"
            return f"not in a meeting (state {self.state})"
        if action == "selftest":
            self._emit(RunSelftest())
            return "self-test started"
        return "pong"

    def _remember(self, command: Command) -> None:
        now = self.clock.wall()
        while self._expiries and self._expiries[0][0] <= now:
            expiry, command_id = heapq.heappop(self._expiries)
            if self._replay.get(command_id) == expiry:
                del self._replay[command_id]
        self._replay[command.id] = command.expires_at
        heapq.heappush(self._expiries, (command.expires_at, command.id))
        self._emit(RememberCommand(command.id, command.expires_at))

    def _refuse(self, command_id: str | None, command_type: str | None, refusal: CommandRejected) -> None:
        self._log("warning", f"command {command_id or '?'} refused: {refusal}")
        self._ack(command_id, command_type, refusal.code, refusal.message)

    def _ack(self, command_id: str | None, command_type: str | None, code: str | None = None, message: str = "") -> None:
        payload: dict[str, Any] = {
            "v": 1, "site": self.settings.site_id, "id": command_id, "type": command_type,
            "ok": code is None, "state": self.state,
        }
        if code is not None:
            payload["error"] = {"code": code, "message": message}
        payload["at"] = rfc3339(self.clock.wall())
        self._emit(Publish(self.topics.ack, payload))

    # --- joining and leaving --------------------------------------------------------------------
    def _begin_join(self) -> None:
        assert self.meeting is not None
        self._transition(JOINING)
        if self.settings.camera_enabled:
            self._emit(StartUplink(self.meeting.ingest_url))
        if self.settings.display_enabled:
            self._emit(StartProgram(self.meeting.program_url))
        self._state_deadline = self.clock.monotonic() + self.settings.join_timeout_s
        self._maybe_joined()

    def _enter_meeting(self, degraded: bool) -> None:
        self._state_deadline = None
        self.uptime.count(self.clock.monotonic(), "meetings_joined")
        self._transition(IN_MEETING)
        meeting_id = self.meeting.meeting_id if self.meeting else None
        self._event("meeting.joined", meeting_id=meeting_id, degraded=degraded,
                    uplink=self.health["uplink"], program=self.health["program"])

    def _begin_leave(self, reason: str) -> None:
        self._leave_reason = reason
        self._transition(LEAVING)
        if self.settings.camera_enabled:
            self._emit(StopUplink())
        if self.settings.display_enabled:
            self._emit(StopProgram())
        if self._media_stopped():
            self._finish_leaving()
        else:
            self._state_deadline = self.clock.monotonic() + self.settings.leave_timeout_s

    def _finish_leaving(self) -> None:
        self._state_deadline = None
        self._event("meeting.left", reason=self._leave_reason)
        self._transition(MEETING_AVAILABLE if self.meeting else IDLE)

    def _media_parts(self) -> list[tuple[bool, bool]]:
        """(ready, hopeless) of each enabled part; hopeless = failed or its device is missing/broken."""
        parts = []
        if self.settings.camera_enabled:
            parts.append((self.health["uplink"] == "live",
                          self.health["uplink"] == "failed" or self._is_broken("camera")))
        if self.settings.display_enabled:
            parts.append((self.health["program"] == "playing",
                          self.health["program"] == "failed" or self._is_broken("display")))
        return parts

    def _maybe_joined(self) -> None:
        """Join as soon as every part works, or at once degraded when the rest can no longer come."""
        parts = self._media_parts()
        if all(ready for ready, _ in parts):
            self._enter_meeting(degraded=False)
        elif all(ready or hopeless for ready, hopeless in parts):
            self._enter_meeting(degraded=True)

    def _media_stopped(self) -> bool:
        uplink_ok = not self.settings.camera_enabled or self.health["uplink"] in UPLINK_STOPPED
        program_ok = not self.settings.display_enabled or self.health["program"] in PROGRAM_STOPPED
        return uplink_ok and program_ok

    def _media_summary(self) -> str:
        return f"uplink {self.health['uplink']}, program {self.health['program']}"

    def _transition(self, state: str) -> None:
        if state != self.state:
            self._log("info", f"state {self.state} -> {state}")
            self.state = state
            self.since = self.clock.wall()

    # --- outputs derived from the state ---------------------------------------------------------
    def _is_broken(self, part: str) -> bool:
        return part in self._reported and self.health[part] in BROKEN_HEALTH

    def _broken(self) -> bool:
        parts_broken = any(self._is_broken(part) for part in ("panel", "camera", "display"))
        return parts_broken or bool(self.publish_denied) or bool(self.provision_problems)

    def _led_pattern(self) -> led.LedPattern:
        return led_pattern(self.state, self.broker_connected, self._broken())

    def _screen(self) -> tuple[str, dict[str, Any]]:
        screen = screen_name(self.state, self.broker_connected, self._is_broken("camera"), self.health,
                             bool(self.provision_problems))
        info = {
            "problems": list(self.provision_problems),
            "site_name": self.settings.site_name or self.settings.site_id,
            "title": self.meeting.title if self.meeting else None,
            "notice": self._notice[0] if self._notice else None,
            "broker_connected": self.broker_connected,
            "uplink": self.health["uplink"],
            "program": self.health["program"],
            "camera": self.health["camera"],
        }
        return screen, info

    def _state_payload(self) -> dict[str, Any]:
        return {
            "v": 1,
            "site": self.settings.site_id,
            "online": True,
            "state": self.state,
            "meeting": {"meeting_id": self.meeting.meeting_id, "title": self.meeting.title} if self.meeting else None,
            "since": rfc3339(self.since),
            "version": self.settings.version,
            "boot_id": self.settings.boot_id,
            "health": dict(self.health),
            "at": rfc3339(self.clock.wall()),
        }

    def _finish(self) -> list[Effect]:
        """Emit whatever derived output changed, then hand the accumulated effects over."""
        self.uptime.observe(self.clock.monotonic(), self.broker_connected, self.state == IN_MEETING)
        payload = self._state_payload()
        fingerprint = (payload["state"], str(payload["meeting"]), str(payload["health"]))
        if fingerprint != self._published:
            self._published = fingerprint
            # Offline, a state would only queue up stale; the reconnect publishes the current one.
            if self.broker_connected:
                self._emit(Publish(self.topics.state, payload, retain=True))
            self._emit(NotifyStatus(f"{self.state}; broker {self.health['broker']}"))
        if self._connect_checkpoint:
            self._connect_checkpoint = False
            self._checkpoint(publish=True)
        screen, info = self._screen()
        shown = (screen, str(sorted(info.items())), self._led_pattern())
        if shown != self._shown:
            if self._shown is None or shown[2] != self._shown[2]:
                self._emit(SetLed(shown[2]))
            if self._shown is None or shown[:2] != self._shown[:2]:
                self._emit(ShowScreen(screen, info))
            self._shown = shown
        effects, self._effects = self._effects, []
        return effects

    def _show_notice(self, notice: str) -> None:
        self._notice = (notice, self.clock.monotonic() + self.settings.notice_s)

    def _event(self, event_type: str, **fields: Any) -> None:
        payload = {"v": 1, "site": self.settings.site_id, "at": rfc3339(self.clock.wall()), "type": event_type, **fields}
        self._emit(Publish(self.topics.event, payload))

    def _log(self, level: str, message: str) -> None:
        self._emit(Log(level, message))

    def _emit(self, effect: Effect) -> None:
        self._effects.append(effect)
