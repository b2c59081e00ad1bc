"""The panel's one button, as the core reads it: a short press (join, or the floor in a meeting), a hold
(`panel.hold_s`: leave), a long hold while idle (`selftest.hold_s`: the interactive self-test), and a
press the running self-test is waiting for. Holds are timed on the core's clock through
`next_deadline`/`tick`. A mixin of ApplianceCore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.core import io
from appliance.core import selftest as st
from appliance.core.transitions import IDLE, LEAVING

if TYPE_CHECKING:
    from appliance.core.machine import ApplianceCore


class PanelFlow:
    def _button_deadlines(self: ApplianceCore) -> list[float]:
        """When a button held down becomes a hold, and a long hold (the ones not yet fired)."""
        down = self._button_down_at
        if down is None:
            return []
        fired_at = ((self._hold_fired, down + self.settings.hold_s),
                    (self._long_hold_fired, down + self.settings.selftest_hold_s))
        return [at for fired, at in fired_at if not fired]

    def _button_tick(self: ApplianceCore, now: float) -> None:
        if self._button_down_at is not None and not self._hold_fired and now >= self._button_down_at + self.settings.hold_s:
            self._hold_fired = True
            self._on_hold()
        if (self._button_down_at is not None and not self._long_hold_fired
                and now >= self._button_down_at + self.settings.selftest_hold_s):
            self._long_hold_fired = True
            self._on_long_hold()

    def _on_button_down(self: ApplianceCore, event: io.ButtonDown) -> None:
        if self.selftest and self.selftest.waiting_press:
            self.selftest.press_began = True
            return  # the press belongs to the self-test's panel check, not to the meeting
        if self._button_down_at is None:
            self._button_down_at = self.clock.monotonic()
            self._hold_fired = False
            self._long_hold_fired = False
            self._pressed_in = self.state  # a hold that began in a meeting never becomes a self-test

    def _on_button_up(self: ApplianceCore, event: io.ButtonUp) -> None:
        run = self.selftest
        if run and run.waiting_press:
            if not run.press_began:
                return  # the release of a press that began before the test: not the test's press
            elapsed = self.clock.monotonic() - run.started
            run.record("panel", st.result(True, "selftest.panel.pressed", seconds=f"{elapsed:.1f}"))
            self._selftest_progress()
            return
        if self._button_down_at is None:
            return
        was_hold = self._hold_fired
        self._button_down_at = None
        self._hold_fired = False
        if not was_hold:
            self._on_short_press()

    def _on_short_press(self: ApplianceCore) -> None:
        step = self._check("press", {})
        starts_join = step.action == "begin_join"
        result = "joining" if starts_join else "no_meeting" if self.state == IDLE else "ignored"
        context: dict[str, Any] = {"reason": "button"}
        if step.action == "floor_press":
            # In a meeting the floor says what the press did: requested, listening (withdrawn) or debounced.
            self._take(step, context)
            self._event("button.press", result=context["result"])
            return
        self._event("button.press", result=result)
        self._take(step, context)

    def _on_long_hold(self: ApplianceCore) -> None:
        step = self._check("long_hold", {})
        if step.action == "selftest_interactive" and self.selftest is None and self._pressed_in == IDLE:
            self._event("button.hold", result="selftest", held_s=self.settings.selftest_hold_s)
            self._button_down_at = None  # the release that follows belongs to nobody
            self._hold_fired = self._long_hold_fired = False
            self._take(step, {"reason": "button", "interactive": True})

    def _on_hold(self: ApplianceCore) -> None:
        step = self._check("hold", {})
        self._event("button.hold", result="leaving" if step.target == LEAVING else "ignored")
        self._take(step, {"reason": "button"})
