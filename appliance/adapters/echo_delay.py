"""Measure the site's echo delay: how long the TV's sound takes from the engine's speaker to its
microphone (HDMI output, the TV's own processing, the air). The echo canceller is told it
(`buffer.play_delay`); told, it cancels 42 dB on the rig, untold 11-15 dB.

Three short 3 kHz clicks are played into the speaker while ONE recorder stream (pw-record) takes
the speaker's monitor and the raw microphone as two channels of the same frames, so the delay is
read off samples, not clocks. Each click is found on the speaker channel, then its echo on the
microphone channel by cross-correlation over 0..MAX_DELAY_S. Blocking (about 3 s): only on the
self-test's worker thread. A take that played its clicks but did not measure them (the recorder
fell behind and lost one, or a word or a door in the room drowned the echoes) is taken once more
before the technician is told; a muted output or a missing device is told at once.
"""

from __future__ import annotations

import array
import contextlib
import math
import operator
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.media import proc
from appliance.media.echo_canceller import MAX_DELAY_S

RATE = 48000
PROBE_NODE = "rapat_delay_probe"
CLICKS = 3
CLICK_GAP_S = 0.6             # longer than MAX_DELAY_S: each echo arrives before the next click
CLICK_AMPLITUDE = 0.5         # -6 dBFS peak: clearly audible, short (2 ms)
# How much the best-matching stretch of the microphone must look like the click (cosine similarity):
# an echo does (0.9 and more on the rig, with a talker and noise in the room); speech or noise does not.
MIN_SIMILARITY = 0.6
MAX_SPREAD_S = 0.003          # clicks agreeing within 3 ms measure the same echo
TAKES = 2                     # a second take only when the first played its clicks but measured none


class EchoDelayError(Exception):
    """Why no delay could be measured, in words a technician can act on."""


class UnmeasuredTakeError(EchoDelayError):
    """The clicks were played but this take measured no delay: another take may (the room or the
    recorder in real time, not the set-up)."""


class LostClickError(UnmeasuredTakeError):
    """The recorder missed a click the speaker played: the take is at fault, not the room."""


def click() -> array.array:
    n = RATE // 500  # 2 ms, Hann-windowed: no DC, sharp enough to time to a sample
    return array.array("f", [CLICK_AMPLITUDE * math.sin(2 * math.pi * 3000 * i / RATE) * math.sin(math.pi * i / n) ** 2
                             for i in range(n)])


def measure_echo_delay(speaker: str, microphone: str, *, run: Callable[..., Any] = subprocess.run,
                       take: Callable[[], array.array] | None = None) -> float:
    """Seconds from `speaker` (a sink's node name) to `microphone` (a source's); EchoDelayError if none.
    `take` records one take of the clicks (tests give their own)."""
    take = take or (lambda: _take(run, speaker, microphone))
    for _ in range(TAKES - 1):
        with contextlib.suppress(UnmeasuredTakeError):
            return delay_from_frames(take())
    return delay_from_frames(take())


def _take(run: Callable[..., Any], speaker: str, microphone: str) -> array.array:
    speaker_port, microphone_port = _ports(run, speaker, microphone)
    recorder = _Recorder()
    try:
        for port, channel in ((speaker_port, "FL"), (microphone_port, "FR")):
            _link(run, port, f"{PROBE_NODE}:input_{channel}")
        recorder.wait_for_data()
        time.sleep(0.3)  # both links carry sound before the first click
        _play_clicks(speaker)
        time.sleep(MAX_DELAY_S + 0.2)
    finally:
        frames = recorder.stop()
    return frames


def delay_from_frames(frames: array.array) -> float:
    """The delay in interleaved (speaker, microphone) float frames holding the clicks."""
    speaker, mic = frames[0::2], frames[1::2]
    pulse = click()
    n = len(pulse)
    loudest = max(map(abs, speaker), default=0.0)
    if loudest < CLICK_AMPLITUDE / 4:
        raise EchoDelayError(f"the clicks did not reach the speaker (peak {loudest:.3f}): is the audio output muted?")
    played_clicks, delays, at = 0, [], 0
    while played_clicks < CLICKS:
        rise = _first_above(speaker, at, loudest / 2)
        if rise is None:
            break
        played_clicks += 1
        played = max(0, rise - n) + _best_lag(pulse, speaker, max(0, rise - n), n)  # the click's first sample
        lag = _best_lag(pulse, mic, played, int(MAX_DELAY_S * RATE))
        if _similarity(pulse, mic[played + lag:played + lag + n]) >= MIN_SIMILARITY:
            delays.append(lag / RATE)  # else drowned (a word, a door): the other clicks may do
        at = played + int(CLICK_GAP_S * RATE * 0.8)
    if played_clicks < CLICKS:
        raise LostClickError(f"only {played_clicks} of {CLICKS} clicks were recorded from the speaker")
    if len(delays) < 2:  # none, or one stretch of speech or noise that happened to look like a click
        raise UnmeasuredTakeError("the TV's sound did not reach the microphone: turn the TV's volume up "
                             "(and make sure the microphone is not muted), then run the self-test again")
    # Two clicks that agree are a measurement; one disturbed by a noise in the room is dropped.
    delays.sort()
    agreeing = max(([d for d in delays if abs(d - centre) <= MAX_SPREAD_S] for centre in delays), key=len)
    if len(agreeing) < 2:
        raise UnmeasuredTakeError(f"the echo was not heard clearly ({', '.join(f'{d * 1000:.0f}' for d in delays)} ms): "
                             "keep the room quiet during the test and run it again")
    return agreeing[len(agreeing) // 2]


def _first_above(values: array.array, start: int, threshold: float) -> int | None:
    for i in range(start, len(values)):
        if abs(values[i]) >= threshold:
            return i
    return None


def _similarity(a: array.array, b: array.array) -> float:
    norm = math.sqrt(sum(map(operator.mul, a, a)) * sum(map(operator.mul, b, b)))
    return sum(map(operator.mul, a, b)) / norm if norm > 0 and len(a) == len(b) else 0.0


def _best_lag(pulse: array.array, mic: array.array, start: int, max_lag: int) -> int:
    """The lag (samples after `start`) where `mic` matches `pulse` best, by normalised correlation
    of the click's band (the envelope of a 3 kHz burst would smear by a period)."""
    n = len(pulse)
    end = min(len(mic) - n, start + max_lag)
    best, best_lag = 0.0, 0
    for lag in range(0, max(0, end - start)):
        window = mic[start + lag:start + lag + n]
        dot = sum(map(operator.mul, pulse, window))
        if dot > best:  # normalised only where it could win: most lags cost one dot product
            energy = sum(map(operator.mul, window, window))
            score = dot / math.sqrt(energy) if energy > 0 else 0.0
            if score > best:
                best, best_lag = score, lag
    return best_lag


def _ports(run: Callable[..., Any], speaker: str, microphone: str) -> tuple[str, str]:
    listing = run(["pw-link", "-o"], capture_output=True, text=True, timeout=5)
    ports = [line.strip() for line in listing.stdout.splitlines()]
    monitor = next((p for p in ports if p.startswith(f"{speaker}:monitor_")), None)
    capture = next((p for p in ports if p.startswith(f"{microphone}:") and ":monitor_" not in p), None)
    if monitor is None:
        raise EchoDelayError(f"the speaker {speaker} has no monitor port in the audio engine")
    if capture is None:
        raise EchoDelayError(f"the microphone {microphone} has no port in the audio engine: is it plugged in?")
    return monitor, capture


def _link(run: Callable[..., Any], out_port: str, in_port: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        if run(["pw-link", out_port, in_port], capture_output=True, text=True, timeout=5).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise EchoDelayError(f"cannot link {out_port} to the recorder")
        time.sleep(0.05)


def _play_clicks(speaker: str) -> None:
    gap = array.array("f", bytes(4 * int(CLICK_GAP_S * RATE)))
    signal_ = gap[: RATE // 5]
    for _ in range(CLICKS):
        signal_ += click() + gap
    player = proc.spawn(["pacat", "--playback", "--raw", "--format=float32le", f"--rate={RATE}", "--channels=1",
                         f"--device={speaker}", "--client-name=rapat-selftest", "--stream-name=echo delay clicks"],
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        player.communicate(signal_.tobytes(), timeout=CLICKS * CLICK_GAP_S + 5)
    except subprocess.TimeoutExpired:
        proc.kill(player)
        raise EchoDelayError("the speaker did not play the clicks (pacat did not finish)") from None


class _Recorder:
    """pw-record with two unconnected inputs (linked by hand), read as it comes."""

    def __init__(self) -> None:
        self.child = proc.spawn(["pw-record", "--target", "0", "-P", f'{{ node.name = "{PROBE_NODE}" }}',
                                 "--rate", str(RATE), "--channels", "2", "--channel-map", "FL,FR", "--format", "f32",
                                 "-"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.data = bytearray()
        self._reader = threading.Thread(target=self._read, name="echo-delay-record", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        while chunk := self.child.stdout.read1(65536):
            self.data += chunk

    def wait_for_data(self) -> None:
        deadline = time.monotonic() + 5
        while not self.data:
            if self.child.poll() is not None or time.monotonic() > deadline:
                raise EchoDelayError("cannot record from the audio engine (pw-record)")
            time.sleep(0.02)

    def stop(self) -> array.array:
        proc.interrupt(self.child)
        self._reader.join(3)
        frames = array.array("f")
        frames.frombytes(bytes(self.data[: len(self.data) // 8 * 8]))
        return frames
