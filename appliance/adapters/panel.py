"""The panel: one button, one LED and an optional red "on air" LED through gpiozero, with the pin
factory injected, not imported.

Button edges become ButtonDown/ButtonUp events; the core decides what is a press and what a hold,
and when the on-air LED is lit (`set_onair`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from appliance.core.io import ButtonDown, ButtonUp, HealthReport
from appliance.core.led import OFF, LedPattern

log = logging.getLogger(__name__)


def make_pin_factory(backend: str) -> Any:
    """`mock` gives gpiozero's MockFactory; `gpio` lets gpiozero pick the Pi's own (lgpio on bookworm)."""
    if backend == "mock":
        from gpiozero.pins.mock import MockFactory  # noqa: PLC0415

        return MockFactory()
    return None


class Panel:
    def __init__(self, backend: str, button_pin: int, led_pin: int, post: Callable[[Any], None],
                 pin_factory: Any = None, onair_pin: int | None = None) -> None:
        self.backend = backend
        self.button_pin = button_pin
        self.led_pin = led_pin
        self.onair_pin = onair_pin
        self._post = post
        self._pattern: LedPattern = OFF
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.button: Any = None
        self.led: Any = None
        self.onair: Any = None
        self._onair_lit = False
        self._onair_lock = threading.Lock()
        self.factory = pin_factory if pin_factory is not None else make_pin_factory(backend)

    def open(self) -> None:
        try:
            from gpiozero import LED, Button  # noqa: PLC0415

            # A real contact bounces; the mock pin does not, and debouncing it would only delay tests.
            bounce = 0.05 if self.backend == "gpio" else None
            self.button = Button(self.button_pin, pull_up=True, bounce_time=bounce, pin_factory=self.factory)
            self.led = LED(self.led_pin, pin_factory=self.factory)
        except Exception as exc:  # noqa: BLE001 - gpiozero raises many kinds; all mean "no panel"
            log.error("panel unavailable (%s backend): %s", self.backend, exc)
            self._post(HealthReport("panel", "missing", f"{type(exc).__name__}: {exc}"))
            return
        self.button.when_pressed = lambda: self._post(ButtonDown())
        self.button.when_released = lambda: self._post(ButtonUp())
        self._thread = threading.Thread(target=self._play, name="led", daemon=True)
        self._thread.start()
        # Without its on-air LED the site can still join and ask to speak: the button and LED stay.
        if self.onair_pin is not None and not self._open_onair():
            return
        self._post(HealthReport("panel", "ok"))

    def _open_onair(self) -> bool:
        try:
            from gpiozero import LED  # noqa: PLC0415

            onair = LED(self.onair_pin, pin_factory=self.factory)
            with self._onair_lock:
                self.onair = onair
                self._write_onair()  # what set_onair asked for before the panel opened
        except Exception as exc:  # noqa: BLE001 - as in open(): any gpiozero error means "no such LED"
            log.error("on-air LED on GPIO %s unavailable (%s backend): %s", self.onair_pin, self.backend, exc)
            self._post(HealthReport("panel", "missing",
                                    f"on-air LED (panel.onair_led_pin = {self.onair_pin}): {type(exc).__name__}: {exc}"))
            return False
        return True

    def set_onair(self, lit: bool) -> None:
        """Light or darken the on-air LED; from any thread; a no-op without one (remembered until open)."""
        with self._onair_lock:
            self._onair_lit = bool(lit)
            self._write_onair()

    @property
    def onair_lit(self) -> bool:
        return self._onair_lit

    def _write_onair(self) -> None:
        # Called with _onair_lock held.
        if self.onair is None:
            return
        if self._onair_lit:
            self.onair.on()
        else:
            self.onair.off()

    def show(self, pattern: LedPattern) -> None:
        self._pattern = pattern
        self._changed.set()

    @property
    def pattern(self) -> LedPattern:
        return self._pattern

    def press(self, seconds: float) -> bool:
        """Drive the mock button pin like a finger would; False where the pin is real (cannot be driven)."""
        if self.backend != "mock" or self.button is None:
            return False
        pin = self.button.pin
        pin.drive_low()
        threading.Timer(seconds, pin.drive_high).start()
        return True

    def close(self) -> None:
        self._stopped.set()
        self._changed.set()
        if self._thread:
            self._thread.join(1.0)
        with self._onair_lock:
            onair, self.onair = self.onair, None
            if onair is not None:
                try:
                    onair.off()  # a released pin may keep its level: never leave "on air" lit
                finally:
                    onair.close()
        for device in (self.button, self.led):
            if device is not None:
                device.close()

    def _play(self) -> None:
        while not self._stopped.is_set():
            self._changed.clear()
            pattern = self._pattern
            if len(pattern.steps) == 1:
                self._set(pattern.steps[0][0])
                self._changed.wait()
                continue
            for lit, seconds in pattern.steps:
                self._set(lit)
                if self._changed.wait(seconds):
                    break
        self._set(False)

    def _set(self, lit: bool) -> None:
        if self.led is None:
            return
        if lit:
            self.led.on()
        else:
            self.led.off()
