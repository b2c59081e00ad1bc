"""The device daemon: idle footprint, start-up to READY=1, and command -> ack round trip."""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from benchmarks.echo_peers import BareEcho, VerifyingEcho
from benchmarks.procstat import cpu_seconds, rss_mb
from tests.support.site import ConsoleKey

# rtt_ratio: command -> ack against the fair peer in benchmarks/echo_peers.py (the bare echo is the floor).
# Interleaved device / fair peer / bare echo rounds: enough that the VM's jitter averages out.
ROUND_TRIPS = 600
TARGETS = {"rss_mb": 40.0, "cpu_percent": 1.0, "ready_s": 1.5, "rtt_ratio": 1.3}


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


def round_trip(client: MqttRecorder, topic: str, command: dict) -> float:
    """Seconds from publishing `command` until `client` has the first answer naming its id."""
    mark = client.mark()
    started = time.perf_counter()
    client.publish_nowait(topic, json.dumps(command).encode())
    client.wait_for(lambda _, answer: isinstance(answer, dict) and answer.get("id") == command["id"], 5, after=mark)
    return time.perf_counter() - started


def round_trips(workdir: Path, broker: Mosquitto, key: ConsoleKey, count: int) -> dict[str, list[float]]:
    """The daemon's command -> ack next to its two yardsticks, interleaved so all see the same load."""
    daemon = DaemonProcess(site_config(workdir, "rtt-site", broker.url, key.public_b64)).start()
    peers = {"bare": BareEcho(broker.port, "bench/bare/in", "bench/bare/out"),
             "fair": VerifyingEcho(broker.port, "bench/fair/in", "bench/fair/out", key.private.public_key(),
                                   workdir / "fair-journal")}
    clients = {"device": MqttRecorder(broker.port, site_topic(DEFAULT_TOPIC_PREFIX, "rtt-site", "ack")),
               "bare": MqttRecorder(broker.port, "bench/bare/out"),
               "fair": MqttRecorder(broker.port, "bench/fair/out")}
    targets = {"device": site_topic(DEFAULT_TOPIC_PREFIX, "rtt-site", "cmd"), "bare": "bench/bare/in",
               "fair": "bench/fair/in"}
    try:
        daemon.wait_status(lambda s: s["broker_connected"])
        times: dict[str, list[float]] = {name: [] for name in clients}
        for index in range(count):
            command = key.command("ping", to=["rtt-site"], command_id=f"bench-{index}")
            for name, client in clients.items():
                times[name].append(round_trip(client, targets[name], command))
        if peers["fair"].refused:
            raise RuntimeError(f"the verifying echo refused {peers['fair'].refused} commands: it skipped the work")
        return times
    finally:
        for closeable in (*clients.values(), *peers.values()):
            closeable.close()
        daemon.stop()


def main(argv: list[str]) -> int:
    idle_seconds = float(os.environ.get("BENCH_IDLE_S", "60"))
    key = ConsoleKey()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "broker").start()
        try:
            ready = time_to_ready(workdir, broker, key, runs=10)
            rtt = round_trips(workdir, broker, key, count=ROUND_TRIPS)
            idle = idle_footprint(workdir, broker, key, idle_seconds)
        finally:
            broker.stop()
    results = {
        "rss_mb": idle["rss_mb"],
        "cpu_percent": idle["cpu_percent"],
        "ready_s": statistics.median(ready),
        "rtt_ratio": statistics.median(rtt["device"]) / statistics.median(rtt["fair"]),
    }
    median_ms = {name: statistics.median(values) * 1000 for name, values in rtt.items()}
    print(f"idle daemon over {idle_seconds:g} s: RSS {idle['rss_mb']:.1f} MB, CPU {idle['cpu_percent']:.2f} % of one core")
    print(f"start -> READY=1 (10 runs): median {statistics.median(ready):.3f} s, max {max(ready):.3f} s")
    p95 = sorted(rtt["device"])[int(ROUND_TRIPS * 0.95)] * 1000
    print(f"command -> ack ({ROUND_TRIPS}): median {median_ms['device']:.2f} ms, p95 {p95:.2f} ms")
    print(f"  fair peer (verifies Ed25519, fdatasyncs the id, then acks): median {median_ms['fair']:.2f} ms; "
          f"ratio {results['rtt_ratio']:.2f}")
    print(f"  floor, bare paho echo: median {median_ms['bare']:.2f} ms; ratio {median_ms['device'] / median_ms['bare']:.2f}")
    failures = [f"{name} {results[name]:.2f} > {limit}" for name, limit in TARGETS.items() if results[name] > limit]
    print("targets:", "all met" if not failures else "MISSED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
