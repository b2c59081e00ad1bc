"""The core's uptime and telemetry duties: ledger checkpoints, the retained ledger, telemetry.

A mixin of ApplianceCore (it uses the core's clock, settings, topics, health and `_emit`), kept
apart so the state machine reads on its own.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from appliance.core import io
from appliance.core.clock import rfc3339

if TYPE_CHECKING:
    from appliance.core.machine import ApplianceCore


class UptimeFlow:
    def _on_checkpoint_due(self: ApplianceCore, event: io.CheckpointDue) -> None:
        self._checkpoint()

    def _checkpoint(self: ApplianceCore, publish: bool = False) -> None:
        # The ledger's segment up to now still carries the flags from before this event.
        ledger = self.uptime
        changed = ledger.checkpoint(self.clock.monotonic(), self.clock.wall(), self.health["clock"] == "synced")
        self._emit(io.SaveUptime(tuple(copy.copy(ledger.days[date]) for date in sorted(changed)),
                                 copy.deepcopy(ledger.state), ledger.pending(), tuple(sorted(ledger.days))))
        now = self.clock.monotonic()
        due = self._uptime_published_at is None or now - self._uptime_published_at >= self.settings.uptime_publish_s - 1
        if self.broker_connected and (publish or due):
            self._uptime_published_at = now
            self._emit(io.Publish(self.topics.uptime, self.uptime_payload(), retain=True))

    def uptime_payload(self: ApplianceCore) -> dict[str, Any]:
        return {"v": 1, "site": self.settings.site_id, "tz": self.uptime.timezone,
                "days": self.uptime.messages_days(), "at": rfc3339(self.clock.wall())}

    def _on_telemetry_due(self: ApplianceCore, event: io.TelemetryDue) -> None:
        if not self.broker_connected:
            return  # queued, it would arrive late with an old `at` and pass for connected time at the console
        payload = {
            "v": 1,
            "site": self.settings.site_id,
            "at": rfc3339(self.clock.wall()),
            "uptime_s": round(self.clock.monotonic() - self.started_at, 1),
            "boot_id": self.settings.boot_id,
            "mqtt_reconnects": self.reconnects,
            "state": self.state,
            "disk": self.health["disk"],
            **event.sample,
        }
        self._emit(io.Publish(self.topics.telemetry, payload))
