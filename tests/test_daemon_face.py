"""The Daemon's public face: a whole site in-process, links injected, no broker needed."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.adapters.panel import Panel
from appliance.config import load
from appliance.core import io, led
from appliance.daemon import Daemon
from appliance.loop import EventLoop
from appliance_dev.site_process import site_config
from tests.support.site import ConsoleKey, meeting_body


@pytest.fixture
def config(tmp_path: Path, console_key: ConsoleKey, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    return load([str(site_config(tmp_path, "kalibaru", "mqtt://127.0.0.1:1", console_key.public_b64))])


class PatternPanel(Panel):
    """An injected panel: the real mock-GPIO panel that also remembers every LED pattern shown."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.shown: list[str] = []

    def show(self, pattern: led.LedPattern) -> None:
        self.shown.append(pattern.name)
        super().show(pattern)


def test_a_site_runs_in_process_without_a_broker_and_answers_like_the_control_socket(config, console_key) -> None:  # noqa: ANN001
    panel_factory = lambda cfg, post: PatternPanel("mock", cfg["panel"]["button_pin"], cfg["panel"]["led_pin"], post)  # noqa: E731
    with Daemon.without_broker(config, panel=panel_factory) as daemon:
        assert daemon.status()["state"] == "idle"
        command = console_key.command("meeting.start", meeting_body("m1"), to=["kalibaru"])
        daemon.post(io.MessageReceived(daemon.core.topics.cmd, json.dumps(command).encode()))
        assert daemon.call(lambda: daemon.core.state) == "meeting_available"
        pressed = daemon.request({"cmd": "press"})
        assert pressed["ok"] and pressed["state"] == "in_meeting"
        refused = daemon.request({"cmd": "selftest"})
        assert refused["ok"] is False and "not during a meeting" in refused["error"]
        topics = [topic for topic, _, _ in daemon.mqtt.published]
        assert topics.count(daemon.core.topics.ack) == 1 and daemon.core.topics.event in topics
        assert daemon.panel.shown[-1] == "on" and "slow_blink" in daemon.panel.shown
    assert not Path(config["paths"]["control_socket"]).exists()  # stop() closed every adapter


def test_a_local_selftest_is_answered_when_the_core_finishes_it(config) -> None:  # noqa: ANN001
    with Daemon.without_broker(config) as daemon:
        reply = daemon.request({"cmd": "selftest"}, timeout=30)
    checks = reply["result"]["checks"]
    assert reply["ok"] is True and reply["language"] == "id"
    assert checks["broker"]["ok"] is False and "tidak terhubung" in checks["broker"]["detail"]
    assert checks["disk"]["ok"] is True and "duration_s" in checks["disk"]  # a real probe ran
    assert reply["lines"][0].startswith("Tombol: tidak diuji")


def test_the_daemon_handles_every_effect_the_core_can_give(config) -> None:  # noqa: ANN001
    daemon = Daemon.without_broker(config)
    assert set(daemon.effect_handlers) == set(io.EFFECTS)
    daemon.ledger_store.close()


def test_an_unknown_event_in_a_started_daemon_fails_the_caller_loudly(config) -> None:  # noqa: ANN001
    @dataclass(frozen=True)
    class Teleported:
        pass

    daemon = Daemon.without_broker(config).start()
    assert daemon.loop.strict  # the test suite runs with APPLIANCE_STRICT=1
    daemon.post(Teleported())
    with pytest.raises(RuntimeError, match="event loop died") as raised:
        daemon.call(lambda: None, timeout=5)
    assert isinstance(raised.value.__cause__, io.Unhandled)
    with pytest.raises(RuntimeError):
        daemon.stop()


def test_the_ledger_saves_from_the_loop_thread_of_a_started_daemon(config) -> None:  # noqa: ANN001
    with Daemon.without_broker(config) as daemon:
        daemon.call(lambda: daemon.post(io.CheckpointDue()))
        days = daemon.call(lambda: daemon.ledger_store.load()[0])
    assert days and days[0].boots == 1


def test_a_missing_handler_fails_loudly_when_strict_and_is_logged_otherwise(caplog) -> None:  # noqa: ANN001
    def dispatch(item: object) -> None:
        raise io.Unhandled(f"no handler for {item!r}")

    strict = EventLoop(dispatch, strict=True)
    strict.post("mystery")
    with pytest.raises(io.Unhandled):
        strict.run()

    lenient = EventLoop(dispatch, strict=False)
    lenient.post("mystery")
    lenient.call_later(0.0, lambda: dispatch("a timer"))  # timers are guarded like events
    lenient.call_later(0.01, lenient.stop)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        lenient.run()  # the site keeps running in production
    assert "no handler" in caplog.text and time.monotonic() - started < 5
