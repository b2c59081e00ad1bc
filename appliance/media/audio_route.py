"""Where the site's sound goes in and out, by `audio.echo`: one place for the names both ends share.

- `aec`: the program plays into the echo canceller's sink and the uplink captures its cleaned
  source, both in the audio engine (PipeWire, spoken to through its PulseAudio protocol). The
  canceller (`libpipewire-module-echo-cancel` with WebRTC's processing) is a client process of the
  engine that the daemon's audio watcher keeps running (`adapters/echo_canceller.py`).
- `duck`, `device`, `off`: the microphone through ALSA (`camera.audio_device`) and the program
  through VLC's default output, as before the engine; `duck` lowers the program while the site speaks.

A device with no engine installed at all (no `pipewire`, no `pactl`: an image built before the
engine was added) behaves as `off`, as before, and says so in `health.audio`. With the engine
installed but not working in `aec` mode, the uplink sends a silent track rather than the raw
microphone (its echo would reach every site), so the site still joins and sends video; the audio
health says why (`adapters/audio.py`).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

ECHO_SOURCE = "rapat_echo_source"  # the microphone, with the program's echo removed
ECHO_SINK = "rapat_echo_sink"      # what the speaker plays, and the canceller's reference
DEFAULT_SOURCE = "@DEFAULT_SOURCE@"
SILENT_TRACK = ["-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono"]


def engine_installed() -> bool:
    return bool(shutil.which("pipewire") and shutil.which("pactl"))


def effective_echo(config: Any) -> str:
    """`audio.echo`, except `aec` on a device without the engine: that one works as `off`."""
    echo = config["audio"]["echo"]
    return "off" if echo == "aec" and not engine_installed() else echo


def uses_engine(config: Any) -> bool:
    return effective_echo(config) == "aec"


def engine_capture_args(config: Any) -> list[str]:
    """ffmpeg's input for the microphone through the engine (the canceller's source in `aec`)."""
    source = ECHO_SOURCE if uses_engine(config) else DEFAULT_SOURCE
    # A small fragment size keeps the engine's part of the microphone's delay to a few ms.
    return ["-f", "pulse", "-fragment_size", "1920", "-sample_rate", "48000", "-channels", "1",
            "-thread_queue_size", "1024", "-i", source]


# Without this, a PulseAudio-protocol server moves a recording stream whose source vanished (the
# canceller restarting) to the default source: the raw microphone, echo and all, would go to the
# centre until the health watcher noticed. With it the stream fails, ffmpeg ends, and the uplink
# restarts on a silent track (measured on the rig: moved to the raw mic without, ended with).
CAPTURE_ENVIRONMENT = {"PULSE_PROP": "node.dont-reconnect=true"}


def capture_environment(capture_args: list[str]) -> dict[str, str] | None:
    """The environment for an ffmpeg with these audio input args (None: inherit the daemon's)."""
    if capture_args[:2] != ["-f", "pulse"]:
        return None
    return {**os.environ, **CAPTURE_ENVIRONMENT}


def alsa_capture_args(device: str) -> list[str]:
    if not device:  # no microphone: a silent track keeps the stream's shape the centre expects
        return list(SILENT_TRACK)
    return ["-f", "alsa", "-channels", "1", "-sample_rate", "48000", "-thread_queue_size", "1024", "-i", device]


def microphone_args(config: Any, engine_ok: bool | None) -> list[str]:
    """The uplink's audio input now: through the engine in `aec` mode while it works, else ALSA;
    the silent track when the engine is known to be down (the video must still go)."""
    if uses_engine(config):
        return engine_capture_args(config) if engine_ok is not False else list(SILENT_TRACK)
    return alsa_capture_args(config["camera"]["audio_device"])


def vlc_audio_args(display: dict[str, Any], echo: str) -> list[str]:
    """VLC's sound output: into the canceller's sink in `aec` mode (also headless: the canceller
    needs the reference), else the configured ALSA device, else VLC's default (none headless)."""
    if echo == "aec" or display.get("audio_device") == "pulse":  # "pulse": the engine's default sink
        return ["--aout=pulse"]
    if display.get("output", "drm") == "headless":
        return ["--no-audio"]
    if display.get("audio_device"):
        return ["--aout=alsa", f"--alsa-audio-device={display['audio_device']}"]
    return []


def vlc_environment(config: Any) -> dict[str, str]:
    """What libpulse inside VLC reads: the sink to play into (VLC 3 has no option for it)."""
    return {"PULSE_SINK": ECHO_SINK} if uses_engine(config) else {}


def duck_volume(duck_db: float) -> int:
    """libvlc's volume (percent) for the program `duck_db` quieter. VLC's volume is cubic (as
    PulseAudio's): the gain is (percent/100)^3, so 40 % is -24 dB (measured at the rig's speaker:
    `tests/audio/test_duck.py`); 6 % would be -72 dB, a mute rather than a duck."""
    return max(0, round(100 * 10 ** (-duck_db / 60)))
