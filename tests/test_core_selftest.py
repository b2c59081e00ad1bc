"""The self-test as the core runs it, on the fake clock: every wait and timeout in milliseconds."""

from __future__ import annotations

from appliance.core import io, led
from appliance.core import selftest as st
from appliance.core.machine import IDLE, MEETING_AVAILABLE
from tests.core_helpers import announce, command, events, make_core, published

PROBE_RESULTS = {
    "clock": st.result(True, "selftest.clock.synced"),
    "power": st.result(None, "selftest.power.unknown"),
    "disk": st.result(True, "selftest.disk.ok", free="5000"),
    "camera": st.result(True, "selftest.camera.frames", frames=75, seconds=5, width=1280, height=720, fps=30),
    "audio": st.result(False, "selftest.audio.no_microphone"),
}


def of_type(effects: list, kind: type) -> list:
    return [effect for effect in effects if isinstance(effect, kind)]


def answer_probes(core, effects: list) -> list:  # noqa: ANN001
    """Be the probes adapter: answer every probe the core asked for."""
    asked = of_type(effects, io.RunProbes)
    assert len(asked) == 1, effects
    answers = []
    for name in asked[0].names:
        answers += core.handle(io.SelftestCheckDone(name, PROBE_RESULTS[name]))
    return answers


def test_unattended_run_measures_the_broker_round_trip_and_publishes_a_retained_result() -> None:
    core, clock = make_core(display=True)
    ack, effects = command(core, "selftest")
    assert ack["ok"] is True
    started = [p for p in published(effects, "/event") if p["type"] == "selftest.started"]
    assert started and started[0]["interactive"] is False
    receipt = core.selftest.receipt
    assert receipt in [e.receipt for e in of_type(effects, io.Publish) if e.topic.endswith("/event")]
    assert of_type(effects, io.RunProbes)[0].names == ("clock", "power", "disk", "audio")
    assert not of_type(effects, io.ProbeCamera)  # camera disabled
    card = of_type(effects, io.ShowScreen)[-1]
    assert card.screen == "selftest" and card.info["card"] is True  # the display check's test card
    assert core.status()["selftest"] == {"interactive": False, "waiting_press": False}
    clock.advance(0.012)
    assert not published(core.handle(io.PublishAcked(receipt)), "/selftest")
    effects = answer_probes(core, effects)
    result = published(effects, "/selftest")
    assert len(result) == 1 and of_type(effects, io.Publish)[-1].retain is True
    checks = result[0]["checks"]
    assert set(checks) == set(st.CHECKS) and result[0]["ok"] is False  # the audio probe failed
    assert checks["broker"] == {"ok": True, "code": "selftest.broker.round_trip",
                                "detail": "pesan uji sampai dan dijawab dalam 12 ms", "detail_en": "round trip 12 ms"}
    assert checks["panel"]["ok"] is None and checks["panel"]["code"] == "selftest.panel.needs_person"
    assert "orang di lokasi" in checks["panel"]["detail"] and "person" in checks["panel"]["detail_en"]
    assert checks["camera"]["ok"] is None and checks["display"]["ok"] is True
    done = of_type(effects, io.SelftestDone)[0]
    assert done.result == result[0]
    assert "Mikrofon: GAGAL (mikrofon tidak ditemukan: pasang webcam atau mikrofon USB)" in done.lines
    shown = of_type(effects, io.ShowScreen)[-1]
    assert shown.screen == "selftest" and shown.info["headline"] == "Ada pemeriksaan yang gagal"
    assert core.status()["selftest"] is None
    clock.advance(st.RESULT_SHOWN_S)
    assert of_type(core.tick(), io.ShowScreen)[-1].screen == IDLE  # the result gives the screen back


def test_interactive_panel_check_takes_the_press_shows_the_test_pattern_and_leaves_the_state_alone() -> None:
    core, clock = make_core()
    outcome = core.local("selftest", interactive=True)
    assert outcome.ok and of_type(outcome.effects, io.SetLed)[-1].pattern == led.TEST
    press_screen = of_type(outcome.effects, io.ShowScreen)[-1]
    assert press_screen.info["headline"] == "Tekan tombol sekarang" and "30 detik" in press_screen.info["hint"]
    clock.advance(2.5)
    effects = core.handle(io.ButtonDown()) + core.handle(io.ButtonUp())
    assert core.state == IDLE and "button.press" not in events(effects)
    assert core.selftest.checks["panel"] == st.result(True, "selftest.panel.pressed", seconds="2.5")
    assert of_type(effects, io.SetLed)[-1].pattern == led.OFF  # the panel check is over
    announce(core)  # a press after the panel check is a person's again
    effects = core.handle(io.ButtonDown()) + core.handle(io.ButtonUp())
    assert "button.press" in events(effects)


def test_every_wait_has_a_deadline_a_missing_press_and_a_silent_broker_fail() -> None:
    core, clock = make_core()
    effects = core.local("selftest", interactive=True).effects
    answer_probes(core, effects)
    assert core.next_deadline() == clock.monotonic() + st.BROKER_TIMEOUT_S
    clock.advance(st.BROKER_TIMEOUT_S)
    core.tick()
    assert core.selftest.checks["broker"]["ok"] is False and "dalam 5 detik" in core.selftest.checks["broker"]["detail"]
    clock.advance(st.PANEL_WAIT_S)
    effects = core.tick()
    report = published(effects, "/selftest")[0]
    assert report["checks"]["panel"] == st.result(False, "selftest.panel.no_press", seconds="30")
    assert report["checks"]["panel"]["detail_en"] == "no press within 30 s"
    late = core.handle(io.PublishAcked(f"{st.BROKER_RECEIPT}.1"))  # an answer after the timeout changes nothing
    assert not published(late, "/selftest")
    core.local("selftest")  # the next run: the first run's late PUBACK must not pass its broker check
    core.handle(io.PublishAcked(f"{st.BROKER_RECEIPT}.1"))
    assert "broker" not in core.selftest.checks
    core.handle(io.PublishAcked(core.selftest.receipt))
    assert core.selftest.checks["broker"]["ok"] is True


def test_offline_the_broker_check_fails_at_once_and_names_why() -> None:
    core, _ = make_core()
    core.handle(io.BrokerDisconnected("cannot reach mqtt://broker: refused"))
    outcome = core.local("selftest")
    assert outcome.ok and not [p for p in published(outcome.effects, "/event") if p["type"] == "selftest.started"]
    assert core.selftest.checks["broker"]["detail"] == "tidak terhubung ke broker (cannot reach mqtt://broker: refused)"
    assert core.selftest.checks["broker"]["detail_en"] == "not connected to the broker (cannot reach mqtt://broker: refused)"


def test_a_broker_that_refuses_the_test_message_fails_the_broker_check() -> None:
    core, _ = make_core()
    core.local("selftest")
    core.handle(io.PublishDenied(core.topics.event, "Not authorized", core.selftest.receipt))
    assert core.selftest.checks["broker"]["ok"] is False and "Not authorized" in core.selftest.checks["broker"]["detail"]


def test_one_run_at_a_time_and_none_during_a_meeting() -> None:
    core, clock = make_core()
    assert core.local("selftest").ok
    second = core.local("selftest")
    assert not second.ok and "already running" in second.message
    ack, _ = command(core, "selftest")
    assert ack["error"]["code"] == "invalid_state" and "already running" in ack["error"]["message"]
    in_meeting, _ = make_core()
    announce(in_meeting)
    command(in_meeting, "join")
    ack, effects = command(in_meeting, "selftest")
    assert ack["error"]["code"] == "invalid_state" and "not during a meeting" in ack["error"]["message"]
    assert not of_type(effects, io.RunProbes)


def test_a_meeting_ends_a_running_selftest_and_keeps_the_screen_and_the_button() -> None:
    core, clock = make_core()
    announce(core)
    core.local("selftest", interactive=True)
    assert core.status()["led"] == "test"
    ack, effects = command(core, "join")
    assert ack["ok"] and core.state == "in_meeting"
    report = published(effects, "/selftest")[0]
    assert report["checks"]["panel"] == st.result(None, "selftest.unfinished.meeting")
    assert core.selftest is None and of_type(effects, io.SelftestDone)
    assert core.status()["screen"] == "in_meeting" and core.status()["led"] == "on"
    effects = core.handle(io.ButtonDown())
    clock.advance(3.5)
    effects += core.tick()
    assert "button.hold" in events(effects)  # a hold leaves the meeting again, it is not eaten by a test


def test_a_probe_that_never_answers_fails_and_the_run_still_ends() -> None:
    core, clock = make_core(camera=True)
    effects = core.local("selftest").effects
    assert of_type(effects, io.ProbeCamera)[0].seconds == st.CAMERA_PROBE_S
    core.handle(io.PublishAcked(core.selftest.receipt))
    clock.advance(st.PROBES_TIMEOUT_S)
    report = published(core.tick(), "/selftest")[0]
    assert report["checks"]["camera"] == st.result(False, "selftest.no_answer", seconds="30")
    assert report["checks"]["disk"]["ok"] is False and core.selftest is None


def test_a_camera_known_to_be_missing_fails_without_a_probe() -> None:
    core, _ = make_core(camera=True)
    core.handle(io.HealthReport("camera", "missing", "no /dev/video0"))
    effects = core.local("selftest").effects
    assert not of_type(effects, io.ProbeCamera)
    assert core.selftest.checks["camera"] == st.result(False, "selftest.camera.broken", value="missing")


def test_a_press_begun_before_the_test_does_not_pass_the_panel_check() -> None:
    core, clock = make_core()
    core.handle(io.ButtonDown())
    core.local("selftest", interactive=True)
    core.handle(io.ButtonUp())
    assert "panel" not in core.selftest.checks
    core.handle(io.ButtonDown())
    core.handle(io.ButtonUp())
    assert core.selftest.checks["panel"]["ok"] is True


def test_a_meeting_announced_while_the_result_shows_takes_the_screen() -> None:
    core, clock = make_core()
    answer_probes(core, core.local("selftest").effects)
    core.handle(io.PublishAcked(core.selftest.receipt))
    assert core.status()["screen"] == "selftest"
    announce(core)
    assert core.state == MEETING_AVAILABLE and core.status()["screen"] == MEETING_AVAILABLE


def test_english_texts_follow_the_display_language() -> None:
    core, _ = make_core(language="en")
    effects = core.local("selftest", interactive=True).effects
    assert of_type(effects, io.ShowScreen)[-1].info["headline"] == "Press the button now"


def test_the_summary_speaks_the_screens_language_and_old_results_still_read() -> None:
    checks = {"clock": st.result(True, "selftest.clock.synced"), "disk": {"ok": False, "detail": "an older device's text"}}
    assert st.summary_lines(checks, "id")[5:7] == ["Jam: lulus (sinkron (NTP))", "Kartu SD: GAGAL (an older device's text)"]
    assert st.summary_lines(checks, "en")[5:7] == ["Clock: passed (synchronised (NTP))",
                                                   "SD card: FAILED (an older device's text)"]
    assert st.summary_lines(checks, "en")[0] == "Button: not tested"
