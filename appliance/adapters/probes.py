"""The self-test's probes: the checks that touch hardware, run on one worker thread.

The core decides when a run starts and which probes it needs (the `RunProbes` effect); this adapter
runs them one after another off the event loop (an audio capture takes a second, a camera probe up
to five) and posts each outcome back as a `SelftestCheckDone` event. It never shows, publishes or
decides anything itself.
"""

from __future__ import annotations

import array
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.adapters import sysinfo
from appliance.adapters.audio_checks import capture_devices, engine_selftest
from appliance.adapters.storage import write_atomic
from appliance.core.io import SelftestCheckDone
from appliance.core.selftest import Result, result
from appliance.media.audio_route import uses_engine

MIN_FREE_MB = 200.0
AUDIO_CAPTURE_S = 1
SILENCE_PEAK = 64  # of 32767: below this a 16-bit capture is silence (or a dead microphone)


def check_clock(synced: bool | None) -> Result:
    if synced is None:
        return result(None, "selftest.clock.unknown")
    return result(synced, "selftest.clock.synced" if synced else "selftest.clock.unsynced")


def check_power(flags: dict[str, Any] | None) -> Result:
    if flags is None:
        return result(None, "selftest.power.unknown")
    now = [name for name in ("under_voltage", "throttled", "freq_capped") if flags.get(name)]
    since_boot = [name for name in ("under_voltage_occurred", "throttled_occurred") if flags.get(name)]
    if now or since_boot:
        return result(False, "selftest.power.problem", flags=", ".join(now + since_boot), raw=flags.get("raw"))
    return result(True, "selftest.power.ok", raw=flags.get("raw"))


def check_disk(state_dir: str, free_mb: float | None) -> Result:
    if free_mb is None:
        return result(False, "selftest.disk.no_free_space", path=state_dir)
    probe = Path(state_dir) / ".selftest-probe"
    data = os.urandom(64 * 1024)
    try:
        write_atomic(probe, data)
        good = probe.read_bytes() == data
    except OSError as exc:
        return result(False, "selftest.disk.write_failed", error=exc)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    if not good:
        return result(False, "selftest.disk.corrupt")
    if free_mb < MIN_FREE_MB:
        return result(False, "selftest.disk.low", free=f"{free_mb:g}", need=f"{MIN_FREE_MB:g}")
    return result(True, "selftest.disk.ok", free=f"{free_mb:g}")


def check_audio(device: str, run: Callable[..., Any] = subprocess.run) -> Result:
    if not device:
        return result(None, "selftest.audio.not_configured")
    devices = capture_devices()
    if not devices:
        return result(False, "selftest.audio.no_device")
    if not shutil.which("arecord"):
        return result(False, "selftest.audio.no_arecord", count=len(devices))
    try:
        done = run(["arecord", "-q", "-D", device, "-d", str(AUDIO_CAPTURE_S), "-f", "S16_LE", "-r", "16000",
                    "-c", "1", "-t", "raw"], capture_output=True, timeout=AUDIO_CAPTURE_S + 5)
    except (OSError, subprocess.SubprocessError) as exc:
        return result(False, "selftest.audio.capture_failed", device=device, error=exc)
    if done.returncode != 0 or len(done.stdout) < 1000:
        return result(False, "selftest.audio.capture_failed", device=device,
                      error=done.stderr.decode(errors="replace").strip()[:200])
    samples = array.array("h", done.stdout[: len(done.stdout) // 2 * 2])
    peak = max(abs(sample) for sample in samples)
    if peak < SILENCE_PEAK:
        return result(False, "selftest.audio.silent", seconds=AUDIO_CAPTURE_S, device=device, peak=peak)
    return result(True, "selftest.audio.ok", seconds=AUDIO_CAPTURE_S, device=device, peak=peak)


def timed(fn: Callable[[], Result]) -> Result:
    started = time.monotonic()
    try:
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, not a dead self-test
        outcome = result(False, "selftest.crashed", error=f"{type(exc).__name__}: {exc}")
    outcome["duration_s"] = round(time.monotonic() - started, 3)
    return outcome


class Probes:
    """Runs the probes a self-test asks for (the camera probes itself: see FfmpegUplink.run_probe)."""

    def __init__(self, config: Any, post: Callable[[Any], None]) -> None:
        self.state_dir = config["paths"]["state_dir"]
        self.audio_device = config["camera"]["audio_device"]
        self.config = config
        self._post = post

    def _audio(self) -> Result:
        if uses_engine(self.config):  # aec: the engine, its canceller, and the cleaned microphone's level
            return engine_selftest(self.config)
        return check_audio(self.audio_device)

    def run(self, names: tuple[str, ...]) -> None:
        """Loop thread: start the worker and return at once."""
        probes: dict[str, Callable[[], Result]] = {
            "clock": lambda: check_clock(sysinfo.clock_synced()),
            "power": lambda: check_power(sysinfo.throttled()),
            "disk": lambda: check_disk(self.state_dir, sysinfo.disk_free_mb(self.state_dir)),
            "audio": self._audio,
        }
        unknown = set(names) - set(probes)
        if unknown:
            raise ValueError(f"no probe for {', '.join(sorted(unknown))}")

        def work() -> None:
            for name in names:
                self._post(SelftestCheckDone(name, timed(probes[name])))

        threading.Thread(target=work, name="selftest-probes", daemon=True).start()
