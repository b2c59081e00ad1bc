"""The camera uplink against real servers: nginx-rtmp, an SRT listener, ffprobe."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from appliance.core.io import HealthReport, SelftestCheckDone
from appliance.media.testsrc import TestsrcUplink
from appliance_dev.central_media import probe
from appliance_dev.localnet import free_port, wait_for_udp_port
from appliance_dev.waiting import wait_until
from tests.media.conftest import HEIGHT, WIDTH, assert_h264_and_aac


def _uplink(make_config, recorder, **camera):
    uplink = TestsrcUplink(make_config(camera=camera), recorder)
    uplink.open()
    return uplink


def test_join_pushes_h264_and_aac_of_the_configured_size_over_rtmp(make_config, recorder, rtmp_server):
    uplink = _uplink(make_config, recorder)
    try:
        uplink.start(rtmp_server.url("kalibaru"))
        recorder.wait_status("uplink", "live", 10)
        assert_h264_and_aac(rtmp_server.url("kalibaru"))
        assert recorder.statuses("uplink")[:2] == ["starting", "live"]
        health = [event for _, event in recorder.events if isinstance(event, HealthReport)]
        assert health and health[0].component == "camera" and health[0].value == "ok"
    finally:
        uplink.close()
    assert recorder.statuses("uplink")[-1] == "idle"


def test_srt_ingest_carries_the_same_stream(make_config, recorder):
    port = free_port()
    url = f"srt://127.0.0.1:{port}"
    seen: dict = {}
    # The centre's side: ffprobe listening for the site's SRT call.
    listener = threading.Thread(target=lambda: seen.update(probe(url, timeout_s=15, listen=True)))
    listener.start()
    wait_for_udp_port(port)
    uplink = _uplink(make_config, recorder)
    try:
        uplink.start(url)
        listener.join(20)
        assert seen.get("video", {}).get("codec_name") == "h264", seen
        assert (seen["video"].get("width"), seen["video"].get("height")) == (WIDTH, HEIGHT)
        assert seen.get("audio", {}).get("codec_name") == "aac", seen
        assert "live" in recorder.statuses("uplink")
    finally:
        uplink.close()


def test_server_gone_and_back_is_retried_without_a_command(make_config, recorder, rtmp_server):
    uplink = _uplink(make_config, recorder)
    try:
        uplink.start(rtmp_server.url("kalibaru"))
        recorder.wait_status("uplink", "live", 10)
        killed = time.monotonic()
        rtmp_server.stop()
        retry = recorder.wait_status("uplink", "retrying", 5, after=killed)
        assert "ffmpeg" in retry.detail and "attempt" in retry.detail
        rtmp_server.start()  # same ports
        recorder.wait_status("uplink", "live", 40, after=killed)
        assert rtmp_server.publishing("kalibaru")
    finally:
        uplink.close()


def test_dead_encoder_is_noticed_and_restarted(make_config, recorder, rtmp_server):
    uplink = _uplink(make_config, recorder)
    try:
        uplink.start(rtmp_server.url("kalibaru"))
        recorder.wait_status("uplink", "live", 10)
        child = uplink._session.child
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        retry = recorder.wait_status("uplink", "retrying", 3, after=killed)
        assert "exited" in retry.detail
        recorder.wait_status("uplink", "live", 30, after=killed)
    finally:
        uplink.close()


def test_leave_ends_the_stream_at_the_server_within_2_s(make_config, recorder, rtmp_server):
    uplink = _uplink(make_config, recorder)
    try:
        uplink.start(rtmp_server.url("kalibaru"))
        recorder.wait_status("uplink", "live", 10)
        assert rtmp_server.publishing("kalibaru")
        stopped = time.monotonic()
        uplink.stop()
        wait_until(lambda: not rtmp_server.publishing("kalibaru"), 2.0, what="the stream to end at the server")
        recorder.wait_status("uplink", "idle", 2.0, after=stopped)
    finally:
        uplink.close()


def test_unsupported_ingest_url_fails_at_once(make_config, recorder):
    uplink = _uplink(make_config, recorder)
    try:
        uplink.start("http://127.0.0.1:1/live/kalibaru")
        failed = recorder.wait_status("uplink", "failed", 3)
        assert "rtmp://" in failed.detail
    finally:
        uplink.close()


def test_the_pusher_dies_with_a_killed_daemon(make_config, rtmp_server, tmp_path):
    """SIGKILL leaves no time to clean up: PR_SET_PDEATHSIG must take ffmpeg down with the daemon."""
    config = make_config()
    script = tmp_path / "daemon.py"
    script.write_text(
        "import sys, time\n"
        "from appliance.config import load\n"
        "from appliance.media.testsrc import TestsrcUplink\n"
        f"uplink = TestsrcUplink(load([{config.files[0]!r}]), lambda event: None)\n"
        "uplink.open()\n"
        f"uplink.start({rtmp_server.url('kalibaru')!r})\n"
        "while uplink._session.child is None: time.sleep(0.05)\n"
        "print(uplink._session.child.pid, uplink._workdir, flush=True)\n"
        "time.sleep(60)\n")
    # Its microphone control socket goes where systemd's RuntimeDirectory would be: here, cleaned with tmp_path.
    runtime = tmp_path / "run"
    runtime.mkdir()
    daemon = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RUNTIME_DIRECTORY": str(runtime)})
    workdir = ""
    try:
        pid, workdir = daemon.stdout.readline().split()
        pusher = int(pid)
        assert _alive(pusher)
        daemon.kill()
        daemon.wait(5)
        wait_until(lambda: not _alive(pusher), 3, what="ffmpeg to die with its parent")
    finally:
        daemon.kill()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)  # a SIGKILLed process cannot tidy up


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only unreaped
    except FileNotFoundError:
        return False


def test_selftest_probe_counts_encoded_frames(make_config, recorder):
    uplink = _uplink(make_config, recorder)
    try:
        ok, said = uplink.probe(1.5)
        assert ok, said
        assert said.code == "selftest.camera.frames" and said.params["frames"] >= 15
        assert f"{WIDTH}x{HEIGHT}" in said.text("en") and "bingkai dikodekan" in said.text("id")
    finally:
        uplink.close()


def test_selftest_camera_probe_runs_off_the_loop_and_posts_its_result(make_config, recorder):
    uplink = _uplink(make_config, recorder)
    try:
        started = time.monotonic()
        uplink.run_probe(1.5)
        assert time.monotonic() - started < 0.5  # the loop thread is not held for the probe
        done = recorder.wait_for(lambda event: isinstance(event, SelftestCheckDone), 15)
        assert done.name == "camera" and done.outcome["ok"] is True and done.outcome["duration_s"] >= 1.5
    finally:
        uplink.close()
