"""The core's floor duties: apply `floor.FLOOR_TRANSITIONS` to presses, grants, revokes and broker
outages, and tell the centre what changed.

A mixin of ApplianceCore, kept apart so the state machine reads on its own. The meeting-level table
(`transitions.py`) decides whether a floor input is taken at all (only while in the meeting); the
floor table decides what it does. The microphone, the on-air LED, the LED pattern and the screen
badge are derived from `self.floor` in `outputs.py`, so no path can forget to mute.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from appliance.core import floor as fl
from appliance.core.clock import rfc3339
from appliance.core.transitions import IN_MEETING

if TYPE_CHECKING:
    from appliance.core.machine import ApplianceCore


class FloorFlow:
    # --- actions named in transitions.TRANSITIONS -----------------------------------------------
    def _floor_press(self: ApplianceCore, context: dict[str, Any]) -> None:
        now = self.clock.monotonic()
        last = self._floor_pressed_at
        if last is not None and now - last < self.settings.floor_debounce_s:
            # Faster than a person can see the LED change: a bounce or a double tap, not a decision.
            context["result"] = "debounced"
            return
        self._floor_pressed_at = now
        context["result"] = self._floor_apply("press", reason="button")

    def _floor_grant(self: ApplianceCore, context: dict[str, Any]) -> None:
        self._floor_apply("grant", reason="command")

    def _floor_revoke(self: ApplianceCore, context: dict[str, Any]) -> None:
        self._floor_apply("revoke", reason="command")

    # --- the floor's life within a meeting ------------------------------------------------------
    def _floor_begin(self: ApplianceCore) -> None:
        """Joining: a fresh floor, listening unless the meeting is open. Never restored from before a
        restart or an earlier join, so a restarted site rejoins listening."""
        assert self.meeting is not None
        self.floor = fl.Floor.joined(self.meeting.floor_mode)
        self._floor_pressed_at = None

    def _floor_end(self: ApplianceCore, meeting_id: str | None) -> None:
        """Leaving (or the meeting ended): the microphone goes with the floor; a raised hand is withdrawn."""
        floor, self.floor = self.floor, None
        if floor is not None and floor.status == fl.REQUESTED:
            # An unsent request is dropped here; the centre hears why once the broker is back.
            reason = "meeting_ended_offline" if floor.unsent else "left_meeting"
            self._event(fl.CANCELLED_EVENT, meeting_id=meeting_id, mode=floor.mode, status=None,
                        was=fl.REQUESTED, reason=reason)

    def _floor_apply(self: ApplianceCore, trigger: str, reason: str) -> str:
        """Take one step of the floor table; returns the new status."""
        floor = self.floor
        if floor is None:  # the meeting-level table only lets floor inputs through in a meeting
            raise AssertionError(f"floor trigger {trigger!r} outside a meeting")
        step = fl.floor_step(floor.status, trigger)
        if step.target == floor.status:
            return floor.status
        requested_at = self.clock.wall() if step.target == fl.REQUESTED else None
        offline = not self.broker_connected
        self.floor = replace(floor, status=step.target, requested_at=requested_at,
                             unsent=step.target == fl.REQUESTED and offline)
        self._log("info", f"floor {floor.status} -> {step.target} ({trigger}, {reason})")
        if floor.unsent and step.event == fl.CANCELLED_EVENT:
            return step.target  # the request never left the site: withdrawing it needs no word either
        if step.event == fl.REQUESTED_EVENT and offline:
            return step.target  # held back: sent on reconnect, or dropped if the meeting ends first
        if step.event:
            self._floor_event(step.event, was=floor.status, reason=reason)
        return step.target

    def _floor_event(self: ApplianceCore, event_type: str, **fields: Any) -> None:
        floor = self.floor
        assert floor is not None and self.meeting is not None
        self._event(event_type, meeting_id=self.meeting.meeting_id, mode=floor.mode, status=floor.status,
                    requested_at=rfc3339(floor.requested_at) if floor.requested_at is not None else None, **fields)

    # --- the broker -----------------------------------------------------------------------------
    def _floor_broker_connected(self: ApplianceCore) -> None:
        self._broker_lost_at = None
        floor = self.floor
        if floor is not None and floor.unsent:
            self.floor = replace(floor, unsent=False)
            self._floor_event(fl.REQUESTED_EVENT, was=fl.LISTENING, reason="button", delayed=True)

    def _floor_broker_lost(self: ApplianceCore) -> None:
        if self._broker_lost_at is None:
            self._broker_lost_at = self.clock.monotonic()

    def _floor_deadline(self: ApplianceCore) -> float | None:
        if self._broker_lost_at is None or self.floor is None or self.floor.status != fl.SPEAKING:
            return None
        return self._broker_lost_at + self.settings.floor_offline_mute_s

    def _floor_tick(self: ApplianceCore, now: float) -> None:
        deadline = self._floor_deadline()
        if deadline is not None and now >= deadline:
            self._log("warning", f"broker unreachable for {self.settings.floor_offline_mute_s:g} s while speaking: "
                      "muting the microphone (the centre could not take the floor back)")
            self._floor_apply("broker_lost", reason="broker_lost")

    # --- what others see ------------------------------------------------------------------------
    def _floor_payload(self: ApplianceCore) -> dict[str, Any] | None:
        floor = self.floor
        if floor is None or not self._floor_shown():
            return None
        return {"mode": floor.mode, "status": floor.status,
                "requested_at": rfc3339(floor.requested_at) if floor.requested_at is not None else None}

    def _floor_shown(self: ApplianceCore) -> bool:
        return self.state == IN_MEETING  # joining has a floor (the uplink starts muted) but shows none yet

    def _microphone_live(self: ApplianceCore) -> bool:
        return self.floor is not None and self.floor.microphone_live
