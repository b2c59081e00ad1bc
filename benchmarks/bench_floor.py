"""The floor of a moderated meeting: how fast a raised hand reaches the console, and how fast a grant
or a revoke is heard (or no longer heard) at the centre's media server.

- press -> `floor.requested` at the console (target ≤ 150 ms median, loopback). A real daemon in this
  process, its mock GPIO button released by the benchmark (the moment a short press counts), the
  event taken off a console-side MQTT subscription. Peer, same run, same broker: a bare paho
  publish to the same subscriber (the transport's own floor).
- grant ack -> audible at the server, revoke ack -> silent (targets ≤ 300 ms median each): a real
  daemon process with the testsrc camera pushing to nginx-rtmp, signed commands through Mosquitto,
  the level measured on the stream the server relays (`AudioMeter`). Peers, same run
  (`bench_media.mute_toggles`): the uplink told directly (`set_microphone`, no MQTT, no core), and
  under it the floor no mute can beat: a gain that changes inside ffmpeg by itself, heard at the
  server (the AAC encoder's delay, FLV, RTMP, nginx and the listener).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.config import load
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance.daemon import Daemon
from appliance_dev.broker import Mosquitto
from appliance_dev.central_media import AudioMeter, RtmpServer
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from appliance_dev.waiting import wait_until
from benchmarks.bench_media import mute_toggles
from tests.support.site import ConsoleKey, meeting_body

PRESSES = 40
TOGGLES = 10
TARGETS_MS = {"press_to_requested": 150.0, "grant_to_audible": 300.0, "revoke_to_silent": 300.0}


def _in_meeting_daemon(workdir: Path, broker: Mosquitto, key: ConsoleKey, site: str) -> Daemon:
    daemon = Daemon(load([str(site_config(workdir, site, broker.url, key.public_b64))]))
    daemon.start()
    wait_until(lambda: daemon.status()["broker_connected"], 10, what="the daemon's broker connection")
    return daemon


def press_to_requested(workdir: Path, broker: Mosquitto, key: ConsoleKey, count: int) -> dict[str, list[float]]:
    site = "floor-press"
    console = MqttRecorder(broker.port, site_topic(DEFAULT_TOPIC_PREFIX, site, "event"), "bench/floor/peer")
    daemon = _in_meeting_daemon(workdir, broker, key, site)
    try:
        command = key.command("meeting.start", {**meeting_body("bench-floor"), "auto_join": True}, to=[site])
        console.publish(site_topic(DEFAULT_TOPIC_PREFIX, site, "cmd"), command)
        wait_until(lambda: daemon.status()["state"] == "in_meeting", 10, what="the site in the meeting")
        pin = daemon.panel.button.pin
        times: dict[str, list[float]] = {"device": [], "peer": []}
        for index in range(count):
            wanted = "floor.requested" if index % 2 == 0 else "floor.cancelled"
            pin.drive_low()
            time.sleep(0.1)
            mark = console.mark()
            started = time.perf_counter()
            pin.drive_high()  # a short press counts on release
            console.wait_for(lambda _, event, wanted=wanted: isinstance(event, dict) and event.get("type") == wanted,
                             5, after=mark)
            times["device"].append(time.perf_counter() - started)
            mark = console.mark()
            started = time.perf_counter()
            console.publish_nowait("bench/floor/peer", {"type": "peer", "n": index})
            console.wait_for(lambda topic, event: topic == "bench/floor/peer", 5, after=mark)
            times["peer"].append(time.perf_counter() - started)
            time.sleep(daemon.core.settings.floor_debounce_s)  # the next press must not be a bounce
        return times
    finally:
        daemon.stop()
        console.close()


def grant_toggles(workdir: Path, broker: Mosquitto, key: ConsoleKey, count: int) -> dict[str, list[float]]:
    """Seconds from each grant's (revoke's) ack at the console until the server hears the site (silence)."""
    site = "floor-audio"
    overlay = workdir / "camera.toml"
    overlay.write_text('[camera]\nbackend = "testsrc"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\n')
    server = RtmpServer().start()
    daemon = DaemonProcess(site_config(workdir, site, broker.url, key.public_b64), overlays=[overlay]).start()
    console = MqttRecorder(broker.port, site_topic(DEFAULT_TOPIC_PREFIX, site, "ack"))
    meter: AudioMeter | None = None
    topic = site_topic(DEFAULT_TOPIC_PREFIX, site, "cmd")
    times: dict[str, list[float]] = {"grant": [], "revoke": []}
    try:
        daemon.wait_connected()
        body = {**meeting_body("bench-audio"), "ingest_url": server.url("{site}"), "auto_join": True}
        console.publish(topic, key.command("meeting.start", body, to=[site]))
        daemon.wait_status(lambda status: status["state"] == "in_meeting", 20)
        meter = AudioMeter(server.url(site), video=False).start()
        publisher = server.streams()[site]["publisher"]
        for _ in range(count):
            for command_type, loud in (("floor.grant", True), ("floor.revoke", False)):
                time.sleep(random.uniform(0.3, 0.5))  # settle, and a new phase against the 21 ms audio frames
                command = key.command(command_type, {"meeting_id": "bench-audio"}, to=[site])
                mark = console.mark()
                console.publish_nowait(topic, command)
                ack = console.ack_for(command["id"], site, after=mark)
                acked = time.monotonic()
                if not ack["ok"]:
                    raise RuntimeError(f"{command_type} refused: {ack}")
                heard = meter.wait_level(loud=loud, after=acked, timeout=5)
                times["grant" if loud else "revoke"].append(heard - acked)
        if server.streams()[site]["publisher"] != publisher:
            raise RuntimeError("the uplink reconnected while the floor changed hands")
        return times
    finally:
        if meter is not None:
            meter.close()
        console.close()
        daemon.stop()
        server.close()


def main(argv: list[str]) -> int:
    key = ConsoleKey()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "broker").start()
        try:
            press = press_to_requested(workdir, broker, key, PRESSES)
            audio = grant_toggles(workdir, broker, key, TOGGLES)
        finally:
            broker.stop()
        direct = mute_toggles(workdir, TOGGLES)
    ms = {name: statistics.median(values) * 1000 for name, values in {**audio, **direct}.items()}
    results = {"press_to_requested": statistics.median(press["device"]) * 1000,
               "grant_to_audible": ms["grant"], "revoke_to_silent": ms["revoke"]}
    peer_ms = statistics.median(press["peer"]) * 1000
    print(f"press -> floor.requested at the console ({PRESSES}): median {results['press_to_requested']:.2f} ms, "
          f"max {max(press['device']) * 1000:.2f} ms")
    print(f"  peer, bare publish -> the same subscriber: median {peer_ms:.2f} ms; "
          f"ratio {results['press_to_requested'] / peer_ms:.2f}")
    print(f"floor commands at 320x180 ({TOGGLES} grants and revokes, level on the stream nginx relays):")
    for name, direct_name, label in (("grant", "unmute", "grant ack -> audible"), ("revoke", "mute", "revoke ack -> silent")):
        print(f"  {label}: median {ms[name]:.0f} ms (max {max(audio[name]) * 1000:.0f}); "
              f"uplink told directly {ms[direct_name]:.0f} ms (ratio {ms[name] / ms[direct_name]:.2f}); "
              f"encoder floor {ms[direct_name + '_floor']:.0f} ms (ratio {ms[name] / ms[direct_name + '_floor']:.2f})")
    failures = [f"{name} {results[name]:.1f} ms > {limit:g} ms" for name, limit in TARGETS_MS.items()
                if results[name] > limit]
    print("targets:", "all met" if not failures else "MISSED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
