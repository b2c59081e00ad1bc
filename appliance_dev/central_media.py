"""A small local "central media" for the demo and the tests, on 127.0.0.1 only.

- `RtmpServer`: nginx + libnginx-mod-rtmp taking the sites' uplinks (`rtmp://.../live/<site>`), with
  its stat page, so one can see which sites are publishing.
- `SrtProgram`: the meeting's program as MPEG-TS over SRT (the low-latency path for VLC, see
  docs/central-media.md). ffmpeg's SRT listener serves one caller and exits when it leaves, so a
  supervisor thread restarts it, which is what a real server (MediaMTX, SRS) does for free.

In production these are one MediaMTX or SRS; nothing here runs on a Pi.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

from appliance.media import proc
from appliance_dev.localnet import free_port, wait_for_port, wait_for_udp_port

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
        """Streams nginx has right now: name -> {publishing, bytes_in, bw_in, width, height}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/stat", timeout=2) as answer:
            root = ET.fromstring(answer.read())
        found = {}
        for stream in root.iter("stream"):
            video = stream.find("meta/video")
            found[stream.findtext("name", "")] = {
                "publishing": stream.find("publishing") is not None,
                "bytes_in": int(stream.findtext("bytes_in", "0")),
                "bw_in": int(stream.findtext("bw_in", "0")),
                "width": int(video.findtext("width", "0")) if video is not None else 0,
                "height": int(video.findtext("height", "0")) if video is not None else 0,
            }
        return found

    def publishing(self, name: str) -> bool:
        return self.streams().get(name, {}).get("publishing", False)


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
