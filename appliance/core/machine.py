"""The appliance's state machine: events in, effects out, time from an injected clock.

States follow the contract: idle -> meeting_available -> joining -> in_meeting -> leaving -> idle
(or back to meeting_available when the meeting goes on without us). Which trigger leads where is
data, in `transitions.py`; this module turns events into triggers, does the actions the table
names, and derives everything the person and the centre see (LED, screen, retained state).
The self-test runs here too (see `selftest.py`): only its hardware probes are outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.core import floor as fl
from appliance.core import io, transitions
from appliance.core import selftest as st
from appliance.core.clock import Clock, rfc3339
from appliance.core.floor_flow import FloorFlow
from appliance.core.outputs import BROKEN_HEALTH, OutputsFlow
from appliance.core.panel_flow import PanelFlow
from appliance.core.protocol import (
    DEFAULT_TOPIC_PREFIX,
    INVALID_STATE,
    RETAINED_COMMAND,
    STORAGE_FAILED,
    Command,
    CommandPolicy,
    CommandRejected,
    Topics,
    check_command,
    identify,
)
from appliance.core.remote_flow import RemoteFlow
from appliance.core.replay import ReplayMemory
from appliance.core.selftest_flow import SelftestFlow
from appliance.core.transitions import IDLE, IN_MEETING, JOINING, LEAVING, MEETING_AVAILABLE, Step
from appliance.core.update_flow import UpdateFlow
from appliance.core.uptime import UptimeLedger
from appliance.core.uptime_flow import UptimeFlow

UPLINK_STOPPED = ("idle", "failed")
PROGRAM_STOPPED = ("idle", "failed")
# The local control socket may ask for these; the rest come only as signed commands.
LOCAL_ACTIONS = ("join", "leave", "selftest")


@dataclass(frozen=True)
class Meeting:
    meeting_id: str
    title: str
    program_url: str
    ingest_url: str
    auto_join: bool = False
    floor_mode: str = fl.MODERATED


@dataclass(frozen=True)
class CoreSettings:
    site_id: str
    site_kind: str
    policy: CommandPolicy
    site_name: str = ""
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    hold_s: float = 3.0
    # Held this long while idle, the button starts the interactive self-test (the technician's way in).
    selftest_hold_s: float = 10.0
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
    language: str = "id"  # of the texts the core writes itself (the self-test's)
    # Presses closer together than this are one press: faster than a person can see the LED change.
    floor_debounce_s: float = 0.5
    # A speaking site whose broker has been gone this long mutes itself: the centre cannot revoke.
    floor_offline_mute_s: float = 5.0
    echo_mode: str = "aec"  # audio.echo: "duck" makes the core lower the program while the site speaks
    update_window: str = ""  # update.window: "HH:MM-HH:MM" local time for the reboot into an update; "" = any idle moment
    update_health_timeout_s: float = 300.0  # a new version not healthy this long after its boot is given back


@dataclass
class Outcome:
    ok: bool
    message: str
    effects: list[io.Effect] = field(default_factory=list)


class ApplianceCore(OutputsFlow, UptimeFlow, SelftestFlow, FloorFlow, UpdateFlow, RemoteFlow, PanelFlow):
    def __init__(self, settings: CoreSettings, clock: Clock,
                 replay_memory: dict[str, float | tuple[float, float | None]] | None = None,
                 uptime: UptimeLedger | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.topics = Topics(settings.topic_prefix, settings.site_id, settings.site_kind)
        self.state = IDLE
        self.meeting: Meeting | None = None
        self.floor: fl.Floor | None = None  # while joining or in the meeting (see floor_flow.py)
        self._floor_pressed_at: float | None = None
        self._broker_lost_at: float | None = None
        self._microphone_shown: bool | None = None  # None: not told yet, so the first _finish says "muted"
        self._ducked_shown = False
        self.since = clock.wall()
        self.started_at = clock.monotonic()
        self.broker_connected = False
        self.broker_problem = "not connected yet"
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
            # The microphone's path (adapters/audio.py): the echo canceller in the audio engine, or ALSA.
            "audio": "missing" if settings.camera_enabled else "disabled",
            "disk": "ok",  # the state directory (the uptime ledger): "error" while saves cannot reach it
        }
        self._replay = ReplayMemory(replay_memory, clock.wall(), clock.monotonic())
        # Commands whose id is being written to disk: acted on (or refused) once CommandStored says so.
        self._awaiting_store: dict[str, tuple[Command, CommandRejected | None]] = {}
        self._button_down_at: float | None = None
        self._hold_fired = False
        self._long_hold_fired = False
        self._pressed_in = IDLE
        self._state_deadline: float | None = None
        self._leave_reason = ""
        self.provision_problems: tuple[str, ...] = ()
        # Until a backend has reported, "missing" is a default, not a finding: it must not blink "broken".
        self._reported: set[str] = set()
        self._notice: tuple[str, float] | None = None
        self.selftest: st.SelftestRun | None = None
        self._selftest_runs = 0
        self._selftest_result: tuple[bool, list[str], float] | None = None  # ok, lines, shown until
        self._effects: list[io.Effect] = []
        self._shown: tuple[Any, ...] | None = None
        self._published: tuple[Any, ...] | None = None
        self.uptime = uptime or UptimeLedger(settings.timezone)
        self._connect_checkpoint = False
        # Remote updates (update_flow.py): the slots as the updater reports them, the update under way.
        self.software: dict[str, Any] = {"running": settings.version, "other_slot": None}
        self.update: Any = None  # update.Update while one is under way
        self._update_busy = False  # an update effect is out and not answered yet
        self._update_deadline: float | None = None  # a trial version must be healthy by then
        self._update_selftest_started = False
        self._passed_checks: tuple[str, ...] = ()  # of the last self-test: an update must pass them too
        self._rolled_back: dict[str, str] | None = None  # a given-back update the centre has not heard of yet
        self._uptime_published_at: float | None = None

    # --- public API -----------------------------------------------------------------------------
    def start(self) -> list[io.Effect]:
        self._log("info", f"site {self.settings.site_id} starting in state {self.state}")
        self.uptime.start(self.clock.monotonic(), self.settings.boot_id, self.broker_connected, self.state == IN_MEETING)
        return self._finish()

    def handle(self, event: io.Event) -> list[io.Effect]:
        handler = EVENT_HANDLERS.get(type(event))
        if handler is None:
            raise io.Unhandled(f"the core has no handler for event {type(event).__name__}")
        handler(self, event)
        return self._finish()

    def local(self, action: str, interactive: bool = False) -> Outcome:
        """A request from the local control socket (`appliance join|leave|selftest`)."""
        if action not in LOCAL_ACTIONS:
            raise ValueError(f"unknown local action {action!r}")
        before = self.state
        try:
            step = self._check(action, {})
        except CommandRejected as refusal:
            return Outcome(False, refusal.message, self._finish())
        self._take(step, {"reason": action, "interactive": interactive})
        if action == "selftest":
            message = "self-test started"
        elif action == "join":
            message = "joining" if before == MEETING_AVAILABLE else f"already {before}"
        else:
            message = "leaving" if before in (JOINING, IN_MEETING) else f"not in a meeting (state {before})"
        return Outcome(True, message, self._finish())

    def replay_memory(self) -> dict[str, float]:
        """The accepted command ids still remembered against replay, with their expiry times."""
        return self._replay.snapshot()

    def next_deadline(self) -> float | None:
        deadlines = [self._state_deadline, self._floor_deadline(), *self._update_deadlines()]
        deadlines += self._button_deadlines()
        if self._notice:
            deadlines.append(self._notice[1])
        if self.selftest:
            deadlines += self.selftest.deadlines()
        if self._selftest_result:
            deadlines.append(self._selftest_result[2])
        pending = [deadline for deadline in deadlines if deadline is not None]
        return min(pending) if pending else None

    def tick(self) -> list[io.Effect]:
        now = self.clock.monotonic()
        self._button_tick(now)
        if self._notice and now >= self._notice[1]:
            self._notice = None
        self._floor_tick(now)
        if self.selftest:
            self.selftest.expire(now)
            self._selftest_progress()
        if self._selftest_result and now >= self._selftest_result[2]:
            self._selftest_result = None
        if self._state_deadline is not None and now >= self._state_deadline:
            self._state_deadline = None
            if self.state == JOINING:
                self._log("warning", f"join timed out after {self.settings.join_timeout_s:g} s: {self._media_summary()}")
                self._fire("media_degraded")
            elif self.state == LEAVING:
                self._log("warning", f"media did not stop within {self.settings.leave_timeout_s:g} s; leaving anyway")
                self._fire_left()
        return self._finish()

    def status(self) -> dict[str, Any]:
        return {
            **self._state_payload(),
            "broker_connected": self.broker_connected,
            "led": self._led_pattern().name,
            "screen": self._screen()[0],
            "provision_problems": list(self.provision_problems),
            "selftest": None if self.selftest is None else
            {"interactive": self.selftest.interactive, "waiting_press": self.selftest.waiting_press},
        }

    # --- events ---------------------------------------------------------------------------------
    def _on_broker_connected(self, event: io.BrokerConnected) -> None:
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self.broker_connected = True
        self.broker_problem = ""
        self.publish_denied = ""
        self.health["broker"] = "ok"
        self._published = None  # republish the retained state on every (re)connect
        self._connect_checkpoint = True  # and the retained ledger, with the outage just ended on it
        self._floor_broker_connected()
        self._update_broker_connected()

    def _on_broker_disconnected(self, event: io.BrokerDisconnected) -> None:
        self.broker_connected = False
        self.broker_problem = event.reason
        self.health["broker"] = "error"
        self._log("warning", f"broker connection lost: {event.reason}")
        self._floor_broker_lost()

    def _on_publish_denied(self, event: io.PublishDenied) -> None:
        self.publish_denied = f"{event.topic}: {event.reason}"
        self.health["broker"] = "error"
        self._log("error", f"broker refused a publish to {event.topic}: {event.reason}")
        if self.selftest and event.receipt == self.selftest.receipt:
            self.selftest.record("broker", st.result(False, "selftest.broker.refused", reason=event.reason))
            self._selftest_progress()

    def _on_message(self, event: io.MessageReceived) -> None:
        if event.retained:
            command_id, command_type = identify(event.payload)
            self._ack(command_id, command_type, RETAINED_COMMAND, "retained commands are ignored; publish with retain=false")
            return
        try:
            command = check_command(event.payload, self.settings.policy, self.clock.wall(), self._replay.__contains__)
        except CommandRejected as refused:
            if refused.command is not None:  # signed and valid but for its URLs: taken all the same
                self._store(refused.command, refused)
            else:
                self._refuse(refused)
            return
        refusal = None
        try:
            self._check(command.type, command.body)
        except CommandRejected as refused:
            # Signed and for this site, only refused for the state: its id is taken all the same, so
            # the same command cannot come back later when the state would allow it.
            refusal = refused
        self._store(command, refusal)

    def _store(self, command: Command, refusal: CommandRejected | None) -> None:
        """Write first, then act: the command waits for CommandStored (see `_on_command_stored`)."""
        wall, monotonic = self.clock.wall(), self.clock.monotonic()
        held_until = self._replay.add(command.id, command.expires_at, wall, monotonic)
        self._awaiting_store[command.id] = (command, refusal)
        forget = self._replay.forget_expired(wall, monotonic, self.health["clock"] == "synced")
        self._emit(io.RememberCommand(command.id, command.expires_at, tuple(forget), held_until))

    def _on_command_stored(self, event: io.CommandStored) -> None:
        pending = self._awaiting_store.pop(event.command_id, None)
        if pending is None:
            return
        command, refusal = pending
        if not event.ok:
            self._log("error", f"cannot save command id {command.id} for replay protection: {event.detail}")
        if refusal is None and not event.ok:
            self._replay.discard(command.id)  # not carried out, so it may be sent again
            refusal = CommandRejected(STORAGE_FAILED, "the command id could not be saved for replay protection "
                                      f"({event.detail}); nothing was done: free space on the SD card, then send it again")
        if refusal is None:
            try:  # the state is checked again: it may have changed while the id was being written
                step = self._check(command.type, command.body)
            except CommandRejected as refused:
                refusal = refused
        if refusal is not None:
            refusal.command_id, refusal.command_type = command.id, command.type  # the ack names it
            self._refuse(refusal)
            return
        self._log("info", f"command {command.id} ({command.type}) accepted")
        self._take(step, {"body": command.body, "reason": command.type, "command_id": command.id})
        self._ack(command.id, command.type)

    def _refuse(self, refusal: CommandRejected) -> None:
        self._log("warning", f"command {refusal.command_id or '?'} refused: {refusal}")
        self._ack(refusal.command_id, refusal.command_type, refusal.code, refusal.message)

    def _on_media_status(self, event: io.MediaStatus) -> None:
        previous = self.health.get(event.kind)
        self.health[event.kind] = event.status
        if event.status in ("retrying", "failed") and previous != event.status:
            self._event("media.error", kind=event.kind, status=event.status, detail=event.detail)
        self._media_changed()

    def _on_health_report(self, event: io.HealthReport) -> None:
        if self.health.get(event.component) != event.value and event.value in BROKEN_HEALTH:
            self._log("error", f"{event.component} is {event.value}: {event.detail}")
        self.health[event.component] = event.value
        self._reported.add(event.component)
        self._media_changed()

    def _on_provision_rejected(self, event: io.ProvisionRejected) -> None:
        self.provision_problems = event.problems
        self._log("error", "site file on the boot partition rejected: " + "; ".join(event.problems))
        self._event("provision.rejected", problems=list(event.problems))

    # --- triggers and the transition table ------------------------------------------------------
    def _trigger(self, action: str, body: dict[str, Any]) -> str:
        """Resolve an action (a command type or a panel input) into the table's trigger."""
        current = self.meeting.meeting_id if self.meeting else None
        if action == "meeting.start":
            return "start_same" if body["meeting_id"] == current else "start_new"
        if action == "meeting.end":
            return "end_current" if body["meeting_id"] == current else "end_other"
        if action in ("floor.grant", "floor.revoke"):
            return action.replace(".", "_") if body["meeting_id"] == current else "floor_other"
        if action == "reboot":
            return "reboot_forced" if body.get("force") else "reboot"
        return action

    def _check(self, action: str, body: dict[str, Any]) -> Step:
        """The step the table gives; raise invalid_state when it refuses (nothing changes then)."""
        step = transitions.step(self.state, self._trigger(action, body))
        problem = ""
        if step.refused:
            current = self.meeting.meeting_id if self.meeting else "none"
            problem = step.refusal.format(current=current, requested=body.get("meeting_id"))
        elif action == "selftest" and self.selftest is not None:
            problem = "a self-test is already running"
        elif action == "update":
            problem = self._update_refusal(body) or ""
        if problem:
            raise CommandRejected(INVALID_STATE, f"{problem} (state {self.state})")
        return step

    def _take(self, step: Step, context: dict[str, Any]) -> None:
        self._transition(step.target)
        if step.action:
            ACTIONS[step.action](self, context)

    def _fire(self, trigger: str, **context: Any) -> None:
        """A trigger from inside the machine (media, timeouts): the table never refuses these."""
        self._take(transitions.step(self.state, trigger), context)

    def _fire_left(self) -> None:
        self._fire("left_meeting_goes_on" if self.meeting else "left_no_meeting")

    def _transition(self, state: str) -> None:
        if state != self.state:
            self._log("info", f"state {self.state} -> {state}")
            self.state = state
            self.since = self.clock.wall()
            self._selftest_result = None  # what the person must act on now outranks an old result

    # --- actions the table names ----------------------------------------------------------------
    def _announce(self, context: dict[str, Any]) -> None:
        self.meeting = self._meeting_from(context["body"])
        if self.meeting.auto_join:
            self._fire("join")

    def _queue_meeting(self, context: dict[str, Any]) -> None:
        self.meeting = self._meeting_from(context["body"])

    def _meeting_from(self, body: dict[str, Any]) -> Meeting:
        # check_command hands over the URLs rebuilt, `{site}` already replaced by this site's id.
        return Meeting(body["meeting_id"], body["title"], body["program_url"], body["ingest_url"],
                       bool(body.get("auto_join")), body.get("floor", fl.MODERATED))

    def _forget_meeting(self, context: dict[str, Any]) -> None:
        self.meeting = None

    def _forget_meeting_and_leave(self, context: dict[str, Any]) -> None:
        self._floor_end(self.meeting.meeting_id if self.meeting else None)
        self.meeting = None
        self._begin_leave(context)

    def _begin_join(self, context: dict[str, Any]) -> None:
        assert self.meeting is not None
        self._abandon_selftest("selftest.unfinished.meeting")
        self._floor_begin()
        if self.settings.camera_enabled:
            self._emit(io.StartUplink(self.meeting.ingest_url, microphone_live=self._microphone_live()))
        if self.settings.display_enabled:
            self._emit(io.StartProgram(self.meeting.program_url))
        self._state_deadline = self.clock.monotonic() + self.settings.join_timeout_s
        self._media_changed()

    def _enter_meeting(self, context: dict[str, Any], degraded: bool = False) -> None:
        self._state_deadline = None
        self.uptime.count(self.clock.monotonic(), "meetings_joined")
        meeting_id = self.meeting.meeting_id if self.meeting else None
        self._event("meeting.joined", meeting_id=meeting_id, degraded=degraded,
                    uplink=self.health["uplink"], program=self.health["program"])

    def _enter_meeting_degraded(self, context: dict[str, Any]) -> None:
        self._enter_meeting(context, degraded=True)

    def _begin_leave(self, context: dict[str, Any]) -> None:
        self._leave_reason = context.get("reason", "")
        self._floor_end(self.meeting.meeting_id if self.meeting else None)
        if self.settings.camera_enabled:
            self._emit(io.StopUplink())
        if self.settings.display_enabled:
            self._emit(io.StopProgram())
        self._state_deadline = self.clock.monotonic() + self.settings.leave_timeout_s
        self._media_changed()

    def _finish_leaving(self, context: dict[str, Any]) -> None:
        self._state_deadline = None
        self._event("meeting.left", reason=self._leave_reason)

    # --- media ----------------------------------------------------------------------------------
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

    def _media_changed(self) -> None:
        """Join as soon as every part works, or at once degraded when the rest can no longer come;
        finish leaving as soon as every part stopped."""
        if self.state == JOINING:
            parts = self._media_parts()
            if all(ready for ready, _ in parts):
                self._fire("media_ready")
            elif all(ready or hopeless for ready, hopeless in parts):
                self._fire("media_degraded")
        elif self.state == LEAVING and self._media_stopped():
            self._fire_left()

    def _media_stopped(self) -> bool:
        uplink_ok = not self.settings.camera_enabled or self.health["uplink"] in UPLINK_STOPPED
        program_ok = not self.settings.display_enabled or self.health["program"] in PROGRAM_STOPPED
        return uplink_ok and program_ok

    def _media_summary(self) -> str:
        return f"uplink {self.health['uplink']}, program {self.health['program']}"

    # --- replay memory and answers --------------------------------------------------------------
    def _ack(self, command_id: str | None, command_type: str | None, code: str | None = None, message: str = "") -> None:
        payload: dict[str, Any] = {
            "v": 1, "site": self.settings.site_id, "id": command_id, "type": command_type,
            "ok": code is None, "state": self.state,
        }
        if code is not None:
            payload["error"] = {"code": code, "message": message}
        payload["at"] = rfc3339(self.clock.wall())
        self._emit(io.Publish(self.topics.ack, payload))

def _notice(name: str) -> Callable[[ApplianceCore, dict[str, Any]], None]:
    return lambda core, context: core._show_notice(name)


# What each action named in transitions.TRANSITIONS does (a test checks every name is here).
ACTIONS: dict[str, Callable[[ApplianceCore, dict[str, Any]], None]] = {
    "announce": ApplianceCore._announce,
    "queue_meeting": ApplianceCore._queue_meeting,
    "forget_meeting": ApplianceCore._forget_meeting,
    "forget_meeting_and_leave": ApplianceCore._forget_meeting_and_leave,
    "begin_join": ApplianceCore._begin_join,
    "enter_meeting": ApplianceCore._enter_meeting,
    "enter_meeting_degraded": ApplianceCore._enter_meeting_degraded,
    "begin_leave": ApplianceCore._begin_leave,
    "finish_leaving": ApplianceCore._finish_leaving,
    "selftest": SelftestFlow._start_selftest,
    "selftest_interactive": SelftestFlow._start_selftest,  # context["interactive"] is set by _on_long_hold
    "floor_press": FloorFlow._floor_press,
    "floor_grant": FloorFlow._floor_grant,
    "floor_revoke": FloorFlow._floor_revoke,
    "update": UpdateFlow._accept_update,
    "send_logs": RemoteFlow._send_logs,
    "send_screenshot": RemoteFlow._send_screenshot,
    "reboot": RemoteFlow._reboot,
    "notice_no_meeting": _notice("no_meeting"),
    "notice_nothing_to_leave": _notice("nothing_to_leave"),
    "notice_hold_to_leave": _notice("hold_to_leave"),
    "notice_please_wait": _notice("please_wait"),
}

# Every event type the core takes (a test checks this against io.EVENTS).
EVENT_HANDLERS: dict[type, Callable[[ApplianceCore, Any], None]] = {
    io.BrokerConnected: ApplianceCore._on_broker_connected,
    io.BrokerDisconnected: ApplianceCore._on_broker_disconnected,
    io.PublishDenied: ApplianceCore._on_publish_denied,
    io.PublishAcked: SelftestFlow._on_publish_acked,
    io.MessageReceived: ApplianceCore._on_message,
    io.ButtonDown: PanelFlow._on_button_down,
    io.ButtonUp: PanelFlow._on_button_up,
    io.MediaStatus: ApplianceCore._on_media_status,
    io.HealthReport: ApplianceCore._on_health_report,
    io.ProvisionRejected: ApplianceCore._on_provision_rejected,
    io.SelftestCheckDone: SelftestFlow._on_selftest_check_done,
    io.CommandStored: ApplianceCore._on_command_stored,
    io.TelemetryDue: UptimeFlow._on_telemetry_due,
    io.CheckpointDue: UptimeFlow._on_checkpoint_due,
    io.SoftwareReport: UpdateFlow._on_software_report,
    io.UpdateProgress: UpdateFlow._on_update_progress,
    io.UpdateStepDone: UpdateFlow._on_update_step_done,
    io.ReplyData: RemoteFlow._on_reply_data,
}
