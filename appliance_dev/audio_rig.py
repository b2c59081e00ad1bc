"""An all-software echo test rig: a private PipeWire stack with a TV speaker, a room and a microphone.

Development tool for the tests and benchmarks; never installed on the Pi.

    with AudioRig() as rig:                       # as root, no login session needed
        delay = echo_delay(rig)                   # click: speaker monitor -> raw mic (the room: 50 ms)
        rig.set_canceller(calibrated(TUNED, delay))   # or "off" | "aec" | "null" | any CancellerSpec
        result = measure(rig)                     # far-end only, double talk, near-end only
        result.erle_db, result.double_talk_corr, result.added_latency_s
        rig.env, rig.source, rig.sink             # for a real client: PULSE_SERVER=..., -f pulse -i <source>

What it builds, all inside one temporary directory (mode 0700: runtime dir, config, state, D-Bus
socket), so any number of rigs can run at once without seeing each other:

    program feeder --> [sink] --(canceller: ec_sink -> webrtc -> rapat_ec_playback)--> rig_speaker
    rig_speaker.monitor --> room (convolver: delay, level, reflections, reverberant tail) --> rig_micbus
    talker feeder --> rig_talker --(loopback)--> rig_micbus        noise feeder --> rig_micbus
    rig_micbus.monitor --(loopback)--> rig_mic (Audio/Source: the "microphone")
    rig_mic --> [canceller: rapat_ec_capture -> webrtc -> ec_source] --> what a client captures (`rig.source`)

- The room runs inside the PipeWire graph (module-filter-chain's builtin convolver with an impulse
  response written by `RoomSpec`), so its delay is exact and stable: the echo reaches the mic
  `RoomSpec.delay_s` after the speaker plays it (measured: 50.00 ms for 50 ms, every run), and the
  loopbacks add nothing (talker -> mic: 0 samples).
- The canceller is its own `pipewire -c ec.conf` process (`libpipewire-module-echo-cancel`), so a
  mode switch restarts only it, and its CPU can be read from /proc (`canceller_pid`).
- Program, talker and noise are pulse clients (`pacat`), as VLC (`--aout=pulse`) is in the product.
  Their timing wanders by tens of ms (pipe + pulse buffer), so `measure` finds the sections in the
  recorded signals, never from the switch moments alone.
- `record()` records several nodes in ONE pw-record stream whose ports are linked by hand, so the
  channels are sample-aligned: the speaker, the raw mic, the client's source and the clean talker.
  Energies, latencies and correlations come from the same samples.

What the rig found about PipeWire 0.3.65 + webrtc-audio-processing 0.3 (the numbers: bench_audio):
- ERLE depends on telling the canceller the echo's delay: `buffer.play_delay` = the delay from the
  speaker's monitor to the raw mic (42 dB, noise-limited, against 11-15 dB untold). It holds >= 25 dB
  while the true delay is within about -35..+30 ms of it; webrtc's delay_agnostic mode did not find a
  120 ms echo in 45 s (it starts correcting only after 15 s).
- The graph quantum must stay below the canceller's 480-sample block: forced to 512 or 1024 the
  mic -> output delay wandered (72-135 ms) and ERLE fell to 2-5 dB. (0.3.65 rounds the canceller's
  480/48000 request down to a 256 quantum.)
- Added latency 24 ms (noise suppression +6 ms): one 5.3 ms quantum (the null library's figure) and
  the rest inside webrtc. 16 kHz is no better (26.8 ms) and loses the talker's top octave.
- Double talk: webrtc 0.3's suppressor (kHighSuppression, hard-coded in aec-webrtc.cpp) ducks the
  near-end talker by 7-12 dB; the output's correlation with the clean talker stays near the raw mic's.
- high_pass_filter=false made the canceller diverge (output fading to silence).

Analysis is pure Python (the project does not depend on numpy): mean squares over windows,
correlation at a lag found from a click.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import math
import operator
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.media import echo_canceller, proc
from appliance_dev.waiting import wait_until

RATE = 48000            # the rig's graph rate; the canceller may run at another (CancellerSpec.rate)
BLOCK = RATE // 100     # feeders write 10 ms blocks
F_SETPIPE_SZ = 1031
TOOLS = ("pipewire", "wireplumber", "pipewire-pulse", "dbus-daemon", "pw-record", "pw-link", "pacat",
         "espeak-ng", "sox")
APT_PACKAGES = ("pipewire", "wireplumber", "pipewire-pulse", "libspa-0.2-modules", "pulseaudio-utils", "dbus",
                "sox", "espeak-ng")

# The far end (the meeting's program) and the near-end talker: different voices, different texts.
PROGRAM_SPEECH = ("id", 150, 50, "Selamat pagi bapak dan ibu sekalian. Rapat musyawarah perencanaan pembangunan "
                  "desa kita mulai sekarang. Agenda pertama adalah laporan anggaran tahun lalu, kemudian usulan "
                  "kegiatan dari setiap dusun. Mohon setiap kecamatan menyiapkan daftar prioritas jalan, irigasi, "
                  "dan sekolah. Terima kasih atas perhatian dan kehadiran anda semua.")
TALKER_SPEECH = ("en-us+f3", 160, 70, "Hello from Kalibaru. We can hear the centre clearly. Our village wants "
                 "the new bridge over the river to be first on the list, and the school roof second. Thank you.")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# --- signals -------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    path = Path(os.environ.get("RAPAT_AUDIO_CACHE") or Path(tempfile.gettempdir()) / "rapat-audio-rig-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def speech(voice: str, speed: int, pitch: int, text: str) -> array.array:
    """espeak-ng speech as mono float32 at RATE, peak at -3 dBFS; cached on disk by content."""
    key = hashlib.sha256(f"{voice}|{speed}|{pitch}|{text}|{RATE}|v1".encode()).hexdigest()[:16]
    path = cache_dir() / f"speech-{key}.f32"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            raw = os.path.join(tmp, "espeak.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", raw, text],
                           check=True, capture_output=True)
            out = os.path.join(tmp, "speech.f32")
            subprocess.run(["sox", raw, "-r", str(RATE), "-c", "1", "-e", "floating-point", "-b", "32", "-t", "raw",
                            out, "norm", "-3"], check=True, capture_output=True)
            os.replace(out, path)  # atomic: rigs running at once never read half a file
    samples = array.array("f")
    samples.frombytes(path.read_bytes())
    return samples


def scaled(samples: array.array, rms_dbfs: float) -> array.array:
    """`samples` with their RMS (over the whole signal, pauses included) set to `rms_dbfs`."""
    gain = 10 ** (rms_dbfs / 20) / math.sqrt(power(samples))
    return array.array("f", [value * gain for value in samples])


def room_noise(seconds: float, rms_dbfs: float, seed: int = 1) -> array.array:
    """Steady, slightly low-pass (pinkish) noise: fan and street, not hiss."""
    rnd = random.Random(seed)
    state = 0.0
    values = []
    for _ in range(int(seconds * RATE)):
        state = 0.9 * state + 0.1 * rnd.gauss(0.0, 1.0)
        values.append(state)
    return scaled(array.array("f", values), rms_dbfs)


def click(amplitude: float = 0.5) -> array.array:
    """A 2 ms Hann-windowed 3 kHz burst: sharp enough to time to a sample, no DC for the high-pass filters."""
    n = RATE // 500
    return array.array("f", [amplitude * math.sin(2 * math.pi * 3000 * i / RATE) * math.sin(math.pi * i / n) ** 2
                             for i in range(n)])


# --- the room --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoomSpec:
    """What the microphone hears of the TV: a delayed, attenuated, reverberant copy.

    The impulse response: the direct sound `delay_s` after the speaker at `direct_db`, four early
    reflections (walls, table) within 30 ms, then an exponentially decaying diffuse tail with the
    given RT60 whose total energy is `tail_db` relative to the direct sound.
    """

    delay_s: float = 0.050
    direct_db: float = -8.0
    reflections: tuple[tuple[float, float], ...] = ((0.0065, 0.35), (0.011, -0.25), (0.0185, 0.2), (0.027, -0.15))
    rt60_s: float = 0.3
    tail_db: float = -8.0
    length_s: float = 0.35
    seed: int = 7

    def impulse_response(self) -> list[float]:
        n = int(RATE * max(self.length_s, self.delay_s + 0.05))
        ir = [0.0] * n
        d = int(round(RATE * self.delay_s))
        g = 10 ** (self.direct_db / 20)
        ir[d] = g
        for after, gain in self.reflections:
            ir[d + int(RATE * after)] += g * gain
        rnd = random.Random(self.seed)
        start = d + int(RATE * 0.005)
        decay = [10 ** (-3 * (i - d) / RATE / self.rt60_s) for i in range(start, n)]  # amplitude: -60 dB per rt60
        tail = [rnd.gauss(0.0, 1.0) * k for k in decay]
        energy = sum(x * x for x in tail) or 1.0
        scale = g * math.sqrt(10 ** (self.tail_db / 10) / energy)
        for i, x in zip(range(start, n), tail, strict=True):
            ir[i] += x * scale
        return ir

    def write_wav(self, path: str) -> None:
        ir = self.impulse_response()
        with wave.open(path, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(struct.pack(f"<{len(ir)}h", *(max(-32767, min(32767, round(x * 32767))) for x in ir)))

    def gain_db(self) -> float:
        """The echo path's total energy gain (direct + reflections + tail)."""
        return 10 * math.log10(sum(x * x for x in self.impulse_response()))


# --- the echo canceller ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CancellerSpec:
    """One configuration of libpipewire-module-echo-cancel (PipeWire 0.3.65).

    `aec_args` go to the library as `aec.args` (webrtc: extended_filter, delay_agnostic,
    high_pass_filter, noise_suppression, voice_detection, gain_control, experimental_agc,
    experimental_ns: all booleans, read by spa/plugins/aec/aec-webrtc.cpp). `node_latency` is the
    block the canceller processes per graph cycle (a multiple of webrtc's 10 ms); `play_delay`
    (`buffer.play_delay`, seconds) delays the reference given to the canceller, not what is played.
    """

    mode: str = "aec"                     # "aec" (webrtc) | "null" (the module with aec/libspa-aec-null)
    rate: int = 48000
    aec_args: tuple[tuple[str, str], ...] = (("webrtc.extended_filter", "true"), ("webrtc.delay_agnostic", "true"),
                                             ("webrtc.high_pass_filter", "true"))
    node_latency: str | None = None       # e.g. "480/48000"; None = the library's own (480/48000 for webrtc)
    play_delay: float | None = None       # seconds
    max_buffer_ms: int | None = None      # buffer.max_size (module default 100)
    source_name: str = "ec_source"
    sink_name: str = "ec_sink"

    @property
    def library(self) -> str:
        return {"aec": "aec/libspa-aec-webrtc", "null": "aec/libspa-aec-null"}[self.mode]

    def with_args(self, **args: Any) -> CancellerSpec:
        """A copy with webrtc args changed: `spec.with_args(noise_suppression=False)`."""
        merged = dict(self.aec_args)
        for key, value in args.items():
            merged[f"webrtc.{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return replace(self, aec_args=tuple(merged.items()))

    def module_args(self, capture_target: str, playback_target: str) -> str:
        """The module's arguments in PipeWire's config syntax: the product's own (media/echo_canceller)."""
        return echo_canceller.module_args(capture_target=capture_target, playback_target=playback_target,
                                          play_delay_s=self.play_delay, aec_args=self.aec_args, library=self.library,
                                          rate=self.rate, node_latency=self.node_latency,
                                          max_buffer_ms=self.max_buffer_ms, source_name=self.source_name,
                                          sink_name=self.sink_name)

    def describe(self) -> str:
        parts = [self.mode, f"{self.rate // 1000} kHz"]
        parts += [f"{key.removeprefix('webrtc.')}={value}" for key, value in self.aec_args] if self.mode == "aec" else []
        if self.node_latency:
            parts.append(f"node.latency={self.node_latency}")
        if self.play_delay:
            parts.append(f"play_delay={self.play_delay * 1000:g}ms")
        return ", ".join(parts)


# The first measurement (11-15 dB): webrtc with its defaults, nothing told about the echo's delay.
AEC = CancellerSpec()
# The module with the pass-through library: the plumbing (4 streams, ring buffers) without any cancelling.
NULL = CancellerSpec(mode="null", aec_args=())
# Tuned in this rig (see the module's docstring and bench_audio): the reference delayed by the echo path's delay
# (`buffer.play_delay`, here the room's 50 ms, measured by `echo_delay`), extended filter, no delay-agnostic
# mode (in webrtc-audio-processing 0.3 it starts correcting only after 15 s and did not find a 120 ms
# delay in 45 s), high-pass on (off, the filter diverged), noise suppression off (+6 ms latency, a
# slightly distorted talker; `TUNED_NS` has it on: the room noise goes too).
TUNED_ARGS = echo_canceller.CALIBRATED_ARGS  # what the product runs once the self-test measured the delay
TUNED = CancellerSpec(aec_args=TUNED_ARGS, play_delay=0.050)
TUNED_NS = TUNED.with_args(noise_suppression=True)


def calibrated(spec: CancellerSpec, echo_delay_s: float) -> CancellerSpec:
    """`spec` with the reference delayed by the measured echo path (speaker monitor -> raw mic).

    In this rig the canceller cancels >= 25 dB while the true delay is within about -35..+30 ms of
    `buffer.play_delay` (measured: 20..90 ms for a 50 ms room), so one measurement per site suffices.
    """
    return replace(spec, play_delay=round(echo_delay_s, 3))


# The rig's nodes, added to the private daemon's default configuration as a drop-in.
DAEMON_DROPIN = """context.properties = {{
  default.clock.rate = {rate}
  default.clock.allowed-rates = [ {rate} ]
}}
context.objects = [
{sinks}
]
context.modules = [
  {{ name = libpipewire-module-filter-chain
    args = {{
      node.description = "rig room"
      media.name = "rig room"
      audio.rate = {rate}
      audio.channels = 1
      audio.position = [ MONO ]
      filter.graph = {{ nodes = [ {{ type = builtin name = room label = convolver config = {{ filename = "{ir}" }} }} ] }}
      capture.props = {{ node.name = "rig_room_in" media.class = "Stream/Input/Audio" target.object = "rig_speaker"
                        stream.capture.sink = true node.dont-reconnect = true }}
      playback.props = {{ node.name = "rig_room_out" media.class = "Stream/Output/Audio" target.object = "rig_micbus"
                         node.dont-reconnect = true }}
    }}
  }}
  {{ name = libpipewire-module-loopback
    args = {{
      audio.rate = {rate}
      audio.channels = 1
      audio.position = [ MONO ]
      capture.props = {{ node.name = "rig_talker_in" target.object = "rig_talker" stream.capture.sink = true
                        node.dont-reconnect = true }}
      playback.props = {{ node.name = "rig_talker_out" target.object = "rig_micbus" node.dont-reconnect = true }}
    }}
  }}
  {{ name = libpipewire-module-loopback
    args = {{
      audio.rate = {rate}
      audio.channels = 1
      audio.position = [ MONO ]
      capture.props = {{ node.name = "rig_mic_in" target.object = "rig_micbus" stream.capture.sink = true
                        node.dont-reconnect = true }}
      playback.props = {{ node.name = "rig_mic" media.class = "Audio/Source" node.description = "Rig microphone"
                         session.suspend-timeout-seconds = 0 }}
    }}
  }}
]
"""
NULL_SINK = """  {{ factory = adapter args = {{ factory.name = support.null-audio-sink node.name = "{name}"
      node.description = "{description}" media.class = Audio/Sink audio.position = [ MONO ] audio.rate = {rate}
      object.linger = true monitor.channel-volumes = true session.suspend-timeout-seconds = 0 }} }}"""
WIREPLUMBER_DROPIN = """-- the rig has no hardware: keep wireplumber away from any real sound card, camera or bluetooth
alsa_monitor.enabled = false
v4l2_monitor.enabled = false
libcamera_monitor.enabled = false
"""


# --- feeding PCM into the graph -------------------------------------------------------------------------
class Feeder:
    """A pulse playback stream (pacat) fed 10 ms blocks by a thread: a signal when on, silence when off.

    Switchable at runtime (`set`); one-shot sounds (`inject`) go in place of the next blocks. The
    pipe to pacat is shrunk to one page, so a switch is heard ~60 ms later (pipe + pacat's 30 ms);
    that path moves by tens of ms now and then (pulse buffering), so time sounds in the recording.
    """

    def __init__(self, env: dict[str, str], device: str, name: str, signal: array.array, loop: bool = True) -> None:
        self.device = device
        self.name = name
        self.signal = signal.tobytes()
        self.loop = loop
        self.on = False
        self._pos = 0
        self._pending = b""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.child = proc.spawn(["pacat", "--playback", "--raw", "--format=float32le", f"--rate={RATE}", "--channels=1",
                                 f"--device={device}", "--latency-msec=30", f"--client-name=rig-{name}",
                                 f"--stream-name={name}"], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert self.child.stdin is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.child.stdin.fileno(), F_SETPIPE_SZ, 4096)
        self._thread = threading.Thread(target=self._feed, name=f"rig-feed-{name}", daemon=True)
        self._thread.start()

    def set(self, on: bool, restart: bool = False) -> float:
        """Switch the signal on or off (from its start with `restart`); returns the moment (monotonic)."""
        with self._lock:
            self.on = on
            if restart:
                self._pos = 0
            return time.monotonic()

    def inject(self, samples: array.array) -> float:
        with self._lock:
            self._pending += samples.tobytes()
            return time.monotonic()

    def _next_block(self) -> bytes:
        size = BLOCK * 4
        with self._lock:
            if self._pending:
                block, self._pending = self._pending[:size], self._pending[size:]
                return block.ljust(size, b"\0")
            if not self.on:
                return bytes(size)
            block = self.signal[self._pos:self._pos + size]
            self._pos += size
            if self._pos >= len(self.signal):
                self._pos = 0
                if not self.loop:
                    self.on = False
            return block.ljust(size, b"\0")

    def _feed(self) -> None:
        assert self.child.stdin is not None
        try:
            while not self._stopping.is_set():
                self.child.stdin.write(self._next_block())
                self.child.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def close(self) -> None:
        self._stopping.set()
        proc.kill(self.child)
        self._thread.join(2.0)


# --- recording ---------------------------------------------------------------------------------------------
CHANNEL_NAMES = ("FL", "FR", "FC", "LFE", "RL", "RR", "SL", "SR")


class Recording:
    """One pw-record stream with a channel per port, linked by hand: every channel is sample-aligned."""

    def __init__(self, rig: AudioRig, ports: dict[str, str]) -> None:
        self.rig = rig
        self.ports = ports
        self.node = f"rig_rec_{next(rig._serial)}"
        count = len(ports)
        self.child = proc.spawn(["pw-record", "--target", "0", "-P", f"{{ node.name = \"{self.node}\" }}",
                                 "--rate", str(RATE), "--channels", str(count),
                                 "--channel-map", ",".join(CHANNEL_NAMES[:count]), "--format", "f32", "-"],
                                env=rig.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._data = bytearray()
        self._first_at: float | None = None
        self._first_len = 0
        self._reader = threading.Thread(target=self._read, name="rig-record", daemon=True)
        self._reader.start()
        for index, (name, port) in enumerate(ports.items()):
            target = f"{self.node}:input_{CHANNEL_NAMES[index]}"
            wait_until(lambda port=port, target=target: rig.link(port, target), 5,
                       what=f"linking {port} to the recorder ({name})", interval=0.02)
        wait_until(lambda: self._first_at is not None, 5, what="the first recorded samples")

    def _read(self) -> None:
        assert self.child.stdout is not None
        while True:
            chunk = self.child.stdout.read1(65536)
            if not chunk:
                return
            if self._first_at is None:
                self._first_at = time.monotonic()
                self._first_len = len(chunk)
            self._data += chunk

    def stop(self) -> Take:
        proc.interrupt(self.child)
        self._reader.join(3)
        count = len(self.ports)
        samples = array.array("f")
        usable = len(self._data) - len(self._data) % (4 * count)
        samples.frombytes(bytes(self._data[:usable]))
        channels = {name: samples[index::count] for index, name in enumerate(self.ports)}
        frame_bytes = 4 * count
        start = (self._first_at or 0.0) - self._first_len / frame_bytes / RATE
        return Take(RATE, channels, start)


@dataclass
class Take:
    """Aligned recordings of several nodes; `start` = the monotonic time of sample 0 (± a few ms)."""

    rate: int
    channels: dict[str, array.array]
    start: float

    def index(self, moment: float) -> int:
        return max(0, min(len(self), int((moment - self.start) * self.rate)))

    def __len__(self) -> int:
        return min((len(values) for values in self.channels.values()), default=0)

    def power(self, name: str, begin: int, end: int, shift: int = 0) -> float:
        return power(self.channels[name][begin + shift:end + shift])

    def dbfs(self, name: str, begin: int, end: int) -> float:
        return db(self.power(name, begin, end))

    def first_sound(self, name: str, begin: int, end: int, floor: float = 1e-5) -> int:
        """The first sample in [begin, end) louder than `floor` (the channel is digital silence before it)."""
        values = self.channels[name]
        for i in range(max(0, begin), min(end, len(values))):
            if abs(values[i]) > floor:
                return i
        raise ValueError(f"no sound on {name} in [{begin}, {end})")

    def last_sound(self, name: str, begin: int, end: int, floor: float = 1e-5) -> int:
        """One past the last sample in [begin, end) louder than `floor`."""
        values = self.channels[name]
        for i in range(min(end, len(values)) - 1, max(0, begin) - 1, -1):
            if abs(values[i]) > floor:
                return i + 1
        raise ValueError(f"no sound on {name} in [{begin}, {end})")

    def first_peak(self, name: str, begin: int, end: int) -> int:
        """The first sample in [begin, end) whose magnitude reaches half the window's maximum."""
        values = self.channels[name][begin:end]
        top = max(map(abs, values), default=0.0)
        if top <= 0:
            raise ValueError(f"no signal on {name} in the window")
        return begin + next(i for i, value in enumerate(values) if abs(value) >= top / 2)

    def save(self, path: str) -> None:
        """A multichannel float WAV for listening (sox/audacity), channels in recording order."""
        names = list(self.channels)
        frames = len(self)
        interleaved = array.array("f", bytes(4 * frames * len(names)))
        for index, name in enumerate(names):
            interleaved[index::len(names)] = self.channels[name][:frames]
        subprocess.run(["sox", "-t", "raw", "-r", str(self.rate), "-c", str(len(names)), "-e", "floating-point",
                        "-b", "32", "-", path], input=interleaved.tobytes(), check=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def power(values: array.array | list[float]) -> float:
    return math.fsum(map(operator.mul, values, values)) / max(1, len(values))


def db(value: float) -> float:
    return 10 * math.log10(value) if value > 0 else -math.inf


def correlation(a: array.array, b: array.array) -> float:
    """Pearson correlation of two equally long windows (speech has no DC; the means are removed anyway)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    mean_a = math.fsum(a[:n]) / n
    mean_b = math.fsum(b[:n]) / n
    xa = [x - mean_a for x in a[:n]]
    xb = [x - mean_b for x in b[:n]]
    den = math.sqrt(math.fsum(map(operator.mul, xa, xa)) * math.fsum(map(operator.mul, xb, xb)))
    return math.fsum(map(operator.mul, xa, xb)) / den if den > 0 else 0.0


def best_lag(ref: array.array, sig: array.array, begin: int, end: int, guesses: tuple[int, ...],
             span: int = RATE // 50) -> int:
    """The lag L that best lines up sig[i + L] with ref[i] over [begin, end), searched within `span`
    samples of the guesses: first on 1 s of 4x-decimated signal, then sample by sample around it."""
    def decimated(values: array.array, a: int, b: int) -> list[float]:
        return [values[i] + values[i + 1] + values[i + 2] + values[i + 3] for i in range(a, b - 3, 4)]

    mid = (begin + end) // 2
    a, b = max(begin, mid - RATE // 2), min(end, mid + RATE // 2)
    r = decimated(ref, a, b)
    candidates = sorted({g // 4 + k for g in guesses for k in range(-span // 4, span // 4 + 1)})
    low = candidates[0]
    d = decimated(sig, a + 4 * low, b + 4 * candidates[-1] + 4)
    coarse = max(candidates, key=lambda lag: math.fsum(map(operator.mul, r, d[lag - low:lag - low + len(r)])))
    fine = range(4 * coarse - 4, 4 * coarse + 5)
    return max(fine, key=lambda lag: math.fsum(map(operator.mul, ref[a:b], sig[a + lag:b + lag])))


# --- the rig -------------------------------------------------------------------------------------------------
class AudioRig:
    """A private PipeWire stack with a speaker, a room, a microphone and (optionally) a canceller.

    `env`: what a client needs to reach this stack (XDG_RUNTIME_DIR, PULSE_SERVER,
    DBUS_SESSION_BUS_ADDRESS, PIPEWIRE_RUNTIME_DIR, HOME and the XDG config/state dirs).
    `source`: the node a client captures (rig_mic, or ec_source with a canceller); `sink`: where the
    program plays (rig_speaker, or ec_sink with a canceller).
    Spawn-and-close from one long-lived thread: children die with the thread that spawned them
    (PR_SET_PDEATHSIG), and all are killed and the directory removed on `close()`.
    """

    def __init__(self, room: RoomSpec | None = None, talker_dbfs: float = -30.0, noise_dbfs: float = -70.0,
                 program_gain_db: float = 0.0, workdir: str | None = None) -> None:
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"the audio rig needs {', '.join(missing)} (apt: {' '.join(APT_PACKAGES)})")
        self.room = room or RoomSpec()
        self.talker_dbfs = talker_dbfs
        self.noise_dbfs = noise_dbfs
        self.program_gain_db = program_gain_db
        self.dir = tempfile.mkdtemp(prefix="rapat-audio-rig-", dir=workdir)
        os.chmod(self.dir, 0o700)
        self.runtime = os.path.join(self.dir, "run")
        os.mkdir(self.runtime, 0o700)
        self.env = self._make_env()
        self.canceller: CancellerSpec | None = None
        self.canceller_child: subprocess.Popen | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.program_signal = array.array("f")
        self.talker_signal = array.array("f")
        self._program: Feeder | None = None
        self._talker: Feeder | None = None
        self._noise: Feeder | None = None
        self._serial = iter(range(1, 1 << 30))
        self.logs: dict[str, str] = {}

    # --- life -----------------------------------------------------------------------------------------
    def _make_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PULSE_", "PIPEWIRE_", "XDG_", "DBUS_", "JACK_"))}
        env.update({
            "HOME": self.dir,
            "XDG_RUNTIME_DIR": self.runtime,
            "PIPEWIRE_RUNTIME_DIR": self.runtime,
            "XDG_CONFIG_HOME": os.path.join(self.dir, "config"),
            "XDG_STATE_HOME": os.path.join(self.dir, "state"),
            "XDG_DATA_HOME": os.path.join(self.dir, "data"),
            "XDG_CACHE_HOME": os.path.join(self.dir, "cache"),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={os.path.join(self.runtime, 'bus')}",
            "PULSE_SERVER": f"unix:{os.path.join(self.runtime, 'pulse', 'native')}",
            "PULSE_RUNTIME_PATH": os.path.join(self.runtime, "pulse"),
            "PULSE_COOKIE": os.path.join(self.dir, "pulse-cookie"),
        })
        return env

    def _log(self, name: str) -> Any:
        path = os.path.join(self.dir, f"{name}.log")
        self.logs[name] = path
        return open(path, "ab")  # noqa: SIM115 - handed to the child, closed right after the spawn

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with self._log(name) as log:
            child = proc.spawn(cmd, env=self.env, stdout=log, stderr=log)
        self.children[name] = child
        return child

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            return "\n".join(Path(self.logs[name]).read_text(errors="replace").splitlines()[-lines:])
        except (KeyError, OSError):
            return ""

    def start(self) -> AudioRig:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        for sub in ("config/pipewire/pipewire.conf.d", "config/wireplumber/main.lua.d", "state", "data", "cache"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        ir = os.path.join(self.dir, "room-ir.wav")
        self.room.write_wav(ir)
        sinks = ",\n".join(NULL_SINK.format(name=name, description=description, rate=RATE) for name, description in
                           (("rig_speaker", "Rig TV speaker"), ("rig_micbus", "Rig room air"),
                            ("rig_talker", "Rig near-end talker")))
        Path(self.dir, "config/pipewire/pipewire.conf.d/rig.conf").write_text(
            DAEMON_DROPIN.format(rate=RATE, sinks=sinks, ir=ir))
        Path(self.dir, "config/wireplumber/main.lua.d/60-rig.lua").write_text(WIREPLUMBER_DROPIN)

        bus = os.path.join(self.runtime, "bus")
        self._spawn("dbus", ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address=unix:path={bus}"])
        wait_until(lambda: os.path.exists(bus) or self._died("dbus"), 5, what="the session bus")
        self._start_engine()
        # The TV speaker and the microphone are the engine's defaults, as the USB microphone and the
        # HDMI output are on a site: the product's canceller finds them that way.
        self.run("pactl", "set-default-sink", "rig_speaker")
        self.run("pactl", "set-default-source", "rig_mic")
        self.program_signal = speech(*PROGRAM_SPEECH)
        if self.program_gain_db:
            gain = 10 ** (self.program_gain_db / 20)
            self.program_signal = array.array("f", [x * gain for x in self.program_signal])
        self.talker_signal = scaled(speech(*TALKER_SPEECH), self.talker_dbfs)
        self._start_feeders()

    def _start_feeders(self) -> None:
        self._talker = Feeder(self.env, "rig_talker", "talker", self.talker_signal)
        if self.noise_dbfs > -150:
            self._noise = Feeder(self.env, "rig_micbus", "noise", room_noise(2.0, self.noise_dbfs))
            self._noise.set(True)

    def _start_engine(self) -> None:
        self._spawn("pipewire", ["pipewire"])
        wait_until(lambda: os.path.exists(os.path.join(self.runtime, "pipewire-0")) or self._died("pipewire"), 5,
                   what=lambda: f"pipewire's socket ({self.log_tail('pipewire')})")
        self._spawn("wireplumber", ["wireplumber"])
        self._spawn("pipewire-pulse", ["pipewire-pulse"])
        wait_until(lambda: os.path.exists(os.path.join(self.runtime, "pulse", "native")) or self._died("pipewire-pulse"),
                   5, what=lambda: f"pipewire-pulse's socket ({self.log_tail('pipewire-pulse')})")
        # wireplumber links the room and the microphone once it runs
        wait_until(lambda: self._linked("rig_speaker:monitor_MONO", "rig_room_in:input_MONO")
                   and self._linked("rig_room_out:output_MONO", "rig_micbus:playback_MONO")
                   and self._linked("rig_micbus:monitor_MONO", "rig_mic_in:input_MONO")
                   and self._linked("rig_talker:monitor_MONO", "rig_talker_in:input_MONO")
                   and self._linked("rig_talker_out:output_MONO", "rig_micbus:playback_MONO"), 10,
                   what=lambda: f"the room's links ({self.links()!r}; {self.log_tail('wireplumber')})")

    def restart_engine(self) -> float:
        """The audio engine crashes and comes back, as systemd restarts appliance-audio.service: every
        client loses it (a rig canceller, the feeders, the product's streams); the room's nodes come
        back from the configuration, the talker and noise as they were. Returns when it was killed."""
        talking = self._talker is not None and self._talker.on
        for feeder in (self._program, self._talker, self._noise):
            if feeder is not None:
                feeder.close()
        self._program = self._talker = self._noise = None
        self.canceller_child = None
        self.canceller = None
        for name in ("pipewire-pulse", "wireplumber", "pipewire", "canceller"):
            child = self.children.pop(name, None)
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait(5)
        killed = time.monotonic()
        self._start_engine()
        self._start_feeders()
        self._talker.set(talking)
        return killed

    def _died(self, name: str) -> bool:
        child = self.children.get(name)
        if child is not None and child.poll() is not None:
            raise RuntimeError(f"{name} exited ({child.returncode}): {self.log_tail(name)}")
        return False

    def close(self) -> None:
        for feeder in (self._program, self._talker, self._noise):
            if feeder is not None:
                feeder.close()
        self._program = self._talker = self._noise = None
        self._stop_canceller()
        for name in ("pipewire-pulse", "wireplumber", "pipewire", "dbus"):
            proc.kill(self.children.pop(name, None))
        for child in self.children.values():
            proc.kill(child)
        self.children.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> AudioRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- graph ------------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=10)

    def links(self) -> str:
        return self.run("pw-link", "-l", check=False).stdout

    def _linked(self, out_port: str, in_port: str) -> bool:
        current = None
        for line in self.links().splitlines():
            if not line.startswith(" "):
                current = line.strip()
            elif current == out_port and line.strip().startswith("|->") and line.split("|->")[1].strip() == in_port:
                return True
        return False

    def link(self, out_port: str, in_port: str) -> bool:
        return self.run("pw-link", out_port, in_port, check=False).returncode == 0 or self._linked(out_port, in_port)

    @property
    def source(self) -> str:
        return self.canceller.source_name if self.canceller else "rig_mic"

    @property
    def sink(self) -> str:
        return self.canceller.sink_name if self.canceller else "rig_speaker"

    @property
    def canceller_pid(self) -> int | None:
        return self.canceller_child.pid if self.canceller_child else None

    def set_canceller(self, mode: str | CancellerSpec | None) -> str:
        """`off` (or None): clients capture rig_mic straight; `aec`/`null` or a CancellerSpec: a canceller
        process between rig_mic/rig_speaker and its ec_source/ec_sink. Returns the client's source."""
        spec = {"off": None, None: None, "aec": AEC, "null": NULL}[mode] if not isinstance(mode, CancellerSpec) else mode
        if self._program is not None:
            self._program.close()
            self._program = None
        self._stop_canceller()
        self.canceller = spec
        if spec is None:
            return self.source
        conf = os.path.join(self.dir, f"ec-{next(self._serial)}.conf")
        Path(conf).write_text(echo_canceller.client_conf(self.module_args(spec)))
        self.canceller_child = self._spawn("canceller", ["pipewire", "-c", conf])
        wait_until(lambda: self._died("canceller") or (
                   self._linked("rig_mic:capture_MONO", "rapat_ec_capture:input_MONO")
                   and self._linked("rapat_ec_playback:output_MONO", "rig_speaker:playback_MONO")), 10,
                   what=lambda: f"the canceller's links ({self.links()!r}; {self.log_tail('canceller')})")
        return self.source

    def module_args(self, spec: CancellerSpec) -> str:
        return spec.module_args("rig_mic", "rig_speaker")

    def _stop_canceller(self) -> None:
        if self.canceller_child is not None:
            proc.kill(self.canceller_child, 1.0)
            self.children.pop("canceller", None)
            self.canceller_child = None
            wait_until(lambda: "rapat_ec_capture" not in self.links(), 5, what="the canceller's nodes to go")
        self.canceller = None

    # --- sound --------------------------------------------------------------------------------------------
    def program(self, on: bool = True, restart: bool = True, sink: str | None = None) -> float:
        """The far end (the meeting's program) into `sink` (default: the rig canceller's or the speaker),
        from its start unless `restart=False`. A product's canceller: its sink, as VLC plays there."""
        target = sink or self.sink
        if self._program is not None and self._program.device != target:
            self._program.close()
            self._program = None
        if self._program is None:
            self._program = Feeder(self.env, target, "program", self.program_signal)
        return self._program.set(on, restart=restart and on)

    def talker(self, on: bool = True, restart: bool = False) -> float:
        """The near-end talker in the room (mixed into the mic), on or off; returns the moment."""
        assert self._talker is not None, "start() first"
        return self._talker.set(on, restart)

    def program_click(self) -> float:
        """A click played by the far end (into `sink`), e.g. to measure the echo path."""
        self.program(False, restart=False)
        assert self._program is not None
        return self._program.inject(click())

    def click(self) -> float:
        """A click in the room (through the talker's path, so it is on the clean talker channel too)."""
        assert self._talker is not None, "start() first"
        return self._talker.inject(click())

    def record(self, extra: dict[str, str] | None = None) -> Recording:
        """Aligned channels: speaker (what the TV plays), mic (raw), out (what a client captures: `source`),
        talker (the clean near-end talker), plus `extra` {name: port}."""
        ports = {"speaker": "rig_speaker:monitor_MONO", "mic": "rig_mic:capture_MONO",
                 "out": f"{self.source}:capture_MONO", "talker": "rig_talker:monitor_MONO"}
        ports.update(extra or {})
        return Recording(self, ports)


# --- the measurement -------------------------------------------------------------------------------------------
@dataclass
class Result:
    """One take: far-end only, then double talk, then near-end only, with a click before them."""

    spec: str
    erle_db: float                 # P(mic) / P(out) in the far-end-only window, same samples
    mic_dbfs: float                # echo level at the mic in that window
    out_dbfs: float                # what is left at the client's source
    added_latency_s: float         # click: mic -> out, before the program starts
    latency_end_s: float           # the same, after the take (a change = the canceller's buffering moved)
    lag_double_s: float            # mic -> out lag that best aligns the double-talk window
    double_talk_corr: float        # out (aligned) vs the clean talker, double talk
    double_talk_corr_mic: float    # the raw mic vs the clean talker, same window (the off baseline)
    near_only_corr: float
    near_only_loss_db: float       # talker level lost between mic and out when only the near end speaks
    erle_by_second: list[float] = field(default_factory=list)
    cpu_s: float | None = None     # canceller process CPU time during the take
    seconds: float = 0.0
    take: Take | None = field(default=None, repr=False)

    def line(self) -> str:
        return (f"{self.spec}: ERLE {self.erle_db:.1f} dB (mic {self.mic_dbfs:.1f} -> out {self.out_dbfs:.1f} dBFS), "
                f"double-talk corr {self.double_talk_corr:.3f} (mic {self.double_talk_corr_mic:.3f}), "
                f"near-only corr {self.near_only_corr:.3f} loss {self.near_only_loss_db:.1f} dB, "
                f"added latency {self.added_latency_s * 1000:.1f} ms (end {self.latency_end_s * 1000:.1f}, "
                f"double talk {self.lag_double_s * 1000:.1f})")


def measure(rig: AudioRig, far_s: float = 10.0, double_s: float = 6.0, near_s: float = 3.0, converge_s: float = 2.0,
            keep_take: bool = False, attempts: int = 2) -> Result:
    """Play the scenario through the rig as it is configured now and measure at the client's source.
    A take in which a feeder's sound never arrived ("no signal on …": a pacat late on a busy machine,
    seen in `make test`) is taken again; a take that has its sounds is measured as it is."""
    for attempt in range(attempts):
        try:
            return _measure_once(rig, far_s, double_s, near_s, converge_s, keep_take)
        except ValueError as exc:
            if "no signal" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _measure_once(rig: AudioRig, far_s: float, double_s: float, near_s: float, converge_s: float,
                  keep_take: bool) -> Result:
    pid = rig.canceller_pid
    rig.program(False)  # the program's stream exists (silent) before the take: no graph change inside it
    time.sleep(0.3)
    recording = rig.record()
    try:
        time.sleep(0.3)
        rig.click()
        time.sleep(1.0)
        cpu_before = cpu_seconds(pid) if pid else None
        wall = time.monotonic()
        program_on = rig.program(True)
        time.sleep(far_s)
        talker_on = rig.talker(True, restart=True)
        time.sleep(double_s)
        program_off = rig.program(False)
        time.sleep(near_s)
        talker_off = rig.talker(False)
        elapsed = time.monotonic() - wall
        cpu = cpu_seconds(pid) - cpu_before if pid and cpu_before is not None else None
        time.sleep(1.2)
        rig.click()
        time.sleep(1.0)
    finally:
        take = recording.stop()
    rate = take.rate
    # The feeders' path (pipe + pacat) moves by tens of ms now and then, so the sections are found in
    # the signals themselves (speaker and talker channels are digital silence when off); the switch
    # moments only say where to look.
    half = rate // 2
    prog_on = take.first_sound("speaker", take.index(program_on) - half, take.index(talker_on))
    talk_on = take.first_sound("talker", take.index(talker_on) - half, take.index(program_off))
    prog_off = take.last_sound("speaker", talk_on, take.index(program_off) + half)
    talk_off = take.last_sound("talker", prog_off, take.index(talker_off) + half)
    # the clicks, the only sounds on the talker channel before and after the talker: the same moment on
    # the mic (in-graph loopbacks), later on out
    latencies = []
    for at_talker in (take.first_peak("talker", 0, talk_on - rate // 10), take.first_peak("talker", talk_off, len(take))):
        lo, hi = at_talker - rate // 100, at_talker + rate * 3 // 10
        latencies.append((take.first_peak("mic", lo, hi) - at_talker, take.first_peak("out", lo, hi) - at_talker))
    (talker_to_mic, talker_to_out), (_, talker_to_out_end) = latencies
    latency = talker_to_out - talker_to_mic
    talker, out, mic = take.channels["talker"], take.channels["out"], take.channels["mic"]
    # far-end only, after `converge_s`: the mic's echo against what is left of it at out (same samples)
    f0, f1 = prog_on + int(converge_s * rate), talk_on
    p_mic, p_out = take.power("mic", f0, f1), take.power("out", f0, f1, shift=latency)
    by_second = [db(take.power("mic", i, i + rate)) - db(take.power("out", i, i + rate, shift=latency))
                 for i in range(prog_on, f1 - rate + 1, rate)]
    # double talk: the whole overlap; out is lined up with the clean talker by the best lag near the click's
    d0, d1 = talk_on, prog_off
    shift = best_lag(talker, out, d0, d1, (talker_to_out, talker_to_out_end))
    corr = correlation(out[d0 + shift:d1 + shift], talker[d0:d1])
    corr_mic = correlation(mic[d0 + talker_to_mic:d1 + talker_to_mic], talker[d0:d1])
    # near-end only, once the room's echo tail has died away
    n0, n1 = prog_off + int((rig.room.length_s + 0.2) * rate), talk_off
    near_shift = best_lag(talker, out, n0, n1, (talker_to_out, talker_to_out_end))
    near_corr = correlation(out[n0 + near_shift:n1 + near_shift], talker[n0:n1])
    near_loss = db(take.power("mic", n0, n1, shift=talker_to_mic)) - db(take.power("out", n0, n1, shift=near_shift))
    return Result(spec=rig.canceller.describe() if rig.canceller else "off", erle_db=db(p_mic) - db(p_out),
                  mic_dbfs=db(p_mic), out_dbfs=db(p_out), added_latency_s=latency / rate,
                  latency_end_s=(talker_to_out_end - talker_to_mic) / rate,
                  lag_double_s=(shift - talker_to_mic) / rate, double_talk_corr=corr,
                  double_talk_corr_mic=corr_mic, near_only_corr=near_corr, near_only_loss_db=near_loss,
                  erle_by_second=by_second, cpu_s=cpu, seconds=elapsed, take=take if keep_take else None)


def echo_delay(rig: AudioRig, attempts: int = 3) -> float:
    """The echo path's delay as a product could measure it once per site: a click played by the far
    end, from the speaker's monitor to the raw microphone (in this rig: the room's delay exactly).

    A take without the click on the speaker is taken again: on a machine loaded far past its cores
    (an image build beside the tests) the recorder lost most of a take once. A click that is there
    is measured as it is."""
    for attempt in range(attempts):
        rig.program(False, restart=False)
        time.sleep(0.3)
        recording = rig.record()
        try:
            time.sleep(0.2)
            rig.program_click()
            time.sleep(1.0 + rig.room.length_s)
        finally:
            take = recording.stop()
        try:
            at_speaker = take.first_peak("speaker", 0, len(take))  # the far end plays nothing else
        except ValueError:
            if attempt == attempts - 1:
                raise
            continue
        return (take.first_peak("mic", at_speaker, at_speaker + take.rate // 2) - at_speaker) / take.rate
    raise AssertionError("unreachable")


def added_latency(rig: AudioRig, clicks: int = 3) -> list[float]:
    """Seconds from the raw mic to the client's source, for `clicks` clicks in a quiet room."""
    recording = rig.record()
    moments = []
    try:
        for _ in range(clicks):
            time.sleep(1.0)
            moments.append(rig.click())
        time.sleep(1.0)
    finally:
        take = recording.stop()
    found = []
    for moment in moments:  # a second apart: each window holds one click even if the feeder's path moved
        at_talker = take.first_peak("talker", take.index(moment - 0.45), take.index(moment + 0.55))
        lo, hi = at_talker - take.rate // 100, at_talker + take.rate * 3 // 10
        found.append((take.first_peak("out", lo, hi) - take.first_peak("mic", lo, hi)) / take.rate)
    return found
