"""The state machine, its transitions and LED patterns, on a fake clock."""

from __future__ import annotations

import pytest

from appliance.core import io, led
from appliance.core.machine import IDLE, IN_MEETING, JOINING, LEAVING, MEETING_AVAILABLE
from tests.core_helpers import announce, command, events, make_core, press, published
from tests.support.site import meeting_body


def test_start_publishes_retained_state_and_led() -> None:
    core, _ = make_core()
    states = [e for e in core.handle(io.BrokerConnected()) if isinstance(e, io.Publish)]
    assert states and states[0].retain and states[0].payload["state"] == IDLE
    assert core.status()["led"] == "off"


def test_full_cycle_with_button() -> None:
    core, clock = make_core()
    assert announce(core)["state"] == MEETING_AVAILABLE
    assert core.status()["led"] == "slow_blink"
    effects = press(core, clock, 0.3)
    assert core.state == IN_MEETING and core.status()["led"] == "on"
    assert events(effects) == ["button.press", "meeting.joined"]
    effects = press(core, clock, 3.5)
    assert events(effects) == ["button.hold", "meeting.left"]
    assert core.state == MEETING_AVAILABLE  # the meeting goes on; the site may rejoin
    ack, _ = command(core, "meeting.end", {"meeting_id": "m1"})
    assert ack["ok"] and ack["state"] == IDLE


def test_hold_fires_at_hold_s_while_still_held() -> None:
    core, clock = make_core()
    announce(core)
    press(core, clock)
    core.handle(io.ButtonDown())
    clock.advance(2.9)
    assert core.tick() == [] and core.state == IN_MEETING
    clock.advance(0.1)
    effects = core.tick()
    assert "button.hold" in events(effects) and core.state == MEETING_AVAILABLE
    assert events(core.handle(io.ButtonUp())) == []  # the release after a hold is not a second press


@pytest.mark.parametrize("state_setup, press_result", [
    ("idle", "no_meeting"), ("joining", "ignored"),
])
def test_short_press_without_effect_says_so(state_setup: str, press_result: str) -> None:
    core, clock = make_core(camera=True)  # with media to wait for, joining lasts
    if state_setup == "joining":
        announce(core)
        command(core, "join")
    before = core.state
    effects = press(core, clock)
    assert core.state == before
    assert published(effects, "/event")[0]["result"] == press_result
    screens = [e for e in effects if isinstance(e, io.ShowScreen)]
    assert screens and screens[-1].info["notice"] in ("no_meeting", "hold_to_leave")
    clock.advance(10)
    later = core.tick()
    assert [e for e in later if isinstance(e, io.ShowScreen)][-1].info["notice"] is None


def test_auto_join() -> None:
    core, _ = make_core()
    ack = announce(core, auto_join=True)
    assert ack["ok"] and core.state == IN_MEETING


def test_join_waits_for_media_then_times_out_degraded() -> None:
    core, clock = make_core(camera=True, display=True)
    announce(core)
    ack, effects = command(core, "join")
    assert ack["state"] == JOINING and core.status()["led"] == "fast_blink"
    assert {type(e) for e in effects} >= {io.StartUplink, io.StartProgram}
    uplink = [e for e in effects if isinstance(e, io.StartUplink)][0]
    assert uplink.url == "rtmp://127.0.0.1/live/kalibaru"  # {site} replaced
    core.handle(io.MediaStatus("uplink", "live"))
    assert core.state == JOINING
    clock.advance(20)
    effects = core.tick()
    joined = published(effects, "/event")[-1]
    assert core.state == IN_MEETING and joined["degraded"] is True


def test_join_completes_when_uplink_live_and_program_playing() -> None:
    core, _ = make_core(camera=True, display=True)
    announce(core)
    command(core, "join")
    core.handle(io.MediaStatus("program", "buffering"))
    core.handle(io.MediaStatus("uplink", "live"))
    effects = core.handle(io.MediaStatus("program", "playing"))
    assert core.state == IN_MEETING and published(effects, "/event")[-1]["degraded"] is False


def test_leave_waits_for_media_to_stop_at_most_two_seconds() -> None:
    core, clock = make_core(camera=True, display=True)
    announce(core)
    command(core, "join")
    core.handle(io.MediaStatus("uplink", "live"))
    core.handle(io.MediaStatus("program", "playing"))
    ack, effects = command(core, "leave")
    assert ack["state"] == LEAVING and {type(e) for e in effects} >= {io.StopUplink, io.StopProgram}
    core.handle(io.MediaStatus("uplink", "idle"))
    assert core.state == LEAVING
    clock.advance(2.0)
    core.tick()
    assert core.state == MEETING_AVAILABLE


def test_meeting_end_while_in_meeting_leaves_to_idle() -> None:
    core, _ = make_core()
    announce(core)
    command(core, "join")
    ack, effects = command(core, "meeting.end", {"meeting_id": "m1"})
    assert ack["ok"] and core.state == IDLE and core.meeting is None
    assert "meeting.left" in events(effects)


@pytest.mark.parametrize("setup, command_type, body, ok", [
    ("idle", "join", {}, False),
    ("idle", "leave", {}, True),
    ("idle", "meeting.end", {"meeting_id": "m1"}, False),
    ("available", "meeting.end", {"meeting_id": "other"}, False),
    ("available", "leave", {}, True),
    ("in_meeting", "join", {}, True),
    ("in_meeting", "meeting.start:other", {}, False),
    ("in_meeting", "meeting.start:m1", {}, True),
    ("available", "meeting.start:other", {}, True),
])
def test_state_checks(setup: str, command_type: str, body: dict, ok: bool) -> None:
    core, _ = make_core()
    if setup in ("available", "in_meeting"):
        announce(core, "m1")
    if setup == "in_meeting":
        command(core, "join")
    if command_type.startswith("meeting.start:"):
        ack = announce(core, command_type.split(":")[1])
    else:
        ack, _ = command(core, command_type, body)
    assert ack["ok"] is ok, ack
    if not ok:
        assert ack["error"]["code"] == "invalid_state"


def test_led_patterns_follow_connection_and_health() -> None:
    core, _ = make_core()
    core.handle(io.BrokerDisconnected("test"))
    assert core.status()["led"] == "blip" and core.status()["screen"] == "broker_unreachable"
    core.handle(io.BrokerConnected())
    assert core.status()["led"] == "off"
    core.handle(io.HealthReport("panel", "missing", "no gpiochip"))
    assert core.status()["led"] == "double_blink"
    announce(core)
    assert core.status()["led"] == "slow_blink"  # a meeting to join matters more than a broken part


def test_denied_publish_marks_broker_health() -> None:
    core, _ = make_core()
    effects = core.handle(io.PublishDenied(core.topics.state, "Not authorized"))
    assert core.health["broker"] == "error"
    assert published(effects, "/state")[-1]["health"]["broker"] == "error"
    assert core.status()["led"] == "double_blink"


def test_reconnect_republishes_state_and_counts() -> None:
    core, _ = make_core()
    core.handle(io.BrokerDisconnected("gone"))
    effects = core.handle(io.BrokerConnected())
    assert published(effects, "/state")[-1]["health"]["broker"] == "ok"
    telemetry = published(core.handle(io.TelemetryDue({"load1": 0.1})), "/telemetry")[0]
    assert telemetry["mqtt_reconnects"] == 1 and telemetry["load1"] == 0.1 and telemetry["state"] == IDLE


def test_led_pattern_shapes() -> None:
    assert led.SLOW_BLINK.period_s == pytest.approx(1.0)  # 1 Hz
    assert led.BLIP.period_s == pytest.approx(3.0)
    assert [led.DOUBLE_BLINK.lit_at(t) for t in (0.05, 0.2, 0.35, 0.5, 1.0)] == [True, False, True, False, False]
    assert led.ON.lit_at(123.4) and not led.OFF.lit_at(5)
    assert led.FAST_BLINK.period_s < led.SLOW_BLINK.period_s


def test_hours_of_idle_behaviour_in_milliseconds() -> None:
    core, clock = make_core()
    announce(core)
    for _ in range(3600):
        clock.advance(10)
        core.tick()
        core.handle(io.TelemetryDue({}))
    assert core.state == MEETING_AVAILABLE and core.next_deadline() is None


def _reach(state: str) -> tuple:
    core, clock = make_core(camera=True, display=True)
    if state != IDLE:
        announce(core, "m1")
    if state in (JOINING, IN_MEETING, LEAVING):
        command(core, "join")
        core.handle(io.MediaStatus("uplink", "starting"))
        core.handle(io.MediaStatus("program", "buffering"))
    if state in (IN_MEETING, LEAVING):
        core.handle(io.MediaStatus("uplink", "live"))
        core.handle(io.MediaStatus("program", "playing"))
    if state == LEAVING:
        command(core, "leave")
    assert core.state == state
    return core, clock


INPUTS = {
    "press": lambda core, clock: press(core, clock, 0.2),
    "hold": lambda core, clock: press(core, clock, 3.2),
    "join": lambda core, clock: command(core, "join")[1],
    "leave": lambda core, clock: command(core, "leave")[1],
    "start_same": lambda core, clock: command(core, "meeting.start", meeting_body("m1"))[1],
    "start_other": lambda core, clock: command(core, "meeting.start", meeting_body("m2"))[1],
    "end_same": lambda core, clock: command(core, "meeting.end", {"meeting_id": "m1"})[1],
    "end_other": lambda core, clock: command(core, "meeting.end", {"meeting_id": "m2"})[1],
    "ping": lambda core, clock: command(core, "ping")[1],
    "grant_same": lambda core, clock: command(core, "floor.grant", {"meeting_id": "m1"})[1],
    "grant_other": lambda core, clock: command(core, "floor.grant", {"meeting_id": "m2"})[1],
    "revoke_same": lambda core, clock: command(core, "floor.revoke", {"meeting_id": "m1"})[1],
    "revoke_other": lambda core, clock: command(core, "floor.revoke", {"meeting_id": "m2"})[1],
}
A, J, M, L = MEETING_AVAILABLE, JOINING, IN_MEETING, LEAVING
X = "refused"  # answered invalid_state, state unchanged
# Rows: input; columns: idle, meeting_available, joining, in_meeting, leaving (media still running).
TABLE = {
    "press":       (IDLE, J, J, M, L),
    "hold":        (IDLE, A, L, L, A),  # from leaving: the 2 s leave timeout passes during the hold
    "join":        (X, J, J, M, X),
    "leave":       (IDLE, A, L, L, L),
    "start_same":  (A, A, J, M, L),
    "start_other": (A, A, X, X, L),
    "end_same":    (X, IDLE, L, L, L),
    "end_other":   (X, X, X, X, X),
    "ping":        (IDLE, A, J, M, L),
    # The floor is given and taken only in the meeting the site has joined (floor.py has the rest).
    "grant_same":   (X, X, X, M, X),
    "grant_other":  (X, X, X, X, X),
    "revoke_same":  (X, X, X, M, X),
    "revoke_other": (X, X, X, X, X),
}
COLUMNS = (IDLE, MEETING_AVAILABLE, JOINING, IN_MEETING, LEAVING)


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("state", COLUMNS)
def test_transition_table(state: str, name: str) -> None:
    core, clock = _reach(state)
    effects = INPUTS[name](core, clock)
    expected = TABLE[name][COLUMNS.index(state)]
    acks = published(effects, "/ack")
    if expected == X:
        assert acks and acks[0]["error"]["code"] == "invalid_state"
        assert acks[0]["id"] and acks[0]["type"]  # a refused command's ack still names it
        assert core.state == state
    else:
        assert core.state == expected
        assert all(ack["ok"] for ack in acks)
    pattern = {IDLE: "off", A: "slow_blink", J: "fast_blink", L: "fast_blink", M: "on"}[core.state]
    if core.state == M and name == "press":
        pattern = "requested"  # a short press in the meeting raises the hand
    assert core.status()["led"] == pattern


def test_join_with_a_failed_uplink_goes_degraded_without_waiting() -> None:
    core, _ = make_core(camera=True, display=True)
    announce(core)
    command(core, "join")
    core.handle(io.MediaStatus("program", "playing"))
    assert core.state == JOINING  # the uplink may still come
    effects = core.handle(io.MediaStatus("uplink", "failed"))
    assert core.state == IN_MEETING and published(effects, "/event")[-1]["degraded"] is True


def test_join_with_missing_camera_watches_as_soon_as_the_program_plays() -> None:
    core, _ = make_core(camera=True, display=True)
    core.handle(io.HealthReport("camera", "missing", "no /dev/video0"))
    announce(core)
    command(core, "join")
    assert core.state == JOINING
    core.handle(io.MediaStatus("program", "playing"))
    assert core.state == IN_MEETING
    core.handle(io.MediaStatus("program", "failed"))
    assert core.status()["screen"] == "program_reconnecting"


def test_rejected_site_file_is_shown_blinked_and_reported() -> None:
    core, _ = make_core()
    effects = core.handle(io.ProvisionRejected(("site file rejected", "boot.toml: site.kind: must be one of ...")))
    status = core.status()
    assert status["screen"] == "provision_error" and status["led"] == "double_blink"
    assert published(effects, "/event")[-1]["type"] == "provision.rejected"
    shown = [e for e in effects if isinstance(e, io.ShowScreen)][-1]
    assert shown.info["problems"][1].startswith("boot.toml: site.kind")
    announce(core)
    assert core.status()["screen"] == "meeting_available"  # a meeting still comes first
