"""The device daemon: idle footprint, start-up to READY=1, and command -> ack round trip."""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from benchmarks.procstat import cpu_seconds, rss_mb
from tests.support.broker import Mosquitto
from tests.support.site import ConsoleKey, DaemonProcess, site_config

TARGETS = {"rss_mb": 40.0, "cpu_percent": 1.0, "ready_s": 1.5, "rtt_ratio": 1.5}


def idle_footprint(workdir: Path, broker: Mosquitto, key: ConsoleKey, seconds: float) -> dict[str, float]:
    daemon = DaemonProcess(site_config(workdir, "idle-site", broker.url, key.public_b64)).start()
    try:
        daemon.wait_status(lambda s: s["broker_connected"])
        time.sleep(2)  # let start-up work settle before measuring idle
        pid = daemon.process.pid
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu = cpu_seconds(pid) - cpu_before
        return {"rss_mb": rss_mb(pid), "cpu_percent": 100 * cpu / (time.monotonic() - wall_before)}
    finally:
        daemon.stop()


def time_to_ready(workdir: Path, broker: Mosquitto, key: ConsoleKey, runs: int) -> list[float]:
    durations = []
    for run in range(runs):
        notify = workdir / f"notify-{run}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(notify))
            sock.settimeout(10)
            config = site_config(workdir, f"ready-{run}", broker.url, key.public_b64)
            daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify)})
            started = time.monotonic()
            daemon.start(wait=False)
            try:
                while b"READY=1" not in sock.recv(4096):
                    pass
                durations.append(time.monotonic() - started)
            finally:
                daemon.stop()
    return durations


def no_delay(client, userdata, sock) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Pinger:
    """Publishes on one topic and times the answer on another, one at a time."""

    def __init__(self, port: int, answer_topic: str) -> None:
        self.answered = threading.Event()
        self.expect = ""
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_socket_open = no_delay
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(answer_topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client, userdata, message) -> None:
        if self.expect.encode() in message.payload:
            self.answered.set()

    def round_trip(self, topic: str, payload: bytes, expect: str) -> float:
        self.answered.clear()
        self.expect = expect
        started = time.perf_counter()
        self.client.publish(topic, payload, qos=1)
        if not self.answered.wait(5):
            raise TimeoutError(f"no answer containing {expect!r}")
        return time.perf_counter() - started

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_echo(port: int) -> paho.Client:
    """The baseline: a bare paho client that answers every message at once, doing nothing else."""
    echo = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    echo.on_socket_open = no_delay
    echo.on_message = lambda client, userdata, message: client.publish("bench/echo/out", message.payload, qos=1)
    echo.connect("127.0.0.1", port)
    echo.subscribe("bench/echo/in", qos=1)
    echo.loop_start()
    return echo


def round_trips(workdir: Path, broker: Mosquitto, key: ConsoleKey, count: int) -> tuple[list[float], list[float]]:
    daemon = DaemonProcess(site_config(workdir, "rtt-site", broker.url, key.public_b64)).start()
    echo = start_echo(broker.port)
    device = Pinger(broker.port, "rapat/v1/site/rtt-site/ack")
    bare = Pinger(broker.port, "bench/echo/out")
    try:
        daemon.wait_status(lambda s: s["broker_connected"])
        device_times, bare_times = [], []
        for index in range(count):  # interleaved, so both see the same machine load
            command = key.command("ping", to=["rtt-site"], command_id=f"bench-{index}")
            device_times.append(device.round_trip("rapat/v1/site/rtt-site/cmd", json.dumps(command).encode(), command["id"]))
            bare_times.append(bare.round_trip("bench/echo/in", json.dumps(command).encode(), command["id"]))
        return device_times, bare_times
    finally:
        device.close()
        bare.close()
        echo.loop_stop()
        daemon.stop()


def main(argv: list[str]) -> int:
    idle_seconds = float(os.environ.get("BENCH_IDLE_S", "60"))
    key = ConsoleKey()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "broker").start()
        try:
            ready = time_to_ready(workdir, broker, key, runs=10)
            device, bare = round_trips(workdir, broker, key, count=200)
            idle = idle_footprint(workdir, broker, key, idle_seconds)
        finally:
            broker.stop()
    results = {
        "rss_mb": idle["rss_mb"],
        "cpu_percent": idle["cpu_percent"],
        "ready_s": statistics.median(ready),
        "rtt_ratio": statistics.median(device) / statistics.median(bare),
    }
    print(f"idle daemon over {idle_seconds:g} s: RSS {idle['rss_mb']:.1f} MB, CPU {idle['cpu_percent']:.2f} % of one core")
    print(f"start -> READY=1 (10 runs): median {statistics.median(ready):.3f} s, max {max(ready):.3f} s")
    print(f"command -> ack (200): median {statistics.median(device) * 1000:.2f} ms, p95 "
          f"{sorted(device)[189] * 1000:.2f} ms; bare paho echo median {statistics.median(bare) * 1000:.2f} ms; "
          f"ratio {results['rtt_ratio']:.2f}")
    failures = [f"{name} {results[name]:.2f} > {limit}" for name, limit in TARGETS.items() if results[name] > limit]
    print("targets:", "all met" if not failures else "MISSED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
