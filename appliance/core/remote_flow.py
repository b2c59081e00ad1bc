"""The core's remote operations: `logs`, `screenshot`, `reboot` (the transition table decides whether
they are taken; a reboot in a meeting only with `force`). Data comes back from the adapters as
`ReplyData` and leaves in chunks on the reply topic (`replies.py`). A mixin of ApplianceCore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.core import io, replies
from appliance.core.transitions import IN_MEETING, JOINING, LEAVING

if TYPE_CHECKING:
    from appliance.core.machine import ApplianceCore


class RemoteFlow:
    def _send_logs(self: ApplianceCore, context: dict[str, Any]) -> None:
        body = context["body"]
        self._emit(io.ReadLogs(context["command_id"], body.get("since"), body.get("lines", replies.DEFAULT_LOG_LINES)))

    def _send_screenshot(self: ApplianceCore, context: dict[str, Any]) -> None:
        if not self.settings.display_enabled:
            self._publish_reply(io.ReplyData(context["command_id"], "screenshot", error="no display (display.backend = none)"))
            return
        self._emit(io.TakeScreenshot(context["command_id"]))

    def _reboot(self: ApplianceCore, context: dict[str, Any]) -> None:
        forced = self.state in (JOINING, IN_MEETING, LEAVING)
        self._log("warning", f"rebooting on the centre's command{' (forced, in a meeting)' if forced else ''}")
        self._event("reboot.requested", forced=forced)
        self._emit(io.RequestReboot("normal"))

    def _on_reply_data(self: ApplianceCore, event: io.ReplyData) -> None:
        self._publish_reply(event)

    def _publish_reply(self: ApplianceCore, reply: io.ReplyData) -> None:
        site, topic = self.settings.site_id, f"{self.topics.reply}/{reply.command_id}"
        if reply.error:
            chunks = replies.error_chunk(site, reply.command_id, reply.command_type, reply.error)
        elif reply.lines is not None:
            chunks = replies.line_chunks(site, reply.command_id, list(reply.lines), reply.command_type)
        else:
            chunks = replies.data_chunks(site, reply.command_id, reply.data or b"", reply.content_type,
                                         reply.command_type)
        for chunk in chunks:
            self._emit(io.Publish(topic, chunk))
