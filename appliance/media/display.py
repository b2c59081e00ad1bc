"""`vlc` display: the screens and the meeting's program through one libvlc player.

All libvlc calls happen on one worker thread, so `show_screen`/`start_program` only queue work and
the daemon's loop never waits on VLC; libvlc's own callbacks only record frames. Screens are Pillow
pictures played as still images; the program is played with low-latency caching. The worker checks
the player five times a second: a stream that stops delivering frames for `STALL_S` (or errors) is
retried with jittered back-off while the reconnecting screen shows (retries first try the source on a
hidden probe player, so the screen stays up until the source is really back), and every change is
posted as `MediaStatus("program", ...)`.
"""

from __future__ import annotations

import datetime as dt
import io as io_bytes
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from PIL import Image

from appliance.adapters.media import BackendUnavailable
from appliance.core.backoff import Backoff
from appliance.core.io import HealthReport, MediaStatus, ReplyData
from appliance.core.urls import PROGRAM_SCHEMES, clean_url, redact_text, redact_url
from appliance.media import audio_route, screens
from appliance.media.frames import FrameSink
from appliance.media.proc import scratch_dir

log = logging.getLogger("appliance.display")

TICK_S = 0.2
STALL_S = 3.0           # playing, but no new decoded frame for this long = stalled
OPEN_TIMEOUT_S = 6.0    # an attempt that shows no picture in this time has failed
FAST_RETRIES = 6        # then report `failed`, and keep trying every SLOW_RETRY_S
SLOW_RETRY_S = 30.0
SNAPSHOT_S = 1.0
VOUT_GRACE_S = 1.0      # a screen with no video output after this long = the display is broken


def vlc_args(display: dict[str, Any], echo: str = "off") -> list[str]:
    caching = str(display.get("network_caching_ms", 200))
    args = ["--quiet", "--intf=dummy", "--no-video-title-show", "--no-osd", "--no-snapshot-preview",
            f"--network-caching={caching}", f"--live-caching={caching}", "--clock-jitter=0",
            "--no-lua", "--stats"]
    output = display.get("output", "drm")
    if output == "headless":
        args += ["--no-xlib", "--avcodec-hw=none"]
    elif output == "x11":
        # Fullscreen needs a window manager; without one (bare X, Xvfb) the window has the video's size.
        args += ["--fullscreen", "--mouse-hide-timeout=0"]
    else:  # drm: Raspberry Pi OS Lite, no X; only one process may hold the screen (DRM master)
        args += ["--no-xlib", "--vout=drm_vout", f"--drm-vout-display={display.get('drm_connector', 'HDMI-A-1')}",
                 "--drm-vout-no-modeset"]
    return args + audio_route.vlc_audio_args(display, echo)


def media_options(url: str) -> tuple[str, list[str]]:
    """Turn `srt://host:port?streamid=..&passphrase=..` into VLC's URL and `:srt-*` options."""
    parts = urlsplit(url)
    if parts.scheme != "srt" or not parts.query:
        return url, []
    options = [f":srt-{key}={value}" for key, value in parse_qsl(parts.query)
               if key in ("streamid", "passphrase", "latency", "key-length")]
    return f"srt://{parts.netloc}", options


class VlcDisplay:
    def __init__(self, config: Any, post: Callable[[Any], None]) -> None:
        try:
            import vlc  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - python-vlc raises OSError/NameError, not only ImportError
            raise BackendUnavailable(f"python-vlc cannot load libvlc: {exc}") from exc

        display = config["display"]
        self.config = config
        self.settings = dict(display)
        self.output = display.get("output", "drm")
        self.language = display.get("language", "id")
        self.size = (int(display.get("width", 1280)), int(display.get("height", 720)))
        self.hold_s = float(config["panel"]["hold_s"])
        self.timezone = ZoneInfo(config["time"]["timezone"])
        self.site_name = config["site"]["name"] or config["site"]["id"]
        self._post = post
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="display", daemon=True)
        # RAM, not the SD card: the idle screen is redrawn every minute.
        self._workdir = tempfile.mkdtemp(prefix="appliance-screens-", dir=scratch_dir())
        self._badge = os.path.join(self._workdir, "badge.png")
        self.sink = FrameSink(self.size, display.get("frames_dir") or "") if self.output == "headless" else None
        # What the worker is doing; read by tests and benchmarks (plain attributes, written by one thread).
        self.status = "idle"
        self.ducked = False
        self.volume: int | None = None  # what the player was last set to (tests read it)
        self.showing = "nothing"
        self.shown_screen = ""
        self.attempt_started = 0.0
        self.probing = False
        self.health = ""

    # --- the DisplayBackend interface (daemon loop thread; never blocks) -------------------------
    def open(self) -> None:
        self._thread.start()

    def show_screen(self, screen: str, info: dict[str, Any]) -> None:
        self._commands.put(("screen", screen, dict(info)))

    def start_program(self, url: str) -> None:
        self._commands.put(("start", url))

    def stop_program(self) -> None:
        self._commands.put(("stop",))

    def duck_program(self, ducked: bool) -> None:
        """`audio.echo = duck`: the program `audio.duck_db` quieter while the site speaks."""
        self._commands.put(("duck", ducked))

    def screenshot(self, command_id: str) -> None:
        """The picture on the screen now, as JPEG, posted as ReplyData (the `screenshot` command)."""
        self._commands.put(("shot", command_id))

    def close(self) -> None:
        if self._thread.is_alive():
            self._commands.put(("close",))
            self._thread.join(5.0)
        shutil.rmtree(self._workdir, ignore_errors=True)

    # --- the worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        import vlc

        self.vlc = vlc
        os.environ.update(audio_route.vlc_environment(self.config))  # before libvlc loads libpulse
        self.instance = vlc.Instance(vlc_args(self.settings, audio_route.effective_echo(self.config)))
        if self.instance is None:
            reason = f"libvlc cannot start with output {self.output!r} (an option or plugin is missing"
            reason += "; drm needs Raspberry Pi OS's VLC)" if self.output == "drm" else ")"
            self._post(HealthReport("display", "error", reason))
            self._refuse_programs(reason)
            return
        self.player = self.instance.media_player_new()
        if self.sink is not None:
            self.sink.attach(self.player)
        self.version = vlc.libvlc_get_version().decode()
        self.screen, self.info = "idle", {"site_name": self.site_name}
        self.url: str | None = None
        self.media: Any = None
        self.backoff = Backoff(base_s=1.0, cap_s=10.0)
        self.failures = 0
        self.retry_at = 0.0
        self.progress = 0
        self.progress_at = 0.0
        self.rendered_minute = ""
        self.snapshot_at = 0.0
        self.probe: Any = None
        self.probe_sink: FrameSink | None = None
        self.screen_shown_at = 0.0
        self._show_current_screen()
        try:
            while True:
                try:
                    command = self._commands.get(timeout=TICK_S)
                except queue.Empty:
                    command = None
                if command is not None and command[0] == "close":
                    break
                try:
                    if command is not None:
                        self._handle(command)
                    self._supervise()
                except Exception:  # noqa: BLE001 - the screen must outlive one bad step
                    log.exception("display step failed")
        finally:
            for player in (self.probe, self.player):
                if player is not None:
                    player.stop()
                    player.release()
            self.instance.release()

    def _refuse_programs(self, reason: str) -> None:
        """Without libvlc there is nothing to show: say so at once, on every start."""
        while (command := self._commands.get())[0] != "close":
            if command[0] == "start":
                self._set_status("failed", reason)
            elif command[0] == "stop":
                self._set_status("idle", "stopped")

    def _handle(self, command: tuple[Any, ...]) -> None:
        if command[0] == "screen":
            self.screen, self.info = command[1], command[2]
            if self.showing == "program":
                self._update_mark()
            else:
                self._show_current_screen()
        elif command[0] == "start":
            self._stop_probe()
            try:  # VLC gets the URL rebuilt from its checked parts (the core sends only such URLs)
                self.url = clean_url(command[1], None, PROGRAM_SCHEMES)
            except ValueError as exc:
                self.url = None
                self._set_status("failed", f"cannot play {redact_url(command[1])!r}: {exc}")
                self._show_current_screen()
                return
            self.failures = 0
            self.backoff.reset()
            self._set_status("buffering", f"opening {self.url}")
            self._attempt()
            self._apply_volume()
        elif command[0] == "duck":
            self.ducked = command[1]
            self._apply_volume()
        elif command[0] == "shot":
            self._post(ReplyData(command[1], "screenshot", **self._screenshot()))
        elif command[0] == "stop":
            self._stop_probe()
            self.url = None
            self.player.stop()  # the centre must see us leave now, before any screen is drawn
            self._set_status("idle", "stopped")
            self._show_current_screen()

    def _screenshot(self) -> dict[str, Any]:
        """What the screen shows: the last frame decoded (headless), or VLC's own snapshot of its output."""
        try:
            if self.sink is not None:
                picture = self.sink.picture()
            else:
                path = os.path.join(self._workdir, "screenshot.png")
                if self.player.video_take_snapshot(0, path, self.size[0], self.size[1]) != 0:
                    return {"error": "VLC took no snapshot (nothing on the screen yet?)"}
                with Image.open(path) as taken:
                    picture = taken.convert("RGB")
            out = io_bytes.BytesIO()
            picture.save(out, "JPEG", quality=80)
            return {"data": out.getvalue(), "content_type": "image/jpeg"}
        except (OSError, ValueError) as exc:
            return {"error": f"no screenshot: {exc}"}

    def _apply_volume(self) -> None:
        volume = audio_route.duck_volume(float(self.config["audio"]["duck_db"])) if self.ducked else 100
        if self.player.audio_set_volume(volume) == 0:
            self.volume = volume
            log.info("program volume %d%% (%s)", volume, "ducked while the site speaks" if self.ducked else "normal")
        else:
            log.warning("the player refused volume %d%%", volume)

    def _supervise(self) -> None:
        now = time.monotonic()
        if self.showing == "program":
            self._check_program(now)
        elif self.probing:
            self._check_probe(now)
        elif self.url is not None and now >= self.retry_at:
            if self.status in ("retrying", "failed"):
                self._start_probe()  # keep the reconnecting screen up until the source is really back
            else:
                self._attempt()
        if self.showing == "screen" and dt.datetime.now(self.timezone).strftime("%H:%M") != self.rendered_minute:
            self._show_current_screen()  # the clock on the screen
        if self.showing == "screen" and now - self.screen_shown_at > VOUT_GRACE_S:
            self._check_output()
        if self.sink is not None and now - self.snapshot_at >= SNAPSHOT_S:
            self.snapshot_at = now
            self.sink.snapshot("program" if self.showing == "program" else f"screen-{self.shown_screen}")

    def _check_output(self) -> None:
        """Health `display`: is a picture really going out (a missing drm_vout only shows up here)."""
        if self.player.has_vout() > 0:
            value, detail = "ok", f"libvlc {self.version}, output {self.output}"
        else:
            value, detail = "error", f"libvlc has no video output for {self.output!r} (plugin missing or screen busy?)"
        if value != self.health:
            self.health = value
            self._post(HealthReport("display", value, detail))

    def _check_program(self, now: float) -> None:
        state = self.player.get_state()
        stats = self.vlc.MediaStats()
        self.media.get_stats(stats)
        # Decoded frames, not bytes: a source can keep sending what no longer decodes.
        if stats.decoded_video > self.progress:
            self.progress, self.progress_at = stats.decoded_video, now
        if state in (self.vlc.State.Error, self.vlc.State.Ended):
            self._fail(f"player {str(state).split('.')[-1].lower()}")
        elif self.status != "playing":
            if self._has_picture():
                self.backoff.reset()
                self.failures = 0
                self._set_status("playing", f"{self.url} after {now - self.attempt_started:.2f} s")
                self._update_mark()
            elif now - self.attempt_started > OPEN_TIMEOUT_S:
                self._fail(f"no picture from {self.url} within {OPEN_TIMEOUT_S:g} s")
        elif now - self.progress_at > STALL_S:
            self._fail(f"no new frame for {STALL_S:g} s")

    def _has_picture(self) -> bool:
        # Decoded by *this* media: a screen's last picture can still reach the glass after the switch.
        decoded = self.progress_at > self.attempt_started
        if self.sink is not None:
            return decoded and self.sink.frames_since(self.attempt_started) > 0
        # The camera badge reaches only a video output that exists, so "playing" waits for one.
        return decoded and self.player.has_vout() > 0

    def _attempt(self) -> None:
        assert self.url is not None
        target, options = media_options(self.url)
        self.media = self.instance.media_new(target, *options)
        self.progress, self.progress_at = 0, 0.0
        self.attempt_started = time.monotonic()
        self.player.video_set_logo_int(self.vlc.VideoLogoOption.logo_enable, 0)
        self.player.set_media(self.media)
        self.player.play()
        self.showing = "program"
        if self.output == "x11":
            self.player.set_fullscreen(True)

    def _start_probe(self) -> None:
        """Try the source on a hidden player (frames into a tiny buffer) while the screen stays up."""
        assert self.url is not None
        if self.probe is None:
            self.probe = self.instance.media_player_new()
            self.probe_sink = FrameSink((64, 36))
            self.probe_sink.attach(self.probe)
        target, options = media_options(self.url)
        self.probe.set_media(self.instance.media_new(target, *options, ":no-audio"))
        self.attempt_started = time.monotonic()
        self.probe.play()
        self.probing = True

    def _check_probe(self, now: float) -> None:
        if self.probe_sink.frames_since(self.attempt_started) > 0:
            self._stop_probe()
            log.info("program source is back after %.2f s; switching the screen over", now - self.attempt_started)
            self._attempt()
        elif self.probe.get_state() in (self.vlc.State.Error, self.vlc.State.Ended):
            self._stop_probe()
            self._fail(f"{self.url} unreachable (player {str(self.probe.get_state()).split('.')[-1].lower()})")
        elif now - self.attempt_started > OPEN_TIMEOUT_S:
            self._stop_probe()
            self._fail(f"no picture from {self.url} within {OPEN_TIMEOUT_S:g} s")

    def _stop_probe(self) -> None:
        if self.probing:
            self.probe.stop()
            self.probing = False

    def _fail(self, reason: str) -> None:
        self.failures += 1
        delay = self.backoff.next_delay() if self.failures <= FAST_RETRIES else SLOW_RETRY_S
        status = "retrying" if self.failures <= FAST_RETRIES else "failed"
        self._set_status(status, f"{reason}; attempt {self.failures + 1} in {delay:.1f} s")
        self.retry_at = time.monotonic() + delay
        if self.showing != "screen" or self.shown_screen != self._screen_name():
            self._show_current_screen()

    def _set_status(self, status: str, detail: str) -> None:
        detail = redact_text(detail)  # it names the program URL: no stream keys or passphrases in logs and events
        if not detail.isprintable():
            detail = ascii(detail)[1:-1]
        if status != self.status or status in ("retrying", "failed"):
            log.info("program %s: %s", status, detail)
        self.status = status
        self._post(MediaStatus("program", status, detail))

    # --- what is on the glass ----------------------------------------------------------------------
    def _screen_name(self) -> str:
        if self.url is not None and self.status in ("retrying", "failed"):
            return "program_reconnecting"
        return self.screen

    def _show_current_screen(self) -> None:
        now = dt.datetime.now(self.timezone)
        name = self._screen_name()
        picture = screens.render(name, self.info, self.language, self.size, now=now, hold_s=self.hold_s)
        # A fresh name each time: VLC may still be reading the previous file.
        path = os.path.join(self._workdir, f"screen-{time.monotonic_ns()}.png")
        picture.image.save(path)
        media = self.instance.media_new(path, ":image-duration=-1")
        self.player.video_set_logo_int(self.vlc.VideoLogoOption.logo_enable, 0)
        self.player.set_media(media)
        self.player.play()
        if self.output == "x11":
            self.player.set_fullscreen(True)
        self.showing, self.shown_screen, self.rendered_minute = "screen", name, now.strftime("%H:%M")
        self.screen_shown_at = time.monotonic()
        # Keep the last few: VLC opens files on its own thread, possibly after we moved on.
        for old in sorted(name for name in os.listdir(self._workdir) if name.startswith("screen-"))[:-3]:
            os.unlink(os.path.join(self._workdir, old))

    def _update_mark(self) -> None:
        """The small on-screen badge that this site's camera is on air (VLC's logo overlay)."""
        option = self.vlc.VideoLogoOption
        live = self.info.get("uplink") == "live"
        # Off first: enabling an enabled overlay does not reach a video output VLC recycled.
        self.player.video_set_logo_int(option.logo_enable, 0)
        if not live:
            return
        if not os.path.exists(self._badge):
            screens.badge(screens.text(self.language, "mark_live"), max(20, self.size[1] // 18)).save(self._badge)
        self.player.video_set_logo_string(option.logo_file, self._badge)
        self.player.video_set_logo_int(option.logo_position, 6)  # top right
        self.player.video_set_logo_int(option.logo_x, self.size[1] // 40)
        self.player.video_set_logo_int(option.logo_y, self.size[1] // 40)
        self.player.video_set_logo_int(option.logo_opacity, 255)
        self.player.video_set_logo_int(option.logo_enable, 1)
