"""What the core sends out, derived from its state: the retained state, acks' and events' common
form, the LED pattern and the screen, emitted only when they change.

A mixin of ApplianceCore, kept apart so the state machine reads on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.core import io, led
from appliance.core.clock import rfc3339
from appliance.core.presentation import led_pattern, screen_name
from appliance.core.transitions import IDLE, IN_MEETING
from appliance.core.update import REBOOTING

if TYPE_CHECKING:
    from appliance.core.machine import ApplianceCore

BROKEN_HEALTH = ("missing", "error")


class OutputsFlow:
    def _is_broken(self: ApplianceCore, part: str) -> bool:
        return part in self._reported and self.health[part] in BROKEN_HEALTH

    def _broken(self: ApplianceCore) -> bool:
        parts_broken = any(self._is_broken(part) for part in ("panel", "camera", "display"))
        return parts_broken or bool(self.publish_denied) or bool(self.provision_problems)

    def _led_pattern(self: ApplianceCore) -> led.LedPattern:
        testing_panel = bool(self.selftest and self.selftest.waiting_press)
        floor_status = self.floor.status if self._floor_shown() and self.floor else None
        return led_pattern(self.state, self.broker_connected, self._broken(), testing_panel, floor_status)

    def _screen(self: ApplianceCore) -> tuple[str, dict[str, Any]]:
        site_name = self.settings.site_name or self.settings.site_id
        selftest = self._selftest_screen(site_name)
        if selftest is not None:
            return "selftest", selftest
        screen = screen_name(self.state, self.broker_connected, self._is_broken("camera"), self.health,
                             bool(self.provision_problems))
        floor = self._floor_payload()
        info = {
            "problems": list(self.provision_problems),
            "site_name": site_name,
            "title": self.meeting.title if self.meeting else None,
            "notice": self._notice[0] if self._notice else None,
            "broker_connected": self.broker_connected,
            "uplink": self.health["uplink"],
            "program": self.health["program"],
            "camera": self.health["camera"],
            "floor": floor["status"] if floor else None,
            "floor_mode": floor["mode"] if floor else None,
            "update": self.update.payload() if self.update is not None else None,
        }
        if screen == IDLE and self.update is not None and self.update.phase == REBOOTING:
            screen = "updating"  # the restart into the new version (or back) is about to happen
        return screen, info

    def _state_payload(self: ApplianceCore) -> dict[str, Any]:
        return {
            "v": 1,
            "site": self.settings.site_id,
            "online": True,
            "state": self.state,
            "meeting": {"meeting_id": self.meeting.meeting_id, "title": self.meeting.title} if self.meeting else None,
            "floor": self._floor_payload(),
            "software": self._software_payload(),
            "since": rfc3339(self.since),
            "version": self.settings.version,
            "boot_id": self.settings.boot_id,
            "tz": self.settings.timezone,  # the site's local time for the centre's views (beyond the contract)
            "health": dict(self.health),
            "at": rfc3339(self.clock.wall()),
        }

    def _finish(self: ApplianceCore) -> list[io.Effect]:
        """Emit whatever derived output changed, then hand the accumulated effects over."""
        self.uptime.observe(self.clock.monotonic(), self.broker_connected, self.state == IN_MEETING)
        self._update_settle()  # an update step may have waited for this moment (see update_flow.py)
        # Compared cheaply on every step; the payload (with its timestamps) is built only on a change.
        software = self._software_payload()
        fingerprint = (self.state, self.meeting, self.floor, tuple(self.health.items()), str(software))
        if fingerprint != self._published:
            self._published = fingerprint
            payload = self._state_payload()
            # Offline, a state would only queue up stale; the reconnect publishes the current one.
            if self.broker_connected:
                self._emit(io.Publish(self.topics.state, payload, retain=True))
            self._emit(io.NotifyStatus(f"{self.state}; broker {self.health['broker']}"))
        microphone = self._microphone_live()
        if microphone != self._microphone_shown:
            self._microphone_shown = microphone
            self._emit(io.SetMicrophone(microphone))
        ducked = microphone and self.settings.echo_mode == "duck" and self.settings.display_enabled
        if ducked != self._ducked_shown:
            self._ducked_shown = ducked
            self._emit(io.DuckProgram(ducked))
        if self._connect_checkpoint:
            self._connect_checkpoint = False
            self._checkpoint(publish=True)
        screen, info = self._screen()
        shown = (screen, str(sorted(info.items())), self._led_pattern())
        if shown != self._shown:
            if self._shown is None or shown[2] != self._shown[2]:
                self._emit(io.SetLed(shown[2]))
            if self._shown is None or shown[:2] != self._shown[:2]:
                self._emit(io.ShowScreen(screen, info))
            self._shown = shown
        effects, self._effects = self._effects, []
        return effects

    def _show_notice(self: ApplianceCore, notice: str) -> None:
        self._notice = (notice, self.clock.monotonic() + self.settings.notice_s)

    def _event(self: ApplianceCore, event_type: str, receipt: str = "", **fields: Any) -> None:
        payload = {"v": 1, "site": self.settings.site_id, "at": rfc3339(self.clock.wall()), "type": event_type, **fields}
        self._emit(io.Publish(self.topics.event, payload, receipt=receipt))

    def _log(self: ApplianceCore, level: str, message: str) -> None:
        self._emit(io.Log(level, message))

    def _emit(self: ApplianceCore, effect: io.Effect) -> None:
        self._effects.append(effect)
