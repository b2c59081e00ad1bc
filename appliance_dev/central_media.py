"""A small local "central media" for the demo and the tests, on 127.0.0.1 only.

- `RtmpServer`: nginx + libnginx-mod-rtmp taking the sites' uplinks (`rtmp://.../live/<site>`), with
  its stat page, so one can see which sites are publishing.
- `SrtProgram`: the meeting's program as MPEG-TS over SRT (the low-latency path for VLC, see
  docs/central-media.md). ffmpeg's SRT listener serves one caller and exits when it leaves, so a
  supervisor thread restarts it, which is what a real server (MediaMTX, SRS) does for free.
- `AudioMeter`: what the centre hears of a site: the sound level of a stream on `RtmpServer`, window
  by window with arrival times, and whether the stream the server delivered stayed unbroken.

In production these are one MediaMTX or SRS; nothing here runs on a Pi.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.media import proc
from appliance_dev.localnet import free_port, wait_for_port, wait_for_udp_port
from appliance_dev.waiting import wait_until

NGINX_CONF = """
load_module {module};
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{ live on; record off; wait_key on; }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        location /stat {{ rtmp_stat all; }}
    }}
}}
"""
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


class RtmpServer:
    """nginx-rtmp in a temporary directory, unprivileged paths, no daemonising."""

    def __init__(self, rtmp_port: int | None = None, http_port: int | None = None) -> None:
        self.rtmp_port = rtmp_port or free_port()
        self.http_port = http_port or free_port()
        self.dir = tempfile.mkdtemp(prefix="central-rtmp-")
        self.child: subprocess.Popen | None = None

    def start(self) -> RtmpServer:
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write(NGINX_CONF.format(module=RTMP_MODULE, dir=self.dir, rtmp_port=self.rtmp_port,
                                           http_port=self.http_port))
        self.child = proc.spawn(["nginx", "-c", conf, "-p", self.dir, "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.rtmp_port)
        wait_for_port(self.http_port)
        return self

    def stop(self) -> None:
        proc.kill(self.child)
        self.child = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, name: str = "{site}") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    def streams(self) -> dict[str, dict[str, Any]]:
        """Streams nginx has right now: name -> {publishing, publisher, bytes_in, bw_in, width, height}.

        `publisher` is nginx's id of the publishing connection (None when nobody publishes): it
        changes whenever the publisher reconnects, so an unchanged id means one unbroken session.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/stat", timeout=2) as answer:
            root = ET.fromstring(answer.read())
        found = {}
        for stream in root.iter("stream"):
            video = stream.find("meta/video")
            publisher = next((client.findtext("id") for client in stream.iter("client")
                              if client.find("publishing") is not None), None)
            found[stream.findtext("name", "")] = {
                "publishing": stream.find("publishing") is not None,
                "publisher": int(publisher) if publisher else None,
                "bytes_in": int(stream.findtext("bytes_in", "0")),
                "bw_in": int(stream.findtext("bw_in", "0")),
                "width": int(video.findtext("width", "0")) if video is not None else 0,
                "height": int(video.findtext("height", "0")) if video is not None else 0,
            }
        return found

    def publishing(self, name: str) -> bool:
        return self.streams().get(name, {}).get("publishing", False)

    def publisher(self, name: str) -> int | None:
        """nginx's id of the connection publishing `name` now (None if none); new on every reconnect."""
        return self.streams().get(name, {}).get("publisher")


class SrtProgram:
    """The centre's program as an SRT listener, restarted whenever its caller goes away."""

    def __init__(self, port: int | None = None, video: str = "testsrc2=size=1280x720:rate=30",
                 overlay_png: str | None = None, bitrate_kbps: int = 2000) -> None:
        self.port = port or free_port(socket.SOCK_DGRAM)
        self.video = video
        self.overlay_png = overlay_png
        self.bitrate_kbps = bitrate_kbps
        self.child: subprocess.Popen | None = None
        self.connections = 0
        self._stopping = threading.Event()
        self._spawning = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"srt://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
               "-re", "-f", "lavfi", "-i", self.video,
               "-re", "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000"]
        vmap = "0:v"
        if self.overlay_png:
            cmd += ["-i", self.overlay_png, "-filter_complex", "[0:v][2:v]overlay=0:main_h-overlay_h:eof_action=repeat[v]"]
            vmap = "[v]"
        return cmd + [
            "-map", vmap, "-map", "1:a",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-b:v", f"{self.bitrate_kbps}k", "-g", "30", "-keyint_min", "30", "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", "64k",
            "-f", "mpegts", f"srt://127.0.0.1:{self.port}?mode=listener&pkt_size=1316",
        ]

    def start(self) -> SrtProgram:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="srt-program", daemon=True)
        self._thread.start()
        wait_for_udp_port(self.port)  # a caller that comes before ffmpeg listens is refused
        return self

    def stop(self) -> None:
        """Take the program off the air (the caller sees its source vanish)."""
        with self._spawning:
            self._stopping.set()
            child = self.child
        proc.kill(child)
        if self._thread is not None:
            self._thread.join(3.0)
            self._thread = None

    close = stop

    def _serve(self) -> None:
        # Spawned and waited on by this thread, so PDEATHSIG ties the child's life to it.
        while True:
            with self._spawning:  # so stop() never misses a child spawned while it was stopping
                if self._stopping.is_set():
                    return
                self.child = proc.spawn(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.connections += 1
            self.child.wait()
            if not self._stopping.is_set():
                time.sleep(0.05)


# --- what the centre hears: the sound level of a stream on the local nginx-rtmp ---------------------
LOUD_DBFS = -30.0    # the testsrc tone is about -21 dBFS RMS; a muted encoder sends digital silence (-inf)
SILENT_DBFS = -60.0
_PTS = re.compile(rb"pts:\s*-?\d+\s+pts_time:(-?[\d.]+)")


@dataclass(frozen=True)
class AudioWindow:
    """One `window_s` slice of the stream's sound as a viewer at the server receives it."""

    arrived: float   # time.monotonic() when the meter had it decoded
    pts: float       # stream time (s) as the server delivered it (-copyts: the publisher's own timestamps)
    dbfs: float      # RMS level in dB full scale; -inf for digital silence


class AudioMeter:
    """Listens to one stream on the local nginx-rtmp like a viewer at the centre and measures its sound.

        meter = AudioMeter(rtmp.url("kalibaru")).start()     # once the stream is being published
        t = meter.wait_level(loud=True, after=time.monotonic(), timeout=5)   # arrival of the first loud window
        meter.loudest(since=t0)          # the highest level (dBFS) received since t0
        meter.discontinuities(since=t0)  # [] when the stream the server delivered was unbroken since t0
        meter.close()

    The sound: one ffmpeg reads only the audio, with no buffering and a tiny probe, keeps the
    server's timestamps (`-copyts`), downmixes to mono 48 kHz, cuts it into `window_s` windows and
    prints each window's RMS level (`astats`) with its pts on a pipe, flushed per line (`ametadata
    direct=1`), so a window's arrival time is within a few ms of the moment the server delivered it.
    (Video in the same ffmpeg held the audio back by up to a video frame interval, 70-170 ms.)

    The video (`video=True`): a second viewer copies the video packets without decoding them and
    records each one's pts (`framecrc`), so a test can also see the video timestamps never jump.
    nginx-rtmp keeps a viewer connected when a publisher drops and another one publishes the same
    name, but the new publisher's timestamps start again from 0: an encoder restart always shows
    as a jump back in both tracks (and as a new publisher id in `RtmpServer.streams()`).
    A viewer whose ffmpeg ends is restarted; `connections` counts the audio viewer's connections.
    """

    def __init__(self, url: str, window_s: float = 0.01, video: bool = True) -> None:
        self.url = url
        self.window_s = window_s
        self.video = video
        self.connections = 0
        self.connected_at: dict[str, list[float]] = {"audio": [], "video": []}
        self.ready_at = math.inf  # when `start` saw the sound flowing steadily
        self.stderr_tail: list[str] = []
        self._windows: list[AudioWindow] = []
        self._video_pts: list[tuple[float, float]] = []  # (arrival, pts)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._children: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._spawning = threading.Lock()

    def command(self, kind: str = "audio") -> list[str]:
        """The listening ffmpeg for `kind` ("audio" or "video")."""
        head = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
                "-fflags", "nobuffer", "-probesize", "32768", "-analyzeduration", "0", "-copyts", "-i", self.url]
        if kind == "video":
            return [*head, "-map", "0:v", "-c", "copy", "-flush_packets", "1", "-f", "framecrc", "pipe:1"]
        samples = max(1, round(48000 * self.window_s))
        audio = (f"aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=mono,asetnsamples=n={samples}:p=0,"
                 "astats=metadata=1:reset=1:measure_perchannel=none:measure_overall=RMS_level,"
                 "ametadata=mode=print:key=lavfi.astats.Overall.RMS_level:file=-:direct=1")
        return [*head, "-map", "0:a", "-af", audio, "-f", "null", "-"]

    def start(self, timeout: float = 10.0) -> AudioMeter:
        """Start listening; returns once the sound flows steadily (TimeoutError otherwise), at `ready_at`.

        The first decoded AAC frame lacks its overlap (a few dB low), so judge the sound from
        `ready_at` on: after a few windows (and the first video packet, with `video=True`).
        """
        self._stopping.clear()
        for kind in ("audio", "video") if self.video else ("audio",):
            thread = threading.Thread(target=self._serve, args=(kind,), name=f"meter-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout
        try:
            first = self.wait_for(lambda w: True, after=0.0, timeout=timeout, what="the first audio window")
            if self.video:
                wait_until(lambda: self._video_pts, max(0.0, deadline - time.monotonic()), what="the first video packet")
            self.wait_for(lambda w: w.arrived > first.arrived + 0.05, after=first.arrived,
                          timeout=max(0.0, deadline - time.monotonic()), what="steady sound")
        except TimeoutError:
            self.close()
            raise
        self.ready_at = time.monotonic()
        return self

    def close(self) -> None:
        with self._spawning:  # so no viewer is spawned after this
            self._stopping.set()
            children = list(self._children.values())
        for child in children:
            proc.kill(child)
        for thread in self._threads:
            thread.join(3.0)
        self._threads = []

    stop = close

    # --- readings ---------------------------------------------------------------------------------
    def windows(self, since: float = 0.0, until: float = math.inf) -> list[AudioWindow]:
        """The windows that arrived in [since, until) (monotonic times)."""
        with self._cond:
            return [w for w in self._windows if since <= w.arrived < until]

    def video_pts(self, since: float = 0.0, until: float = math.inf) -> list[tuple[float, float]]:
        """(arrival, pts) of every video packet that arrived in [since, until)."""
        with self._cond:
            return [(at, pts) for at, pts in self._video_pts if since <= at < until]

    def loudest(self, since: float = 0.0, until: float = math.inf) -> float:
        """The highest window level (dBFS) that arrived in [since, until); -inf when none (or all silent)."""
        return max((w.dbfs for w in self.windows(since, until)), default=-math.inf)

    def wait_for(self, predicate: Callable[[AudioWindow], bool], after: float, timeout: float,
                 what: str = "a matching window") -> AudioWindow:
        """The first window that arrived after `after` and satisfies `predicate`; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = 0
            while True:
                while index < len(self._windows):
                    window = self._windows[index]
                    index += 1
                    if window.arrived > after and predicate(window):
                        return window
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self._windows[-1] if self._windows else None
                    raise TimeoutError(f"not within {timeout:g} s: {what} (last window: {last}; "
                                       f"meter: {' | '.join(self.stderr_tail[-3:])})")
                self._cond.wait(remaining)

    def wait_level(self, loud: bool, after: float, timeout: float) -> float:
        """Arrival time of the first loud (> LOUD_DBFS) or silent (< SILENT_DBFS) window after `after`."""
        if loud:
            window = self.wait_for(lambda w: w.dbfs > LOUD_DBFS, after, timeout, f"a window above {LOUD_DBFS:g} dBFS")
        else:
            window = self.wait_for(lambda w: w.dbfs < SILENT_DBFS, after, timeout, f"a window below {SILENT_DBFS:g} dBFS")
        return window.arrived

    def discontinuities(self, since: float = 0.0, max_gap_s: float = 0.2, jitter_s: float = 0.05) -> list[str]:
        """Every break in what arrived since `since`: a timestamp leaping forward over `max_gap_s` or
        going back by more than `jitter_s`, in the audio or the video, or a viewer having had to
        reconnect. [] = unbroken. (Capture stamped with the wall clock, as ffmpeg stamps ALSA input,
        wobbles back by a few ms; a new publisher starts again from 0, seconds back.)"""
        found = []
        with self._cond:
            for kind, moments in self.connected_at.items():
                if any(at > since for at in moments[1:]):
                    found.append(f"the {kind} viewer reconnected ({len(moments)} connections)")
            tracks = (("audio", [(w.arrived, w.pts) for w in self._windows if w.arrived >= since]),
                      ("video", [(at, pts) for at, pts in self._video_pts if at >= since]))
        for name, points in tracks:
            for (_, before), (at, after) in zip(points, points[1:], strict=False):
                if after < before - jitter_s or after - before > max_gap_s:
                    found.append(f"{name} pts {before:.3f} -> {after:.3f} s (arrived at {at:.3f})")
        return found

    # --- the listening ffmpegs ----------------------------------------------------------------------
    def _serve(self, kind: str) -> None:
        # Spawned and waited on by this thread, so PDEATHSIG ties the child's life to it.
        while True:
            with self._spawning:
                if self._stopping.is_set():
                    return
                child = proc.spawn(self.command(kind), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                self._children[kind] = child
            with self._cond:
                self.connected_at[kind].append(time.monotonic())
                if kind == "audio":
                    self.connections += 1
            errors = threading.Thread(target=self._read_stderr, args=(child,), daemon=True)
            errors.start()
            (self._read_levels if kind == "audio" else self._read_packets)(child)
            child.wait()
            errors.join(1.0)
            self._stopping.wait(0.2)

    def _read_levels(self, child: subprocess.Popen) -> None:
        assert child.stdout is not None
        pts = math.nan
        for line in child.stdout:
            if line.startswith(b"frame:"):
                found = _PTS.search(line)
                pts = float(found.group(1)) if found else math.nan
            elif line.startswith(b"lavfi.astats.Overall.RMS_level="):
                arrived = time.monotonic()
                text = line.partition(b"=")[2].strip().decode()
                dbfs = -math.inf if text in ("-inf", "inf", "nan", "-nan") else float(text)
                with self._cond:
                    self._windows.append(AudioWindow(arrived, pts, dbfs))
                    self._cond.notify_all()

    def _read_packets(self, child: subprocess.Popen) -> None:
        """framecrc lines: `#tb 0: 1/1000` once, then `0, dts, pts, duration, size, crc` per packet."""
        assert child.stdout is not None
        time_base = 0.001
        for line in child.stdout:
            if line.startswith(b"#tb"):
                num, _, den = line.partition(b":")[2].strip().partition(b"/")
                time_base = int(num) / int(den)
            elif not line.startswith(b"#"):
                fields = line.split(b",")
                if len(fields) >= 3:
                    with self._cond:
                        self._video_pts.append((time.monotonic(), int(fields[2]) * time_base))

    def _read_stderr(self, child: subprocess.Popen) -> None:
        assert child.stderr is not None
        for line in child.stderr:
            if line.strip():
                self.stderr_tail = [*self.stderr_tail[-9:], line.decode(errors="replace").strip()]


def probe(url: str, timeout_s: float = 10.0, listen: bool = False) -> dict[str, Any]:
    """What ffprobe sees on `url`: {"video": {...}, "audio": {...}} (empty dicts when absent)."""
    if listen:
        url = f"{url}{'&' if '?' in url else '?'}mode=listener"
    cmd = ["ffprobe", "-hide_banner", "-loglevel", "error", "-rw_timeout", str(int(timeout_s * 1e6)),
           "-show_entries", "stream=codec_type,codec_name,width,height,sample_rate,profile",
           "-of", "json", url]
    if url.startswith("srt://"):
        cmd.remove("-rw_timeout")
        cmd.remove(str(int(timeout_s * 1e6)))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 5)
    streams = json.loads(result.stdout or "{}").get("streams", [])
    found: dict[str, Any] = {"video": {}, "audio": {}, "error": result.stderr.strip()}
    for stream in streams:
        found.setdefault(stream.get("codec_type"), {}).update(stream)
    return found


def snapshot(url: str, path: str, timeout_s: float = 10.0) -> bool:
    """Save one decoded frame of `url` (e.g. a site's uplink at the centre) as an image."""
    result = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", url,
                             "-frames:v", "1", path], capture_output=True, timeout=timeout_s)
    return result.returncode == 0 and os.path.exists(path)


class CentralMedia:
    """The demo's whole centre: nginx-rtmp for the sites' uplinks, an SRT program with a title on it.

        central = CentralMedia(workdir, title="Musrenbang").start()
        meeting.start body: program_url=central.program_url, ingest_url=central.ingest_url
        central.uplink("kalibaru")           -> {"publishing": True, "bytes_in": ..., "width": ...}
        central.save_uplink_frame("kalibaru", path)   -> a picture of what the site sends
        central.close()
    """

    def __init__(self, workdir: str, title: str = "Program rapat dari pusat", size: tuple[int, int] = (1280, 720)) -> None:
        from appliance.media import screens  # Pillow; only needed here

        os.makedirs(workdir, exist_ok=True)
        overlay = os.path.join(workdir, "program-title.png")
        screens.banner(title, size[0]).save(overlay)
        self.rtmp = RtmpServer()
        self.program = SrtProgram(video=f"testsrc2=size={size[0]}x{size[1]}:rate=30", overlay_png=overlay)

    def start(self) -> CentralMedia:
        self.rtmp.start()
        self.program.start()
        return self

    @property
    def program_url(self) -> str:
        return self.program.url

    @property
    def ingest_url(self) -> str:
        return self.rtmp.url("{site}")

    def uplink(self, site: str) -> dict[str, Any]:
        return self.rtmp.streams().get(site, {"publishing": False})

    def save_uplink_frame(self, site: str, path: str) -> bool:
        return snapshot(self.rtmp.url(site), path)

    def close(self) -> None:
        self.program.stop()
        self.rtmp.close()


def demo_media_toml(frames_dir: str, output: str | None = None) -> str:
    """The [camera] and [display] sections for a demo site: test pattern up, program on a window or on disk.

    A window where there is an X display and VLC's X11 output plugin (vlc-plugin-video-output),
    otherwise headless with frames saved as `frames_dir/display.jpg`.
    """
    if output is None:
        x11_plugin = "/usr/lib/x86_64-linux-gnu/vlc/plugins/video_output/libxcb_x11_plugin.so"
        has_plugin = any(os.path.exists(x11_plugin.replace("x86_64-linux-gnu", arch))
                         for arch in ("x86_64-linux-gnu", "aarch64-linux-gnu", "arm-linux-gnueabihf"))
        output = "x11" if os.environ.get("DISPLAY") and has_plugin else "headless"
    return (f'[camera]\nbackend = "testsrc"\n'
            f'[display]\nbackend = "vlc"\noutput = "{output}"\nframes_dir = "{frames_dir}"\n')
