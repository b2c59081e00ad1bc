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

TEXTS = {
    "id": {
        "title": "Uji mandiri", "press_now": "Tekan tombol sekarang",
        "press_hint": "Lampu tombol berkedip pola uji. {s} detik.",
        "running": "Uji mandiri berjalan…", "all_ok": "Semua pemeriksaan lulus", "failed": "Ada pemeriksaan yang gagal",
        "ok": "lulus", "fail": "GAGAL", "skip": "tidak diuji",
        "panel": "Tombol", "camera": "Kamera", "display": "Layar", "audio": "Mikrofon", "broker": "Koneksi ke pusat",
        "clock": "Jam", "disk": "Kartu SD", "power": "Catu daya",
    },
    "en": {
        "title": "Self-test", "press_now": "Press the button now",
        "press_hint": "The button light shows its test pattern. {s} seconds.",
        "running": "Self-test running…", "all_ok": "All checks passed", "failed": "Some checks failed",
        "ok": "passed", "fail": "FAILED", "skip": "not tested",
        "panel": "Button", "camera": "Camera", "display": "Screen", "audio": "Microphone", "broker": "Connection to the centre",
        "clock": "Clock", "disk": "SD card", "power": "Power supply",
    },
}


def texts(language: str) -> dict[str, str]:
    return TEXTS.get(language, TEXTS["id"])


def result(ok: bool | None, detail: str) -> Result:
    return {"ok": ok, "detail": detail}


def overall(checks: dict[str, Result]) -> bool:
    """Passed when every check that ran passed; a check that could not run (null) neither passes nor fails."""
    return all(check["ok"] is not False for check in checks.values())


def summary_lines(checks: dict[str, Result], language: str = "id") -> list[str]:
    t = texts(language)
    lines = []
    for name in CHECKS:
        check = checks.get(name) or result(None, "")
        verdict = {True: t["ok"], False: t["fail"], None: t["skip"]}[check["ok"]]
        lines.append(f"{t[name]}: {verdict}" + (f" ({check['detail']})" if check["detail"] else ""))
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
            self.record("panel", result(False, f"no press within {PANEL_WAIT_S:g} s"))
        if self.broker_sent_at is not None and now >= self.broker_sent_at + BROKER_TIMEOUT_S:
            self.record("broker", result(False, f"no answer from the broker within {BROKER_TIMEOUT_S:g} s"))
        if self.probes_deadline is not None and now >= self.probes_deadline:
            for name in (*PROBED, "camera"):
                self.record(name, result(False, f"the probe gave no answer within {PROBES_TIMEOUT_S:g} s"))

    def abandon(self, why: str) -> None:
        """End the run now: every check still open is reported as not tested, saying why."""
        for name in CHECKS:
            self.record(name, result(None, f"not finished: {why}"))

    def payload(self, site: str, at: str) -> dict[str, Any]:
        checks = {name: self.checks[name] for name in CHECKS}
        return {"v": 1, "site": site, "at": at, "ok": overall(checks), "checks": checks}
