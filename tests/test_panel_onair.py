"""The optional red "on air" LED: its configuration key and the panel driving it on gpiozero mock pins."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.adapters.panel import Panel
from appliance.config import ConfigError, load
from appliance.core import led
from appliance.core.io import ButtonDown, ButtonUp, HealthReport
from appliance_dev.waiting import wait_until
from tests.support.site import ConsoleKey

BASE = f"""
[site]
id = "kalibaru"
[broker]
url = "mqtts://broker.example:8883"
[security]
console_public_key = "{ConsoleKey().public_b64}"
"""


def load_with(tmp_path: Path, panel: str):
    path = tmp_path / "appliance.toml"
    path.write_text(BASE + "[panel]\n" + panel)
    return str(path), load([str(path)])


def problems_for(tmp_path: Path, panel: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, panel)
    return caught.value.problems


def test_no_onair_led_unless_named(tmp_path: Path) -> None:
    _, config = load_with(tmp_path, "")
    assert config["panel"]["onair_led_pin"] is None


def test_onair_led_pin_is_read(tmp_path: Path) -> None:
    _, config = load_with(tmp_path, "onair_led_pin = 22\n")
    assert config["panel"]["onair_led_pin"] == 22


@pytest.mark.parametrize("value", ["28", "-1", '"22"', "true", "22.0"])
def test_onair_led_pin_must_be_a_gpio_number(tmp_path: Path, value: str) -> None:
    problems = problems_for(tmp_path, f"onair_led_pin = {value}\n")
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'appliance.toml'}: panel.onair_led_pin: ")


@pytest.mark.parametrize(("panel", "taken"), [("onair_led_pin = 17\n", "button_pin"),
                                              ("onair_led_pin = 27\n", "led_pin"),
                                              ("button_pin = 5\nled_pin = 6\nonair_led_pin = 6\n", "led_pin")])
def test_onair_led_pin_needs_a_pin_of_its_own(tmp_path: Path, panel: str, taken: str) -> None:
    problems = problems_for(tmp_path, panel)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'appliance.toml'}: panel.onair_led_pin: ")
    assert f"panel.{taken}" in problems[0]


def test_onair_led_pin_may_reuse_a_default_pin_that_was_moved(tmp_path: Path) -> None:
    _, config = load_with(tmp_path, "button_pin = 5\nonair_led_pin = 17\n")
    assert config["panel"]["onair_led_pin"] == 17


def test_onair_led_may_not_come_from_the_site_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance import config as appliance_config  # noqa: PLC0415

    site = tmp_path / "site.toml"
    site.write_text('[site]\nid = "kalibaru"\n[panel]\nonair_led_pin = 22\n')
    image = tmp_path / "appliance.toml"
    image.write_text(BASE)
    monkeypatch.setattr(appliance_config, "SITE_FILE", str(site))
    with pytest.raises(ConfigError) as caught:
        load([str(image), str(site)])
    # Each problem reads in Bahasa Indonesia and gives its English line too (appliance/core/messages.py).
    assert any("panel.onair_led_pin: may be set only in the image's" in problem.text("en")
               for problem in caught.value.problems)


def test_onair_led_follows_set_onair_and_goes_dark_on_close() -> None:
    factory = MockFactory()
    posted: list = []
    panel = Panel("mock", 17, 27, posted.append, pin_factory=factory, onair_pin=22)
    onair = factory.pin(22)
    panel.open()
    try:
        assert HealthReport("panel", "ok") in posted
        assert not onair.state
        panel.set_onair(True)
        assert onair.state and panel.onair_lit
        panel.show(led.ON)  # the button LED is independent of the on-air LED
        wait_until(lambda: factory.pin(27).state, 1, what="the button LED on")
        panel.set_onair(False)
        assert not onair.state
        # From other threads, as the loop and anything else may call it.
        threads = [threading.Thread(target=panel.set_onair, args=(index % 2 == 0,)) for index in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        panel.set_onair(True)
        assert onair.state
    finally:
        panel.close()
    assert not onair.state, "the on-air LED must be dark once the panel is closed"
    panel.set_onair(True)  # harmless after close
    assert not onair.state


def test_onair_state_set_before_open_is_applied_on_open() -> None:
    factory = MockFactory()
    panel = Panel("mock", 17, 27, [].append, pin_factory=factory, onair_pin=22)
    panel.set_onair(True)
    panel.open()
    try:
        assert factory.pin(22).state
    finally:
        panel.close()


def test_without_an_onair_pin_set_onair_is_a_no_op() -> None:
    factory = MockFactory()
    posted: list = []
    panel = Panel("mock", 17, 27, posted.append, pin_factory=factory)
    panel.open()
    try:
        panel.set_onair(True)
        assert HealthReport("panel", "ok") in posted
        assert not factory.pin(27).state  # the button LED is not touched
    finally:
        panel.close()


def test_an_onair_pin_that_cannot_open_is_reported_and_the_button_still_works() -> None:
    factory = MockFactory()
    posted: list = []
    panel = Panel("mock", 17, 27, posted.append, pin_factory=factory, onair_pin=27)  # the button LED's pin
    panel.open()
    try:
        reports = [event for event in posted if isinstance(event, HealthReport)]
        assert len(reports) == 1 and reports[0].component == "panel" and reports[0].value == "missing"
        assert "on-air" in reports[0].detail and "27" in reports[0].detail
        panel.set_onair(True)  # harmless without the LED
        factory.pin(17).drive_low()
        factory.pin(17).drive_high()
        assert [type(e) for e in posted if isinstance(e, (ButtonDown, ButtonUp))] == [ButtonDown, ButtonUp]
        panel.show(led.ON)
        wait_until(lambda: factory.pin(27).state, 1, what="the button LED on")
    finally:
        panel.close()


def test_onair_led_missing_hardware_is_reported_not_fatal() -> None:
    posted: list = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
        panel = Panel("gpio", 17, 27, posted.append, onair_pin=22)
        panel.open()
    assert [(event.component, event.value) for event in posted] == [("panel", "missing")]
    panel.set_onair(True)
    panel.close()
