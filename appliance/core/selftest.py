"""The on-site self-test as the core runs it: its checks, one run's bookkeeping, and its texts.

Pure: the probes that touch hardware (camera, microphone, disk, clock, power) live in
`appliance/adapters/probes.py` and report back as `SelftestCheckDone` events. The core owns the
rest: when a run may start, the broker round trip (a publish with a receipt), the display check,
the wait for a person to press the button, the deadlines, what the screen and LED show, and the
retained result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.core import messages

CHECKS = ("panel", "camera", "display", "audio", "broker", "clock", "disk", "power")
# Run by the probes adapter on its worker thread (RunProbes); the camera probes itself (ProbeCamera);
# the others are decided by the core.
PROBED = ("clock", "power", "disk", "audio")
PANEL_WAIT_S = 30.0
BROKER_TIMEOUT_S = 5.0
CAMERA_PROBE_S = 5.0
# A probe that has not answered by then (a hung SD card, a dead worker) fails; the run always ends.
PROBES_TIMEOUT_S = 30.0
RESULT_SHOWN_S = 20.0
BROKER_RECEIPT = "selftest.broker"
Result = dict[str, Any]

SCREEN_KEYS = ("title", "press_now", "press_hint", "running", "all_ok", "failed")


def texts(language: str) -> dict[str, str]:
    """The self-test's words on screen, from the message catalogue: screen keys, verdicts (ok, fail,
    skip) and each check's name. `press_hint` keeps its `{seconds}` for the caller."""
    said = {key: messages.CATALOGUE[f"selftest.{key}"][0 if messages.language(language) == "id" else 1]
            for key in SCREEN_KEYS}
    said.update({key: messages.say(f"selftest.verdict.{key}", language) for key in ("ok", "fail", "skip")})
    said.update({name: messages.say(f"selftest.check.{name}", language) for name in CHECKS})
    return said


def result(ok: bool | None, code: str, **params: Any) -> Result:
    """A check's outcome: `detail` in Bahasa Indonesia (what the centre and the rollout report show),
    `detail_en` in English, and the catalogue `code` for machines (appliance/core/messages.py)."""
    said = messages.Message(code, params)
    return {"ok": ok, "code": code, "detail": said.text("id"), "detail_en": said.text("en")}


def detail(check: Result, language: str) -> str:
    """A check's detail in `language`; a result from an older device has only `detail`."""
    return str((check.get("detail_en") if language == "en" else None) or check.get("detail") or "")


def overall(checks: dict[str, Result]) -> bool:
    """Passed when every check that ran passed; a check that could not run (null) neither passes nor fails."""
    return all(check["ok"] is not False for check in checks.values())


def summary_lines(checks: dict[str, Result], language: str = "id") -> list[str]:
    t = texts(language)
    lines = []
    for name in CHECKS:
        check = checks.get(name) or {"ok": None}
        verdict = {True: t["ok"], False: t["fail"], None: t["skip"]}[check.get("ok")]
        said = detail(check, language)
        lines.append(f"{t[name]}: {verdict}" + (f" ({said})" if said else ""))
    return lines


@dataclass
class SelftestRun:
    """One run: the results so far and what is still awaited (each wait has a monotonic deadline)."""

    interactive: bool
    started: float
    # Each run's broker probe has its own receipt, so a late PUBACK of an earlier run cannot pass it.
    receipt: str = BROKER_RECEIPT
    checks: dict[str, Result] = field(default_factory=dict)
    panel_deadline: float | None = None
    press_began: bool = False  # only a press that begins during the wait counts
    broker_sent_at: float | None = None
    probes_deadline: float | None = None

    @property
    def waiting_press(self) -> bool:
        return self.panel_deadline is not None

    @property
    def complete(self) -> bool:
        return all(name in self.checks for name in CHECKS)

    def record(self, name: str, outcome: Result) -> None:
        """The first result of a check counts (a late probe after a timeout does not overwrite it)."""
        if name not in CHECKS or name in self.checks:
            return
        self.checks[name] = outcome
        if name == "panel":
            self.panel_deadline = None
        if name == "broker":
            self.broker_sent_at = None
        if all(check in self.checks for check in (*PROBED, "camera")):
            self.probes_deadline = None

    def deadlines(self) -> list[float]:
        pending = [self.panel_deadline, self.probes_deadline]
        if self.broker_sent_at is not None:
            pending.append(self.broker_sent_at + BROKER_TIMEOUT_S)
        return [deadline for deadline in pending if deadline is not None]

    def expire(self, now: float) -> None:
        if self.panel_deadline is not None and now >= self.panel_deadline:
            self.record("panel", result(False, "selftest.panel.no_press", seconds=f"{PANEL_WAIT_S:g}"))
        if self.broker_sent_at is not None and now >= self.broker_sent_at + BROKER_TIMEOUT_S:
            self.record("broker", result(False, "selftest.broker.no_answer", seconds=f"{BROKER_TIMEOUT_S:g}"))
        if self.probes_deadline is not None and now >= self.probes_deadline:
            for name in (*PROBED, "camera"):
                self.record(name, result(False, "selftest.no_answer", seconds=f"{PROBES_TIMEOUT_S:g}"))

    def abandon(self, why_code: str) -> None:
        """End the run now: every check still open is reported as not tested, saying why (a catalogue code)."""
        for name in CHECKS:
            self.record(name, result(None, why_code))

    def payload(self, site: str, at: str) -> dict[str, Any]:
        checks = {name: self.checks[name] for name in CHECKS}
        return {"v": 1, "site": site, "at": at, "ok": overall(checks), "checks": checks}
