"""Supervised ffmpeg pusher shared by the camera backends.

One session thread per meeting owns the ffmpeg child: it starts it, reads `-progress` reports,
declares the uplink `live` once bytes really leave for the server, notices a dead or stalled
pusher within `STALL_S`, and retries with jittered back-off. Everything it learns goes to the
daemon as `MediaStatus("uplink", ...)` through `post`; it never touches the core.

The microphone is muted and unmuted inside the running ffmpeg, never by restarting it (the centre
must keep one unbroken stream): the audio chain is `azmq` (a ZeroMQ REP socket at `ipc://` in a
private 0700 directory of the session, one socket per ffmpeg) followed by `volume@mic`. Each
ffmpeg starts with the gain wanted at that moment; a change is sent by a small worker thread of
the session (`MicrophoneControl`) and confirmed by ffmpeg's "0 Success". When ffmpeg cannot be
told, that ffmpeg is killed and the next one starts at the wanted gain: the mute fails closed.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.core.backoff import Backoff
from appliance.core.io import HealthReport, MediaStatus, SelftestCheckDone
from appliance.core.messages import Message, message
from appliance.core.selftest import result
from appliance.core.urls import INGEST_SCHEMES, clean_url, redact_text, redact_url
from appliance.media import audio_route, proc
from appliance.media.microphone import MIC_REPLY_S, Attempt, MicrophoneControl, control_parent, microphone_filters

log = logging.getLogger("appliance.uplink")

STALL_S = 3.0            # no new bytes sent for this long = dead pusher
FAST_RETRIES = 6         # consecutive failed attempts before reporting `failed` (it keeps trying, slower)
SLOW_RETRY_S = 60.0
STOP_GRACE_S = 0.7       # SIGTERM lets ffmpeg close the RTMP/SRT session cleanly; then SIGKILL
PROGRESS_PERIOD_S = 0.5


class PermanentError(Exception):
    """A problem retrying cannot fix (unsupported URL, no encoder): report `failed` at once."""


@dataclass(frozen=True)
class UplinkSettings:
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 1500
    audio_device: str = "default"
    audio_bitrate_kbps: int = 64

    @classmethod
    def from_config(cls, camera: dict[str, Any]) -> UplinkSettings:
        names = ("width", "height", "fps", "bitrate_kbps", "audio_device")
        return cls(**{name: camera[name] for name in names if name in camera})


def output_args(url: str) -> list[str]:
    """Container and protocol options for the ingest URL (the pushing side).

    ffmpeg gets the URL rebuilt by `urls.clean_url`, never the raw text: given " rtmp://..." it
    wrote a local file, and a NUL cannot even be passed to a process. The core hands over only URLs
    that passed that check; this one is for every other caller.
    """
    try:
        url = clean_url(url, None, INGEST_SCHEMES)
    except ValueError as exc:
        raise PermanentError(f"cannot push to {redact_url(url)!r}: {exc} (use rtmp://, rtmps:// or srt://)") from None
    if url.startswith(("rtmp://", "rtmps://")):
        return ["-f", "flv", "-flvflags", "no_duration_filesize", url]
    # srt: 1316 = 7 TS packets, the SRT payload size every server expects.
    sep = "&" if "?" in url else "?"
    target = url if "pkt_size=" in url else f"{url}{sep}pkt_size=1316"
    return ["-f", "mpegts", "-mpegts_flags", "resend_headers", target]


def h264_args(settings: UplinkSettings) -> list[str]:
    """Software H.264 with the same stream shape the Pi's hardware encoder is asked for."""
    fps = settings.fps
    return [
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "main",
        "-pix_fmt", "yuv420p", "-b:v", f"{settings.bitrate_kbps}k", "-maxrate", f"{settings.bitrate_kbps}k",
        "-bufsize", f"{settings.bitrate_kbps}k", "-g", str(fps), "-keyint_min", str(fps), "-sc_threshold", "0",
        "-x264-params", "repeat-headers=1",
    ]


def aac_args(settings: UplinkSettings) -> list[str]:
    return ["-c:a", "aac", "-b:a", f"{settings.audio_bitrate_kbps}k", "-ar", "48000", "-ac", "1"]


class FfmpegUplink:
    """CameraBackend on top of one supervised ffmpeg per attempt; subclasses say what to run."""

    name = "ffmpeg"

    def __init__(self, config: Any, post: Callable[[Any], None]) -> None:
        self.config = config
        self.site_id = config["site"]["id"]
        self.site_name = config["site"]["name"] or self.site_id
        self.settings = UplinkSettings.from_config(config["camera"])
        self._post = post
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self.audio_engine: Any = None  # set by the daemon: its `.ok` says whether the audio engine works
        self._engine_input_failed = False
        self._closed = False
        self._microphone_live = False  # the gain wanted now; every ffmpeg starts with it

    @property
    def microphone_wanted(self) -> bool:
        return self._microphone_live

    # --- the CameraBackend interface (called on the daemon's loop thread: must not block) -------
    def open(self) -> None:
        problem = None if shutil.which("ffmpeg") else "ffmpeg is not installed"
        problem = problem or self.check()
        self._post(HealthReport("camera", "missing" if problem else "ok", problem or f"{self.name} ready"))

    def start(self, url: str, microphone_live: bool = False) -> None:
        """Push to `url`; every ffmpeg of this session starts with the gain wanted at its start.

        `microphone_live` is that gain now (muted unless said otherwise), until `set_microphone`.
        """
        with self._lock:
            if self._closed:
                return
            self._microphone_live = bool(microphone_live)
            if self._session is not None:
                self._session.stop()
            self._session = _Session(self, url)
            self._session.start()

    def set_microphone(self, live: bool) -> None:
        """Mute or unmute without restarting the encoder. Never blocks: the session's worker tells ffmpeg.

        If the running ffmpeg does not confirm the change within `MIC_REPLY_S` (control socket gone,
        error reply, hung), it is killed and the next attempt starts at the wanted gain (fail closed).
        Without a session it only records the wanted gain (`start` then says its own). Same value: no-op.
        """
        live = bool(live)
        with self._lock:
            if live == self._microphone_live:
                return
            self._microphone_live = live
            session = self._session
        log.info("microphone %s wanted", "live" if live else "muted")
        if session is not None:
            session.microphone_changed()

    @property
    def microphone_confirmed(self) -> bool | None:
        """The gain the running encoder has: the one it was started with, or the last it confirmed.

        None while no ffmpeg is live (between meetings, between attempts, before the first bytes).
        """
        with self._lock:
            session = self._session
        return session.microphone_confirmed() if session is not None else None

    def stop(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.stop()
        else:
            self._post(MediaStatus("uplink", "idle", "not running"))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            session.stop()
            session.join(STOP_GRACE_S + 2.5)
        self.release()

    @property
    def encoder_pid(self) -> int | None:
        """The running encoder's process id (for CPU and memory readings), None between meetings."""
        with self._lock:
            child = self._session.child if self._session is not None else None
        return child.pid if child is not None and child.poll() is None else None

    def run_probe(self, seconds: float) -> None:
        """The self-test's camera check, off the loop: posts SelftestCheckDone("camera", ...)."""

        def work() -> None:
            started = time.monotonic()
            try:
                problem = self.check()
                ok, said = (False, message("selftest.camera.unusable", reason=problem)) if problem else self.probe(seconds)
            except Exception as exc:  # noqa: BLE001 - a crashing probe is a failed check, not a dead self-test
                ok, said = False, message("selftest.crashed", error=f"{type(exc).__name__}: {exc}")
            self._post(SelftestCheckDone("camera", {**result(bool(ok), said.code, **said.params),
                                                    "duration_s": round(time.monotonic() - started, 3)}))

        threading.Thread(target=work, name="camera-probe", daemon=True).start()

    def probe(self, seconds: float) -> tuple[bool, Message]:
        """Self-test: run the source for `seconds` into nothing and count the frames it encodes."""
        with self._lock:
            session = self._session
        if session is not None:
            return session.status == "live", message("selftest.camera.in_use", status=session.status)
        try:
            child = proc.spawn(self.command_with(["-f", "null", "-"]), stdin=self.stdin(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            return False, message("selftest.camera.no_ffmpeg", error=exc)
        frames = 0
        try:
            self.attached(child)
            assert child.stdout is not None
            fd = child.stdout.fileno()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(fd, 65536) if ready else b""
                if ready and not chunk:
                    break
                for line in chunk.decode(errors="replace").splitlines():
                    if line.startswith("frame="):
                        frames = max(frames, _int(line.partition("=")[2]))
        except PermanentError as exc:
            return False, message("selftest.camera.failed", error=exc)
        finally:
            proc.kill(child)
            self.detached()
            self.session_ended()
        s = self.settings
        ok = frames >= seconds * s.fps / 2
        return ok, message("selftest.camera.frames", frames=frames, seconds=f"{seconds:g}", width=s.width,
                           height=s.height, fps=s.fps)

    # --- hooks ----------------------------------------------------------------------------------
    def check(self) -> str | None:
        """A reason the source cannot work at all (shown as camera health `missing`), or None."""
        return None

    def command(self, url: str, microphone_live: bool = False, control_socket: str | None = None) -> list[str]:
        return self.command_with(output_args(url), microphone_filters(microphone_live, control_socket))

    def command_with(self, output: list[str], audio_filters: str = microphone_filters(False)) -> list[str]:
        """The ffmpeg command line, ending in `output` (container options and target).

        `audio_filters` (see `microphone_filters`) go between the microphone and the AAC encoder.
        """
        raise NotImplementedError

    def stdin(self) -> int | None:
        return subprocess.DEVNULL

    def microphone_input(self) -> list[str]:
        """ffmpeg's audio input for the next attempt (audio_route: the engine, ALSA or a silent track).
        An engine input whose ffmpeg died before sending anything is not tried again until the
        engine is reported back (`audio_changed`): the video must go, with a silent track if need be."""
        engine_ok = self.audio_engine.ok if self.audio_engine is not None else None
        if self._engine_input_failed:
            engine_ok = False
        return audio_route.microphone_args(self.config, engine_ok)

    def audio_changed(self) -> None:
        """The audio engine came or went (any thread): an encoder on the wrong input restarts at once."""
        with self._lock:
            session = self._session
        if self.audio_engine is None or self.audio_engine.ok:
            self._engine_input_failed = False
        if session is not None:
            session.audio_changed()

    def attached(self, child: subprocess.Popen) -> None:
        """Called on the session thread once an ffmpeg is running (the Pi camera feeds it here)."""

    def detached(self) -> None:
        """Called on the session thread once that ffmpeg is gone."""

    def session_ended(self) -> None:
        """Called on the session thread when the meeting's uplink is over."""

    def release(self) -> None:
        """Free whatever `open` acquired."""


class _Session(threading.Thread):
    def __init__(self, owner: FfmpegUplink, url: str) -> None:
        super().__init__(name="uplink", daemon=True)
        self.owner = owner
        self.url = url
        self.shown_url = redact_url(url)  # whole, not found in a sentence: a hostile URL's NUL would cut it short
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=6)
        self.status = "starting"
        self.cond = threading.Condition()     # guards `attempt` and its fields; never held while blocking
        self.attempt: Attempt | None = None
        self.control_dir = ""                 # private (0700): only the daemon's user can change the gain
        self.attempts = 0
        self.audio_input: list[str] | None = None  # the microphone input of the current (or last) ffmpeg
        self.microphone = MicrophoneControl(self)

    def post(self, status: str, detail: str = "") -> None:
        # A replaced session (leave then join again at once) must not report over its successor.
        if self.owner._session not in (self, None):
            return
        detail = redact_text(detail)  # it names the URL, and ffmpeg's errors repeat it: no stream keys
        if not detail.isprintable():  # a hostile URL's control characters stay out of logs and events
            detail = ascii(detail)[1:-1]
        self.status = status
        log.info("uplink %s: %s", status, detail)
        self.owner._post(MediaStatus("uplink", status, detail))

    def stop(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, 15)  # SIGTERM: quick and non-blocking; the session escalates
            except ProcessLookupError:
                pass

    def microphone_changed(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def audio_changed(self) -> None:
        wanted = self.owner.microphone_input()
        with self.cond:
            attempt = self.attempt
            if attempt is None or attempt.restart_reason is not None or self.audio_input == wanted:
                return
            attempt.restart_reason = "the microphone's input changed (the audio engine came or went)"
            try:  # under `cond`, as the microphone worker does: the child is not reaped yet
                os.killpg(attempt.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.info("uplink: %s; restarting the encoder at once", attempt.restart_reason)

    def microphone_confirmed(self) -> bool | None:
        with self.cond:
            attempt = self.attempt
            return attempt.gain if attempt is not None and attempt.live_at is not None else None

    def run(self) -> None:
        backoff = Backoff(base_s=1.0, cap_s=30.0)
        failures = 0
        self.post("starting", f"pushing to {self.shown_url}")
        try:
            self.microphone.start()
            while not self.stopping.is_set():
                try:
                    was_live, reason, restart_now = self._attempt()
                except PermanentError as exc:
                    self.post("failed", str(exc))
                    self.stopping.wait()
                    break
                except Exception as exc:  # noqa: BLE001 - a bug here must say so, not leave "starting" forever
                    log.exception("uplink session failed")
                    self.post("failed", f"internal error: {type(exc).__name__}: {exc}")
                    self.stopping.wait()
                    break
                if self.stopping.is_set():
                    break
                if not was_live and self.audio_input == audio_route.engine_capture_args(self.owner.config):
                    # The engine's source did not work (not running, no canceller): video with a
                    # silent track rather than no stream at all; the engine's return restarts it.
                    self.owner._engine_input_failed = True
                    restart_now = True
                    reason += "; sending a silent track until the audio engine works"
                if restart_now:  # the gain could not be changed: the next ffmpeg starts with it, at once
                    self.post("retrying", f"{reason}; encoder restarted at once")
                    continue
                if was_live:
                    backoff.reset()
                    failures = 0
                failures += 1
                delay = backoff.next_delay() if failures <= FAST_RETRIES else SLOW_RETRY_S
                status = "retrying" if failures <= FAST_RETRIES else "failed"
                self.post(status, f"{reason}; attempt {failures + 1} in {delay:.1f} s")
                self.stopping.wait(delay)
        finally:
            self.stopping.set()
            with self.cond:
                self.cond.notify_all()
            if self.microphone.is_alive():
                self.microphone.join(MIC_REPLY_S + 1.0)
            if self.control_dir:
                shutil.rmtree(self.control_dir, ignore_errors=True)
            self.owner.session_ended()
            self.post("idle", "stopped")

    def _attempt(self) -> tuple[bool, str, bool]:
        """One ffmpeg: (whether it went live, why it ended, whether to restart it at once)."""
        self.attempts += 1
        if not os.path.isdir(self.control_dir):  # the first attempt, or a cleaner removed it: a new one
            try:
                self.control_dir = tempfile.mkdtemp(prefix="appliance-mic-", dir=control_parent())  # 0700
            except OSError as exc:
                raise PermanentError(f"cannot make the microphone's control directory: {exc}") from exc
        control = os.path.join(self.control_dir, f"mic{self.attempts}.sock")  # never one a dead ffmpeg left
        gain = self.owner.microphone_wanted  # read before the command: a later change is sent by the worker
        self.audio_input = self.owner.microphone_input()
        cmd = self.owner.command(self.url, gain, control)
        log.debug("uplink: %s", redact_text(" ".join(cmd)))
        try:
            child = proc.spawn(cmd, stdin=self.owner.stdin(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=audio_route.capture_environment(self.audio_input))
        except (OSError, ValueError) as exc:  # ValueError: an argument the OS cannot take (an embedded NUL)
            raise PermanentError(f"cannot run ffmpeg: {redact_text(str(exc))}") from exc
        self.child = child
        attempt = Attempt(child, control, gain)
        with self.cond:
            self.attempt = attempt
            self.cond.notify_all()
        drain = threading.Thread(target=self._drain_stderr, args=(child,), daemon=True)
        drain.start()
        try:
            self.owner.attached(child)
            if self.stopping.is_set():
                return False, "stopped", False
            was_live, reason = self._watch(child, attempt)
            with self.cond:
                restart = attempt.restart_reason
            return (was_live, restart, True) if restart and not self.stopping.is_set() else (was_live, reason, False)
        finally:
            with self.cond:  # before the child is reaped: the worker kills only the attempt it still sees here
                self.attempt = None
                self.cond.notify_all()
            proc.kill(child, STOP_GRACE_S)
            self.child = None
            self.owner.detached()
            drain.join(1.0)
            try:
                os.unlink(control)
            except OSError:
                pass

    def _watch(self, child: subprocess.Popen, attempt: Attempt) -> tuple[bool, str]:
        """Follow ffmpeg's progress reports until it dies, stalls or is stopped."""
        assert child.stdout is not None
        fd = child.stdout.fileno()
        pending = b""
        report: dict[str, str] = {}
        live = False
        last_size = -1
        last_change = time.monotonic()
        while True:
            ready, _, _ = select.select([fd], [], [], 0.25)
            now = time.monotonic()
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = child.wait()
                    return live, self._why(f"ffmpeg exited with code {code}")
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    key, _, value = line.decode(errors="replace").strip().partition("=")
                    report[key] = value
                    if key != "progress":
                        continue
                    size = _int(report.get("total_size"))
                    frames = _int(report.get("frame"))
                    if size > last_size:
                        last_size, last_change = size, now
                        if not live and size > 0 and frames > 0:
                            live = True
                            with self.cond:
                                attempt.live_at = now
                                self.cond.notify_all()
                            self.post("live", f"sending to {self.shown_url}")
                    if value == "end":
                        return live, self._why("ffmpeg ended the stream")
            if self.stopping.is_set():
                return live, "stopped"
            if now - last_change > STALL_S:
                return live, self._why(f"no data sent for {STALL_S:g} s")

    def _drain_stderr(self, child: subprocess.Popen) -> None:
        assert child.stderr is not None
        for raw in child.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self.stderr_tail.append(line)
                log.debug("ffmpeg: %s", redact_text(line))

    def _why(self, what: str) -> str:
        tail = self.stderr_tail[-1] if self.stderr_tail else ""
        return f"{what}: {tail}" if tail else what


def _int(text: str | None) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        return -1


def base_args() -> list[str]:
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
            "-progress", "pipe:1", "-stats_period", str(PROGRESS_PERIOD_S)]
