"""The on-site self-test: the checks, their texts (Bahasa Indonesia / English), and one run's bookkeeping.

The daemon drives a run from its event loop (see `Daemon._selftest_*`): blocking checks (audio
capture, disk probe, camera probe) run on a worker thread that only posts results back; the broker
round trip is polled with timers; the panel check waits for a press as a state of the loop (presses
go to the run instead of the state machine). A check that needs a person and had none is `null`.
"""

from __future__ import annotations

import array
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.adapters.storage import write_atomic

CHECKS = ("panel", "camera", "display", "audio", "broker", "clock", "disk", "power")
PANEL_WAIT_S = 30.0
MIN_FREE_MB = 200.0
AUDIO_CAPTURE_S = 1
SILENCE_PEAK = 64  # of 32767: below this a 16-bit capture is silence (or a dead microphone)
Result = dict[str, Any]

TEXTS = {
    "id": {
        "title": "Uji mandiri", "press_now": "Tekan tombol sekarang", "press_hint": "Lampu tombol berkedip pola uji. {s} detik.",
        "running": "Uji mandiri berjalan…", "all_ok": "Semua pemeriksaan lulus", "failed": "Ada pemeriksaan yang gagal",
        "ok": "lulus", "fail": "GAGAL", "skip": "tidak diuji",
        "panel": "Tombol", "camera": "Kamera", "display": "Layar", "audio": "Mikrofon", "broker": "Koneksi ke pusat",
        "clock": "Jam", "disk": "Kartu SD", "power": "Catu daya",
    },
    "en": {
        "title": "Self-test", "press_now": "Press the button now", "press_hint": "The button light shows its test pattern. {s} seconds.",
        "running": "Self-test running…", "all_ok": "All checks passed", "failed": "Some checks failed",
        "ok": "passed", "fail": "FAILED", "skip": "not tested",
        "panel": "Button", "camera": "Camera", "display": "Screen", "audio": "Microphone", "broker": "Connection to the centre",
        "clock": "Clock", "disk": "SD card", "power": "Power supply",
    },
}


def result(ok: bool | None, detail: str) -> Result:
    return {"ok": ok, "detail": detail}


def overall(checks: dict[str, Result]) -> bool:
    """Passed when every check that ran passed; a check that could not run (null) neither passes nor fails."""
    return all(check["ok"] is not False for check in checks.values())


def summary_lines(checks: dict[str, Result], language: str = "id") -> list[str]:
    t = TEXTS.get(language, TEXTS["id"])
    lines = []
    for name in CHECKS:
        check = checks.get(name) or result(None, "")
        verdict = {True: t["ok"], False: t["fail"], None: t["skip"]}[check["ok"]]
        lines.append(f"{t[name]}: {verdict}" + (f" ({check['detail']})" if check["detail"] else ""))
    return lines


# --- checks that run on the worker thread -----------------------------------------------------------
def check_clock(synced: bool | None) -> Result:
    if synced is None:
        return result(None, "the kernel does not say whether the clock is synchronised")
    return result(synced, "synchronised (NTP)" if synced else "not synchronised: check NTP / internet")


def check_power(flags: dict[str, Any] | None) -> Result:
    if flags is None:
        return result(None, "no throttling flags on this system (not a Raspberry Pi)")
    now = [name for name in ("under_voltage", "throttled", "freq_capped") if flags.get(name)]
    since_boot = [name for name in ("under_voltage_occurred", "throttled_occurred") if flags.get(name)]
    if now or since_boot:
        return result(False, f"{', '.join(now + since_boot)} (raw {flags.get('raw')}): use the official power supply")
    return result(True, f"no under-voltage or throttling (raw {flags.get('raw')})")


def check_disk(state_dir: str, free_mb: float | None) -> Result:
    if free_mb is None:
        return result(False, f"cannot read free space of {state_dir}")
    probe = Path(state_dir) / ".selftest-probe"
    data = os.urandom(64 * 1024)
    try:
        write_atomic(probe, data)
        good = probe.read_bytes() == data
    except OSError as exc:
        return result(False, f"write probe failed: {exc}")
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    if not good:
        return result(False, "write probe read back different bytes: the SD card is failing")
    if free_mb < MIN_FREE_MB:
        return result(False, f"only {free_mb:g} MB free (need {MIN_FREE_MB:g})")
    return result(True, f"{free_mb:g} MB free, write probe ok")


def capture_devices(pcm: Path = Path("/proc/asound/pcm")) -> list[str]:
    try:
        return [line.strip() for line in pcm.read_text().splitlines() if "capture" in line]
    except OSError:
        return []


def check_audio(device: str, run: Callable[..., Any] = subprocess.run) -> Result:
    if not device:
        return result(None, "no microphone configured (camera.audio_device = \"\")")
    devices = capture_devices()
    if not devices:
        return result(False, "no audio capture device (no microphone found)")
    if not shutil.which("arecord"):
        return result(False, f"{len(devices)} capture device(s), but arecord (alsa-utils) is missing")
    try:
        done = run(["arecord", "-q", "-D", device, "-d", str(AUDIO_CAPTURE_S), "-f", "S16_LE", "-r", "16000",
                    "-c", "1", "-t", "raw"], capture_output=True, timeout=AUDIO_CAPTURE_S + 5)
    except (OSError, subprocess.SubprocessError) as exc:
        return result(False, f"capture from {device} failed: {exc}")
    if done.returncode != 0 or len(done.stdout) < 1000:
        return result(False, f"capture from {device} failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    samples = array.array("h", done.stdout[: len(done.stdout) // 2 * 2])
    peak = max(abs(sample) for sample in samples)
    if peak < SILENCE_PEAK:
        return result(False, f"{AUDIO_CAPTURE_S} s capture from {device} is silent (peak {peak})")
    return result(True, f"{AUDIO_CAPTURE_S} s capture from {device}, peak {peak}")


def check_camera(backend: str, camera: Any, health: str) -> Result:
    if backend == "none":
        return result(None, "disabled (camera.backend = none)")
    if camera is None:
        return result(False, f"camera backend {backend} unavailable ({health})")
    probe = getattr(camera, "probe", None)
    if callable(probe):  # a backend that can start its encoder briefly and count frames
        ok, detail = probe(5.0)
        return result(bool(ok), str(detail))
    problem = camera.check() if callable(getattr(camera, "check", None)) else None
    if problem:
        return result(False, problem)
    if health != "ok":
        return result(False, f"camera health is {health}")
    return result(True, f"{backend} present; frames not checked (this backend has no probe)")


class SelftestRun:
    """One run: which checks are still out, the results so far, and the panel wait."""

    def __init__(self, site: str, interactive: bool, started_mono: float,
                 on_done: Callable[[SelftestRun], None]) -> None:
        self.site = site
        self.interactive = interactive
        self.started_mono = started_mono
        self.checks: dict[str, Result] = {}
        self.waiting_press = False
        self._on_done = on_done
        self.done = False

    def record(self, name: str, outcome: Result) -> None:
        if self.done or name in self.checks:
            return
        self.checks[name] = outcome
        if name == "panel":
            self.waiting_press = False
        if all(check in self.checks for check in CHECKS):
            self.done = True
            self._on_done(self)

    def payload(self, at: str) -> dict[str, Any]:
        checks = {name: self.checks[name] for name in CHECKS}
        return {"v": 1, "site": self.site, "at": at, "ok": overall(checks), "checks": checks}

    def elapsed(self, now: float) -> float:
        return now - self.started_mono


def timed(fn: Callable[[], Result]) -> Result:
    started = time.monotonic()
    try:
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, not a dead self-test
        outcome = result(False, f"check crashed: {type(exc).__name__}: {exc}")
    outcome["duration_s"] = round(time.monotonic() - started, 3)
    return outcome
