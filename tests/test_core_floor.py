"""The floor of a moderated meeting in the core, on the fake clock: presses, grants, revokes, outages."""

from __future__ import annotations

import json

import pytest

from appliance.core import floor as fl
from appliance.core import io
from appliance.core.clock import rfc3339
from appliance.core.transitions import IN_MEETING, JOINING
from tests.core_helpers import KEY, ack_of, announce, command, events, make_core, press, published, receive
from tests.support.site import ConsoleKey, meeting_body


def _joined(mode: str | None = None, **settings):  # noqa: ANN003, ANN202
    core, clock = make_core(camera=True, **settings)
    body = meeting_body("m1")
    if mode is not None:
        body["floor"] = mode
    assert command(core, "meeting.start", body)[0]["ok"]
    effects = command(core, "join")[1]
    effects += core.handle(io.MediaStatus("uplink", "live"))
    assert core.state == IN_MEETING
    return core, clock, effects


def _floor(core) -> dict | None:  # noqa: ANN001
    return core.status()["floor"]


def _microphone(effects: list) -> list[bool]:
    return [effect.live for effect in effects if isinstance(effect, io.SetMicrophone)]


def _grant(core, meeting_id: str = "m1", **kwargs):  # noqa: ANN001, ANN003, ANN202
    return command(core, "floor.grant", {"meeting_id": meeting_id}, **kwargs)


def _revoke(core, meeting_id: str = "m1", **kwargs):  # noqa: ANN001, ANN003, ANN202
    return command(core, "floor.revoke", {"meeting_id": meeting_id}, **kwargs)


def test_the_floor_table_is_complete_and_every_event_can_happen() -> None:
    for status in fl.FLOOR_STATUSES:
        assert set(fl.FLOOR_TRANSITIONS[status]) == set(fl.FLOOR_TRIGGERS), status
        for step in fl.FLOOR_TRANSITIONS[status].values():
            assert step.target in fl.FLOOR_STATUSES
            assert step.event in ("", *fl.FLOOR_EVENTS)
            assert bool(step.event) or step.target == status or status == fl.REQUESTED, (status, step)
    used = {step.event for steps in fl.FLOOR_TRANSITIONS.values() for step in steps.values()}
    assert used - {""} == set(fl.FLOOR_EVENTS)


def test_a_moderated_site_joins_listening_with_the_encoder_started_muted() -> None:
    core, _, effects = _joined()
    starts = [effect for effect in effects if isinstance(effect, io.StartUplink)]
    assert len(starts) == 1 and starts[0].microphone_live is False
    assert _microphone(effects) == []  # muted since the core started: nothing to change
    assert _floor(core) == {"mode": "moderated", "status": "listening", "requested_at": None}
    state = published(effects, "/state")[-1]
    assert state["floor"] == {"mode": "moderated", "status": "listening", "requested_at": None}
    screens = [effect for effect in effects if isinstance(effect, io.ShowScreen)]
    assert screens[-1].screen == "in_meeting" and screens[-1].info["floor"] == "listening"
    assert core.status()["led"] == "on"


def test_the_floor_is_null_outside_a_meeting_and_while_joining() -> None:
    core, _ = make_core(camera=True)
    assert _floor(core) is None
    announce(core)
    assert _floor(core) is None
    effects = command(core, "join")[1]
    assert core.state == JOINING and _floor(core) is None
    assert published(effects, "/state")[-1]["floor"] is None


def test_press_asks_for_the_floor_and_a_second_press_withdraws_it() -> None:
    core, clock, _ = _joined()
    released_at = core.clock.wall() + 0.2  # a short press counts when the button is let go
    effects = press(core, clock, 0.2)
    assert events(effects) == ["floor.requested", "button.press"]
    requested = published(effects, "/event")[0]
    assert requested["meeting_id"] == "m1" and requested["status"] == "requested"
    assert requested["requested_at"] == rfc3339(released_at)
    assert published(effects, "/event")[1]["result"] == "requested"
    assert _floor(core)["status"] == "requested" and _floor(core)["requested_at"] == rfc3339(released_at)
    assert core.status()["led"] == "requested"
    assert _microphone(effects) == []  # asking is not speaking
    clock.advance(1.0)
    effects = press(core, clock)
    assert events(effects) == ["floor.cancelled", "button.press"]
    assert published(effects, "/event")[0]["was"] == "requested"
    assert _floor(core) == {"mode": "moderated", "status": "listening", "requested_at": None}
    assert core.status()["led"] == "on"


def test_presses_faster_than_the_led_can_show_are_one_press() -> None:
    core, clock, _ = _joined()
    press(core, clock, 0.1)
    clock.advance(0.1)
    effects = press(core, clock, 0.1)  # 0.2 s after the first: a bounce or a double tap
    assert events(effects) == ["button.press"] and published(effects, "/event")[0]["result"] == "debounced"
    assert _floor(core)["status"] == "requested"
    clock.advance(core.settings.floor_debounce_s)
    assert events(press(core, clock, 0.1)) == ["floor.cancelled", "button.press"]


def test_grant_unmutes_without_restarting_the_uplink_and_revoke_mutes_again() -> None:
    core, clock, _ = _joined()
    press(core, clock)
    ack, effects = _grant(core)
    assert ack["ok"] and events(effects) == ["floor.granted"]
    assert _microphone(effects) == [True]
    assert not [e for e in effects if isinstance(e, (io.StartUplink, io.StopUplink))]
    assert _floor(core) == {"mode": "moderated", "status": "speaking", "requested_at": None}
    assert published(effects, "/state")[-1]["floor"]["status"] == "speaking"
    screens = [effect for effect in effects if isinstance(effect, io.ShowScreen)]
    assert screens[-1].info["floor"] == "speaking" and core.status()["led"] == "on"
    ack, effects = _grant(core)  # granted twice: answered, nothing changes
    assert ack["ok"] and events(effects) == [] and _microphone(effects) == []
    ack, effects = _revoke(core)
    assert ack["ok"] and events(effects) == ["floor.revoked"] and _microphone(effects) == [False]
    assert published(effects, "/event")[0]["was"] == "speaking"
    assert not [e for e in effects if isinstance(e, (io.StartUplink, io.StopUplink))]
    assert _floor(core)["status"] == "listening"


def test_revoke_of_a_listening_site_is_answered_and_changes_nothing() -> None:
    core, _, _ = _joined()
    ack, effects = _revoke(core)
    assert ack["ok"] and ack["state"] == IN_MEETING
    assert events(effects) == [] and _microphone(effects) == []
    assert _floor(core)["status"] == "listening"


def test_revoke_clears_a_raised_hand() -> None:
    core, clock, _ = _joined()
    press(core, clock)
    ack, effects = _revoke(core)
    assert ack["ok"] and events(effects) == ["floor.revoked"]
    assert published(effects, "/event")[0]["was"] == "requested"
    assert _floor(core) == {"mode": "moderated", "status": "listening", "requested_at": None}


def test_a_press_while_speaking_hands_the_floor_back() -> None:
    core, clock, _ = _joined()
    _grant(core)
    effects = press(core, clock)
    assert events(effects) == ["floor.cancelled", "button.press"] and _microphone(effects) == [False]
    assert published(effects, "/event")[0]["was"] == "speaking"


def test_a_hold_still_leaves_and_takes_the_microphone_with_it() -> None:
    core, clock, _ = _joined()
    _grant(core)
    effects = press(core, clock, 3.2)
    assert core.state == "leaving" and _microphone(effects) == [False]
    assert _floor(core) is None


@pytest.mark.parametrize("name, send", [
    ("other meeting", lambda core: _grant(core, "m2")),
    ("unsigned", lambda core: _grant(core, signed=False)),
    ("other site", lambda core: _grant(core, to=["pesanggaran"])),
    ("expired", lambda core: receive(core, json.dumps(KEY.command(
        "floor.grant", {"meeting_id": "m1"}, issued_at=core.clock.wall() - 700, ttl_s=600)).encode())),
    ("other key", lambda core: receive(core, json.dumps(ConsoleKey().command(
        "floor.grant", {"meeting_id": "m1"}, issued_at=core.clock.wall())).encode())),
    ("no meeting id", lambda core: command(core, "floor.grant", {})),
])
def test_a_bad_grant_is_refused_with_its_code_and_the_microphone_stays_off(name: str, send) -> None:  # noqa: ANN001
    core, _, _ = _joined()
    result = send(core)
    effects = result[1] if isinstance(result, tuple) else result
    ack = ack_of(effects)
    expected = {"other meeting": "invalid_state", "unsigned": "bad_signature", "other site": "not_for_this_site",
                "expired": "expired", "other key": "bad_signature", "no meeting id": "bad_schema"}[name]
    assert ack["ok"] is False and ack["error"]["code"] == expected, ack
    assert _microphone(effects) == [] and events(effects) == []
    assert _floor(core)["status"] == "listening"


def test_a_replayed_grant_cannot_unmute_after_a_revoke() -> None:
    core, _, _ = _joined()
    grant = KEY.command("floor.grant", {"meeting_id": "m1"}, issued_at=core.clock.wall())
    assert ack_of(receive(core, json.dumps(grant).encode()))["ok"]
    _revoke(core)
    effects = receive(core, json.dumps(grant).encode())
    assert ack_of(effects)["error"]["code"] == "replayed"
    assert _microphone(effects) == [] and _floor(core)["status"] == "listening"


def test_a_grant_while_joining_is_refused() -> None:
    core, _ = make_core(camera=True)
    announce(core)
    command(core, "join")
    ack, effects = _grant(core)
    assert ack["error"]["code"] == "invalid_state" and "still joining" in ack["error"]["message"]
    assert _microphone(effects) == []


def test_an_open_meeting_speaks_from_the_start_and_revoke_mutes_one_site() -> None:
    core, clock, effects = _joined("open")
    starts = [effect for effect in effects if isinstance(effect, io.StartUplink)]
    assert starts[0].microphone_live is True and _microphone(effects) == [True]
    assert _floor(core) == {"mode": "open", "status": "speaking", "requested_at": None}
    ack, effects = _revoke(core)
    assert ack["ok"] and _microphone(effects) == [False] and events(effects) == ["floor.revoked"]
    assert events(press(core, clock)) == ["floor.requested", "button.press"]
    assert _microphone(_grant(core)[1]) == [True]


def test_an_unknown_floor_mode_is_bad_schema() -> None:
    core, _ = make_core()
    body = {**meeting_body("m1"), "floor": "chaos"}
    ack = command(core, "meeting.start", body)[0]
    assert ack["error"]["code"] == "bad_schema" and "body.floor" in ack["error"]["message"]
    assert core.state == "idle"


def test_a_request_made_offline_is_sent_when_the_broker_is_back() -> None:
    core, clock, _ = _joined()
    core.handle(io.BrokerDisconnected("network down"))
    effects = press(core, clock)
    assert "floor.requested" not in events(effects) and _floor(core)["status"] == "requested"
    effects = core.handle(io.BrokerConnected())
    assert events(effects) == ["floor.requested"]
    assert published(effects, "/event")[0]["delayed"] is True
    assert published(effects, "/state")[-1]["floor"]["status"] == "requested"
    assert events(core.handle(io.BrokerConnected())) == []  # sent once


def test_a_request_made_offline_and_withdrawn_offline_is_never_sent() -> None:
    core, clock, _ = _joined()
    core.handle(io.BrokerDisconnected("network down"))
    press(core, clock)
    clock.advance(1)
    effects = press(core, clock)
    effects += core.handle(io.BrokerConnected())
    assert not {"floor.requested", "floor.cancelled"} & set(events(effects))


def test_a_request_made_offline_is_dropped_with_an_event_when_the_meeting_ends_first() -> None:
    core, clock, _ = _joined()
    core.handle(io.BrokerDisconnected("network down"))
    press(core, clock)
    effects = press(core, clock, 3.2)  # leaves the meeting before the broker is back
    effects += core.handle(io.BrokerConnected())
    assert "floor.requested" not in events(effects)
    dropped = [event for event in published(effects, "/event") if event["type"] == "floor.cancelled"]
    assert len(dropped) == 1 and dropped[0]["reason"] == "meeting_ended_offline" and dropped[0]["meeting_id"] == "m1"


def test_a_raised_hand_is_withdrawn_with_an_event_when_the_meeting_ends() -> None:
    core, clock, _ = _joined()
    press(core, clock)
    ack, effects = command(core, "meeting.end", {"meeting_id": "m1"})
    cancelled = [event for event in published(effects, "/event") if event["type"] == "floor.cancelled"]
    assert ack["ok"] and cancelled and cancelled[0]["reason"] == "left_meeting"


def test_a_speaking_site_mutes_itself_when_the_broker_stays_away() -> None:
    core, clock, _ = _joined()
    _grant(core)
    core.handle(io.BrokerDisconnected("network down"))
    assert core.next_deadline() == pytest.approx(clock.monotonic() + core.settings.floor_offline_mute_s)
    clock.advance(core.settings.floor_offline_mute_s - 0.1)
    assert _microphone(core.tick()) == [] and _floor(core)["status"] == "speaking"
    clock.advance(0.1)
    effects = core.tick()
    assert _microphone(effects) == [False] and _floor(core)["status"] == "listening"
    revoked = [event for event in published(effects, "/event") if event["type"] == "floor.revoked"]
    assert revoked and revoked[0]["reason"] == "broker_lost"


def test_a_short_broker_blip_does_not_cut_the_speaker_off() -> None:
    core, clock, _ = _joined()
    _grant(core)
    core.handle(io.BrokerDisconnected("network down"))
    clock.advance(1.0)
    core.handle(io.BrokerConnected())
    clock.advance(60)
    assert _microphone(core.tick()) == [] and _floor(core)["status"] == "speaking"


def test_a_new_join_starts_listening_whatever_the_last_one_ended_with() -> None:
    core, clock, _ = _joined()
    _grant(core)
    command(core, "leave")
    assert core.state == "leaving" and _floor(core) is None
    core.handle(io.MediaStatus("uplink", "idle"))
    effects = command(core, "join")[1]
    starts = [effect for effect in effects if isinstance(effect, io.StartUplink)]
    assert starts and starts[0].microphone_live is False
    core.handle(io.MediaStatus("uplink", "live"))
    assert _floor(core)["status"] == "listening"


def test_a_restarted_core_has_no_floor_and_rejoins_listening() -> None:
    core, clock, _ = _joined()
    _grant(core)
    restarted, _ = make_core(camera=True, clock=clock)  # what a daemon restart starts from
    assert _floor(restarted) is None
    effects = command(restarted, "meeting.start", {**meeting_body("m1"), "auto_join": True})[1]
    assert [e.microphone_live for e in effects if isinstance(e, io.StartUplink)] == [False]
    restarted.handle(io.MediaStatus("uplink", "live"))
    assert _microphone(effects) == [] and _floor(restarted)["status"] == "listening"


def _ducks(effects: list) -> list[bool]:
    return [effect.ducked for effect in effects if isinstance(effect, io.DuckProgram)]


@pytest.mark.parametrize("echo_mode, expected", [("duck", [True]), ("aec", []), ("off", [])])
def test_duck_mode_lowers_the_program_only_while_the_site_speaks(echo_mode: str, expected: list) -> None:
    core, clock = make_core(camera=True, display=True, echo_mode=echo_mode)
    announce(core)
    effects = command(core, "join")[1]
    effects += core.handle(io.MediaStatus("uplink", "live")) + core.handle(io.MediaStatus("program", "playing"))
    assert core.state == IN_MEETING and _ducks(effects) == []  # listening: the program at full volume
    assert _ducks(_grant(core)[1]) == expected
    assert _ducks(_revoke(core)[1]) == [not ducked for ducked in expected]
    _grant(core)
    assert _ducks(press(core, clock, 3.2)) == [not ducked for ducked in expected]  # leaving restores it too
