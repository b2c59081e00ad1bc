"""`make demo`: a local broker, one simulated site and a console-side script, all on this machine.

The script announces a signed (moderated) meeting, presses the (mock) button to join, raises the
site's hand, grants and revokes the floor while the centre listens to the site's sound, and shows
every step live: state, LED, acks, events and the level the centre hears. `--interactive` lets a
person press the button with Enter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from appliance.adapters.control import NoDaemon, request
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, build_command, site_topic
from appliance.core.signing import generate_private_key, public_key_to_base64
from appliance_dev.broker import Mosquitto
from appliance_dev.central_media import AudioMeter, CentralMedia, demo_media_toml
from appliance_dev.recorder import Message, MqttRecorder
from appliance_dev.site_process import DaemonProcess
from appliance_dev.waiting import wait_until

SITE = "kalibaru"
COLOURS = {"state": "36", "ack": "32", "event": "35", "led": "33", "console": "1", "telemetry": "2", "centre": "34"}


class Screen:
    """Timestamped, coloured lines (colour only on a terminal)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.colour = sys.stdout.isatty()
        self.lock = threading.Lock()

    def line(self, tag: str, text: str) -> None:
        stamp = f"{time.monotonic() - self.start:6.2f}s"
        label = f"{tag:<9}"
        if self.colour:
            label = f"\033[{COLOURS.get(tag, '0')}m{label}\033[0m"
        with self.lock:
            print(f"{stamp} {label} {text}", flush=True)


def write_site_config(workdir: Path, port: int, public_key: str, frames_dir: Path) -> Path:
    config = workdir / "site.toml"
    config.write_text(f"""[site]
id = "{SITE}"
name = "Kecamatan Kalibaru"
kind = "kecamatan"
[broker]
url = "mqtt://127.0.0.1:{port}"
[security]
console_public_key = "{public_key}"
allowed_media_hosts = ["127.0.0.1"]
[panel]
backend = "mock"
{demo_media_toml(str(frames_dir))}[telemetry]
interval_s = 15
[paths]
state_dir = "{workdir / 'state'}"
control_socket = "{workdir / 'control.sock'}"
""")
    return config


class ConsoleSide:
    """What the central console does, in miniature: sign, publish, and watch the site's topics."""

    def __init__(self, port: int, screen: Screen) -> None:
        self.key = generate_private_key()
        self.screen = screen
        self.recorder = MqttRecorder(port, site_topic(DEFAULT_TOPIC_PREFIX, SITE, "#"), client_id="demo-console",
                                     on_message=self._show)

    @property
    def public_key(self) -> str:
        return public_key_to_base64(self.key.public_key())

    @property
    def seen(self) -> list[tuple[str, dict[str, Any]]]:
        """What the site said, in order, as (kind, payload): state, ack, event, telemetry..."""
        return [(kind_of(message.topic), message.payload) for message in self.recorder.messages if from_site(message)]

    def _show(self, message: Message) -> None:
        if from_site(message):
            self.screen.line(kind_of(message.topic), summarise(kind_of(message.topic), message.payload))

    def send(self, command_type: str, body: dict[str, Any]) -> dict[str, Any]:
        command = build_command(command_type, body, to=[SITE], issued_at=time.time(), ttl_s=600, signing_key=self.key)
        self.screen.line("console", f"send {command_type} {command['id']} (signed, Ed25519)")
        self.resend(command)
        return command

    def resend(self, command: dict[str, Any]) -> None:
        self.recorder.publish(site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd"), json.dumps(command))

    def wait(self, kind: str, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The first message of `kind` from the site that matches, since the start."""
        return self.recorder.wait_for(lambda topic, payload: kind_of(topic) == kind and isinstance(payload, dict)
                                      and predicate(payload), timeout)[1]

    def close(self) -> None:
        self.recorder.close()


def kind_of(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


def from_site(message: Message) -> bool:
    """Not the commands the console sent itself, and only JSON (a cleared retained message is empty)."""
    return kind_of(message.topic) != "cmd" and isinstance(message.payload, dict)


def summarise(kind: str, payload: dict[str, Any]) -> str:
    if kind == "state":
        if not payload.get("online"):
            return "site OFFLINE (last will)"
        meeting = payload.get("meeting") or {}
        health = payload["health"]
        floor = (payload.get("floor") or {}).get("status", "-")
        return (f"{payload['state']:<18} meeting={meeting.get('title', '-')}  floor={floor}  broker={health['broker']}  "
                f"uplink={health['uplink']}  program={health['program']}")
    if kind == "ack":
        outcome = "ok" if payload["ok"] else f"REFUSED {payload['error']['code']}: {payload['error']['message']}"
        return f"{payload['type']} {payload['id']}: {outcome} (state {payload.get('state')})"
    if kind == "event":
        extra = {k: v for k, v in payload.items() if k not in ("v", "site", "at", "type")}
        return f"{payload['type']} {extra}"
    if kind == "telemetry":
        return f"uptime {payload['uptime_s']} s, load {payload['load1']}, mem {payload['mem_available_mb']} MB"
    return json.dumps(payload)[:120]


class LedWatcher(threading.Thread):
    """Polls the daemon's status over its control socket and prints every LED change."""

    def __init__(self, socket_path: str, screen: Screen) -> None:
        super().__init__(daemon=True)
        self.socket_path, self.screen = socket_path, screen
        self.stop = threading.Event()
        self.history: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                pattern = request(self.socket_path, {"cmd": "status"}, timeout=2)["status"]["led"]
            except (NoDaemon, KeyError):
                continue
            if not self.history or self.history[-1] != pattern:
                self.history.append(pattern)
                self.screen.line("led", LED_WORDS.get(pattern, pattern))


LED_WORDS = {
    "off": "off (idle, connected)", "blip": "blip every 3 s (broker unreachable)",
    "slow_blink": "slow blink 1 Hz (a meeting is available: press the button)",
    "fast_blink": "fast blink (joining / leaving)", "on": "steady on (in the meeting)",
    "requested": "on with a quick double flicker (hand raised: waiting for the floor)",
    "double_blink": "double blink (something is broken)",
}


def press(socket_path: str, screen: Screen, hold: float | None = None) -> None:
    body: dict[str, Any] = {"cmd": "press"}
    if hold:
        body["hold"] = hold
    screen.line("console", f"{'hold' if hold else 'press'} the button{f' for {hold:g} s' if hold else ''} (mock GPIO pin)")
    reply = request(socket_path, body)
    screen.line("console", f"  -> {reply.get('message', reply.get('error'))}, state {reply.get('state')}")


def run_demo(interactive: bool, keep: bool, output: Path) -> int:
    screen = Screen()
    workdir = Path(tempfile.mkdtemp(prefix="rapat-demo-"))
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    try:
        broker = Mosquitto(workdir / "broker").start()
    except (RuntimeError, TimeoutError) as exc:  # not installed, or it would not start
        sys.exit(f"demo: {exc}")
    port = broker.port
    central = CentralMedia(str(workdir / "central"), title="Musrenbang Kecamatan").start()
    screen.line("centre", f"central media: program {central.program_url} (SRT), uplinks {central.ingest_url} (RTMP)")
    console = ConsoleSide(port, screen)
    config = write_site_config(workdir, port, console.public_key, output)
    screen.line("console", f"broker on 127.0.0.1:{port}; site config {config}")
    daemon = DaemonProcess(config, log_path=workdir / "daemon.log").start(wait=False)  # up when it says "idle"
    socket_path = daemon.socket
    leds = LedWatcher(socket_path, screen)
    try:
        console.wait("state", lambda p: p.get("online") and p["state"] == "idle")
        leds.start()
        wait_until(lambda: leds.history, 5, what="the first LED pattern")
        announcement = console.send("meeting.start", {
            "meeting_id": "musrenbang-2026", "title": "Musrenbang Kecamatan",
            "program_url": central.program_url, "ingest_url": central.ingest_url, "auto_join": False,
        })
        console.wait("state", lambda p: p.get("state") == "meeting_available")
        screen.line("console", "an attacker replays the same signed command:")
        console.resend(announcement)
        console.wait("ack", lambda p: p.get("error", {}).get("code") == "replayed")
        time.sleep(2.2)  # long enough to watch the slow blink
        if interactive:
            interactive_loop(socket_path, screen)
        else:
            press(socket_path, screen)
            console.wait("state", lambda p: p.get("state") == "in_meeting", timeout=30)
            wait_until(lambda: central.uplink(SITE)["publishing"] and (output / "program.jpg").exists(), 20, interval=0.2,
                       what="the program on the site's screen and the site's uplink at the centre")
            screen.line("centre", f"uplink from {SITE}: {central.uplink(SITE)}")
            central.save_uplink_frame(SITE, str(output / "uplink.jpg"))
            floor_exchange(console, central, socket_path, screen)
            press(socket_path, screen, hold=3.2)
            console.wait("event", lambda p: p.get("type") == "meeting.left")
        console.send("meeting.end", {"meeting_id": "musrenbang-2026"})
        console.wait("state", lambda p: p.get("state") == "idle" and p.get("meeting") is None)
        wait_until(lambda: leds.history[-1] == "off", 5, what="the LED to go off")
    except TimeoutError as exc:
        screen.line("console", f"DEMO FAILED: {exc}; daemon log: {workdir / 'daemon.log'}")
        return 1
    finally:
        leds.stop.set()
        daemon.stop()
        with contextlib.suppress(TimeoutError):  # the site's goodbye, for the summary
            console.wait("state", lambda p: not p.get("online"), timeout=5)
        console.close()
        central.close()
        broker.stop()
    print_summary(console, leds, screen, output)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir} (site.toml, daemon.log, state/)")
    return 0


FLOOR_STEPS: list[str] = []  # what the centre heard at each step of the floor, for the summary


def floor_exchange(console: ConsoleSide, central: CentralMedia, socket_path: str, screen: Screen) -> None:
    """Join muted, ask, granted, speak, revoked: with the level the centre measures on the site's stream."""
    meter = AudioMeter(central.rtmp.url(SITE), video=False).start()
    try:
        began = time.monotonic()
        time.sleep(1.0)
        heard = meter.loudest(since=began)
        screen.line("centre", f"{SITE} listens (moderated meeting): its microphone is muted, the centre hears "
                              f"{heard:.0f} dBFS")
        FLOOR_STEPS.append(f"listening ({heard:.0f} dBFS)")
        press(socket_path, screen)
        console.wait("event", lambda p: p.get("type") == "floor.requested")
        FLOOR_STEPS.append("requested")
        time.sleep(1.5)  # long enough to see the LED flicker
        console.send("floor.grant", {"meeting_id": "musrenbang-2026"})
        acked = time.monotonic()
        console.wait("ack", lambda p: p.get("type") == "floor.grant" and p.get("ok"))
        loud = meter.wait_level(loud=True, after=acked, timeout=5)
        time.sleep(1.0)
        heard = meter.loudest(since=loud)
        screen.line("centre", f"{SITE} speaks: the centre hears it at {heard:.0f} dBFS, "
                              f"{1000 * (loud - acked):.0f} ms after the grant; same stream, no reconnect")
        FLOOR_STEPS.append(f"speaking ({heard:.0f} dBFS)")
        console.send("floor.revoke", {"meeting_id": "musrenbang-2026"})
        acked = time.monotonic()
        console.wait("ack", lambda p: p.get("type") == "floor.revoke" and p.get("ok"))
        silent = meter.wait_level(loud=False, after=acked, timeout=5)
        time.sleep(0.5)
        heard = meter.loudest(since=silent + 0.1)
        screen.line("centre", f"floor taken back: silent again ({heard:.0f} dBFS) "
                              f"{1000 * (silent - acked):.0f} ms after the revoke")
        FLOOR_STEPS.append(f"listening ({heard:.0f} dBFS)")
        gaps = meter.discontinuities(since=began)
        screen.line("centre", "the stream stayed unbroken throughout" if not gaps else f"stream broken: {gaps}")
    finally:
        meter.close()


def interactive_loop(socket_path: str, screen: Screen) -> None:
    print("\n  Enter = press the button   h + Enter = hold it (leave)   q + Enter = end the meeting\n", flush=True)
    for line in sys.stdin:
        choice = line.strip().lower()
        if choice == "q":
            return
        press(socket_path, screen, hold=3.2 if choice == "h" else None)


def print_summary(console: ConsoleSide, leds: LedWatcher, screen: Screen, output: Path) -> None:
    states: list[str] = []
    for kind, payload in console.seen:
        if kind == "state" and (not states or states[-1] != payload["state"]):
            states.append(payload["state"])
    acks = [p for kind, p in console.seen if kind == "ack"]
    events = [p["type"] for kind, p in console.seen if kind == "event"]
    print("\nSummary", flush=True)
    print(f"  states seen : {' -> '.join(states)}")
    print(f"  LED         : {' -> '.join(leds.history)}")
    print(f"  acks        : {sum(a['ok'] for a in acks)} ok, {sum(not a['ok'] for a in acks)} refused")
    print(f"  events      : {', '.join(events)}")
    if FLOOR_STEPS:
        print(f"  floor       : {' -> '.join(FLOOR_STEPS)}")
    print(f"  time        : {time.monotonic() - screen.start:.1f} s")
    print(f"  pictures    : {output}/")
    for path in sorted(output.glob("*.jpg")):
        what = PICTURES.get(path.name, "the screen village staff saw" if path.name.startswith("screen-") else "")
        print(f"                {path.name:<34} {what}")


PICTURES = {
    "program.jpg": "the meeting as the site's screen showed it",
    "uplink.jpg": "the site's camera as the centre received it",
    "display.jpg": "the screen's last picture",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance_dev.demo", description=__doc__)
    parser.add_argument("--interactive", action="store_true", help="press the button yourself with Enter")
    parser.add_argument("--keep", action="store_true", help="keep the working directory and logs")
    parser.add_argument("--output", type=Path, default=Path("demo-output"),
                        help="where the screen, program and uplink pictures go (default: ./demo-output)")
    args = parser.parse_args(argv)
    return run_demo(args.interactive, args.keep, args.output.resolve())


if __name__ == "__main__":
    sys.exit(main())
