"""The core's self-test duties: start a run, collect its checks, show and publish the result.

A mixin of ApplianceCore (it uses the core's clock, settings, topics, health and `_emit`), kept
apart so the state machine reads on its own. The run's bookkeeping is `selftest.SelftestRun`; the
hardware probes are adapters that answer `RunProbes` (the probes adapter) and `ProbeCamera` (the
camera) with `SelftestCheckDone` events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.core import io, messages
from appliance.core import selftest as st
from appliance.core.clock import rfc3339
from appliance.core.transitions import IN_MEETING, JOINING, LEAVING

if TYPE_CHECKING:
    from appliance.core.machine import ApplianceCore


class SelftestFlow:
    def _start_selftest(self: ApplianceCore, context: dict[str, Any]) -> None:
        now = self.clock.monotonic()
        interactive = bool(context.get("interactive"))
        self._selftest_runs += 1
        run = self.selftest = st.SelftestRun(interactive, now, receipt=f"{st.BROKER_RECEIPT}.{self._selftest_runs}")
        self._selftest_result = None
        self._log("info", f"self-test started ({'interactive' if interactive else 'unattended'})")
        if self.broker_connected:
            # The broker's PUBACK for this event is the round trip the broker check measures.
            run.broker_sent_at = now
            self._event("selftest.started", receipt=run.receipt, interactive=interactive)
        else:
            run.record("broker", st.result(False, "selftest.broker.not_connected", reason=self.broker_problem))
        if not self.settings.display_enabled:
            run.record("display", st.result(None, "selftest.display.disabled"))
        else:
            shown = self.health["display"]
            run.record("display", st.result(True, "selftest.display.shown") if shown == "ok"
                       else st.result(False, "selftest.display.broken", value=shown))
        run.probes_deadline = now + st.PROBES_TIMEOUT_S
        if not self.settings.camera_enabled:
            run.record("camera", st.result(None, "selftest.camera.disabled"))
        elif self._is_broken("camera"):
            run.record("camera", st.result(False, "selftest.camera.broken", value=self.health["camera"]))
        else:
            self._emit(io.ProbeCamera(st.CAMERA_PROBE_S))
        self._emit(io.RunProbes(st.PROBED))
        if interactive:
            run.panel_deadline = now + st.PANEL_WAIT_S
            self._button_down_at = None  # a press begun before the test is neither the test's nor a hold
        else:
            run.record("panel", st.result(None, "selftest.panel.needs_person"))

    def _abandon_selftest(self: ApplianceCore, why_code: str) -> None:
        """A meeting outranks a self-test: it ends at once, what is still open reported as not tested."""
        if self.selftest is not None:
            self._log("warning", f"self-test ended early: {messages.say(why_code, 'en')}")
            self.selftest.abandon(why_code)
            self._selftest_progress()
            self._selftest_result = None  # the meeting has the screen

    def _selftest_progress(self: ApplianceCore) -> None:
        run = self.selftest
        if run is None or not run.complete:
            return
        self.selftest = None
        payload = run.payload(self.settings.site_id, rfc3339(self.clock.wall()))
        lines = st.summary_lines(run.checks, self.settings.language)
        # Sent even while offline: paho keeps it queued, and the centre wants the last result.
        self._emit(io.Publish(self.topics.selftest, payload, retain=True))
        self._log("info", f"self-test {'passed' if payload['ok'] else 'FAILED'}: " + "; ".join(lines))
        self._emit(io.SelftestDone(payload, tuple(lines), self.settings.language))
        self._selftest_result = (payload["ok"], lines, self.clock.monotonic() + st.RESULT_SHOWN_S)
        self._passed_checks = tuple(name for name, check in payload["checks"].items() if check.get("ok") is True)
        self._update_selftest_done(payload)

    def _on_publish_acked(self: ApplianceCore, event: io.PublishAcked) -> None:
        run = self.selftest
        if run and event.receipt == run.receipt and run.broker_sent_at is not None:
            waited = self.clock.monotonic() - run.broker_sent_at
            run.record("broker", st.result(True, "selftest.broker.round_trip", ms=f"{waited * 1000:.0f}"))
            self._selftest_progress()

    def _on_selftest_check_done(self: ApplianceCore, event: io.SelftestCheckDone) -> None:
        if self.selftest:
            self.selftest.record(event.name, event.outcome)
            self._selftest_progress()

    def _selftest_screen(self: ApplianceCore, site_name: str) -> dict[str, Any] | None:
        texts = st.texts(self.settings.language)
        if self.state in (JOINING, IN_MEETING, LEAVING):
            return None  # a meeting always has the screen
        if self.selftest is not None:
            if not self.selftest.waiting_press:
                return {"card": True, "site_name": site_name}  # the display check's test card
            return {"site_name": site_name, "title": texts["title"], "headline": texts["press_now"], "lines": [],
                    "hint": texts["press_hint"].format(seconds=f"{st.PANEL_WAIT_S:g}")}
        if self._selftest_result is not None:
            ok, lines, _ = self._selftest_result
            return {"site_name": site_name, "title": texts["title"], "headline": texts["all_ok" if ok else "failed"],
                    "lines": list(lines)}
        return None
