"""The audio path's checks, shared by the health watcher (`audio.py`) and the self-test's probes:
the audio engine and its echo canceller (`audio.echo = aec`, through PipeWire's `pactl`), or the
ALSA microphone (the other modes), in words a technician can act on. Blocking: never on the loop.
"""

from __future__ import annotations

import array
import math
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.adapters.echo_canceller import describe_delay, load_delay, save_delay
from appliance.adapters.echo_delay import EchoDelayError, measure_echo_delay
from appliance.core.messages import Message, message
from appliance.core.selftest import result
from appliance.media.audio_route import ECHO_SINK, ECHO_SOURCE, uses_engine

LEVEL_CAPTURE_S = 1.0
SILENCE_DBFS = -60.0
PACTL_TIMEOUT_S = 3.0


def audio_health(config: Any, run: Callable[..., Any] = subprocess.run) -> tuple[str, str]:
    """(health value, detail) of the audio path now."""
    if config["camera"]["backend"] == "none":
        return "disabled", "no camera, so no microphone is sent (camera.backend = none)"
    if not uses_engine(config):
        value, detail = _alsa_health(config)
        if config["audio"]["echo"] == "aec" and value == "ok":  # asked for, but not on this device
            return "missing", ("no audio engine installed (PipeWire), so no echo cancellation: " + detail +
                               " is used directly; install the engine or set audio.echo")
        return value, detail
    return _engine_health(config, run)


def _alsa_health(config: Any) -> tuple[str, str]:
    camera = config["camera"]
    if camera["backend"] == "testsrc" and camera["test_audio"] == "tone":
        return "ok", "test tone (camera.backend = testsrc)"
    if not camera["audio_device"]:
        return "disabled", "no microphone configured (camera.audio_device = \"\"): a silent track is sent"
    if not capture_devices():
        return "missing", "no microphone found: plug in the USB webcam or microphone"
    mode = config["audio"]["echo"]
    return "ok", f"ALSA microphone {camera['audio_device']!r} (audio.echo = {mode})"


@dataclass(frozen=True)
class EngineStatus:
    """What the engine says now: its sources and sinks (node names), or why it does not answer."""

    answers: bool
    why: str = ""
    sources: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()

    @property
    def canceller_loaded(self) -> bool:
        return ECHO_SOURCE in self.sources and ECHO_SINK in self.sinks

    @property
    def microphones(self) -> list[str]:
        return [name for name in self.sources if name != ECHO_SOURCE and not name.endswith(".monitor")]

    @property
    def speakers(self) -> list[str]:
        # auto_null: what the PulseAudio protocol shows when the engine has no sink at all
        return [name for name in self.sinks if name not in (ECHO_SINK, "auto_null")]


def engine_status(run: Callable[..., Any] = subprocess.run) -> EngineStatus:
    # Two `pactl` runs per check (the watcher's every 2 s): listing the sources also says whether
    # the engine answers at all, so no separate `pactl info`.
    listing = _pactl(run, "list", "short", "sources")
    if listing.returncode != 0:
        why = (listing.stderr or listing.stdout or "").strip().splitlines()
        return EngineStatus(False, why[-1] if why else "no reply")
    return EngineStatus(True, sources=tuple(_names(listing)), sinks=tuple(_names(_pactl(run, "list", "short", "sinks"))))


def chosen_device(run: Callable[..., Any], kind: str, candidates: list[str]) -> str | None:
    """The engine's default source/sink (`kind`) when it is one of `candidates` (a real device, not
    the canceller's own node), else the first candidate; None when there is none."""
    if not candidates:
        return None
    answer = _pactl(run, f"get-default-{kind}")
    default = answer.stdout.strip() if answer.returncode == 0 else ""
    return default if default in candidates else candidates[0]


def engine_problem(status: EngineStatus) -> tuple[str, Message] | None:
    """(health value, why) when the engine or its canceller is not working, else None."""
    if not status.answers:
        return "error", message("selftest.audio.engine_down", why=status.why)
    if not status.microphones:
        return "missing", message("selftest.audio.no_microphone")
    if not status.canceller_loaded:
        return "error", message("selftest.audio.canceller_down", source=ECHO_SOURCE, sink=ECHO_SINK)
    return None


def engine_health(status: EngineStatus, state_dir: str) -> tuple[str, str]:
    """(health value, detail) for the health watcher; the detail goes to the log, in English."""
    problem = engine_problem(status)
    if problem is not None:
        return problem[0], problem[1].text("en")
    return "ok", f"echo cancellation running ({describe_delay(state_dir)}); microphone {status.microphones[0]}"


def _engine_health(config: Any, run: Callable[..., Any]) -> tuple[str, str]:
    return engine_health(engine_status(run), config["paths"]["state_dir"])


def _pactl(run: Callable[..., Any], *args: str) -> Any:
    try:
        return run(["pactl", *args], capture_output=True, text=True, timeout=PACTL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 1, "", f"no answer within {PACTL_TIMEOUT_S:g} s")


def _names(listing: Any) -> list[str]:
    """The node names of a `pactl list short ...` answer (none when it failed)."""
    if listing.returncode != 0:
        return []
    return [line.split("\t")[1] for line in listing.stdout.splitlines() if line.count("\t") >= 1]


def capture_devices(pcm: Path = Path("/proc/asound/pcm")) -> list[str]:
    try:
        return [line.strip() for line in pcm.read_text().splitlines() if "capture" in line]
    except OSError:
        return []


def engine_selftest(config: Any, run: Callable[..., Any] = subprocess.run,
                    measure: Callable[[str, str], float] = measure_echo_delay) -> dict[str, Any]:
    """The self-test's audio check in `aec` mode: the engine and its canceller, one second of the
    cleaned microphone (what the uplink sends) and its level, then the echo delay measured with
    three clicks on the TV and saved for the canceller (which the watcher then restarts with it).
    Clicks heard prove the microphone too, in a quiet room; else a silent microphone is named."""
    state_dir = config["paths"]["state_dir"]
    status = engine_status(run)
    problem = engine_problem(status)
    if problem is not None:
        return result(False, problem[1].code, **problem[1].params)
    try:
        data = record(ECHO_SOURCE, LEVEL_CAPTURE_S)
    except OSError as exc:
        return result(False, "selftest.audio.record_failed", error=exc)
    if len(data) < 3200:
        return result(False, "selftest.audio.no_data", source=ECHO_SOURCE)
    level = level_dbfs(data)
    microphone = chosen_device(run, "source", status.microphones)
    speaker = chosen_device(run, "sink", status.speakers)
    heard = {"microphone": microphone, "level": f"{level:.0f}"}
    if speaker is None:
        return result(False, "selftest.audio.no_speaker", **heard)
    before = load_delay(state_dir)
    try:
        delay = measure(speaker, microphone or "")
    except EchoDelayError as exc:
        if level < SILENCE_DBFS:
            return result(False, "selftest.audio.mic_silent", **heard, error=exc)
        if before is None:
            return result(False, "selftest.audio.delay_unmeasured", **heard, error=exc)
        return result(True, "selftest.audio.delay_kept", **heard, ms=f"{before * 1000:.0f}", error=exc)
    save_delay(state_dir, delay, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return result(True, "selftest.audio.delay_measured", **heard, ms=f"{delay * 1000:.0f}")


def record(source: str, seconds: float, rate: int = 16000) -> bytes:
    """`seconds` of mono 16-bit PCM from an engine source. parec records until stopped and loses what
    it buffered when killed, so the bytes are read as they come and it is stopped once enough arrived."""
    wanted = int(rate * seconds) * 2
    reader = subprocess.Popen(["parec", "-d", source, "--raw", "--format=s16le", f"--rate={rate}", "--channels=1",
                               "--latency-msec=20"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    data = b""
    try:
        assert reader.stdout is not None
        deadline = time.monotonic() + seconds + PACTL_TIMEOUT_S
        while len(data) < wanted and time.monotonic() < deadline:
            ready, _, _ = select.select([reader.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = reader.stdout.read1(wanted - len(data)) if ready else b""
            if not chunk:
                break
            data += chunk
    finally:
        reader.kill()
        reader.wait()
    return data


def level_dbfs(data: bytes) -> float:
    """RMS level of signed 16-bit PCM in dB full scale; -inf for digital silence (or no data)."""
    samples = array.array("h", data[: len(data) // 2 * 2])
    if not samples:
        return -math.inf
    rms = math.sqrt(sum(sample * sample for sample in samples) / len(samples)) / 32768
    return 20 * math.log10(rms) if rms > 0 else -math.inf
