"""The uptime ledger's writes to the SD card, the sites' bytes on the wire, and `collect` at fleet scale.

    python -m benchmarks.bench_uptime [--sites 1000] [--interval 10] [--seconds 60] [--workers 2] [--skip-collect]

1. Ledger: one simulated day of checkpoints (1,440, one a minute, with a meeting and a broker
   outage) through the real `UptimeLedger` + `LedgerStore` on this disk; bytes written counted by
   the kernel (/proc/self/io: `wchar` = bytes handed to write(), `write_bytes` = bytes sent to the
   block device).
2. Wire: the real core's telemetry and uptime messages for a site, as MQTT v5 PUBLISH + PUBACK
   inside TLS records, per day.
3. collect: a Mosquitto from the console's generated configuration (TLS, ACL), N simulated sites
   (real MQTT v5 connections, the real core's telemetry) each publishing every `--interval` s,
   and `appliance-console collect` as its own process; every message published must be in the
   database at the end. CPU of the collector and the broker from the kernel's accounting.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from appliance.adapters.ledger import LedgerStore
from appliance.adapters.mqtt import encode
from appliance.core import io
from appliance.core.clock import FakeClock
from appliance.core.uptime import Day, UptimeLedger
from appliance_dev.simulate import SimFleet, SimSite
from appliance_dev.waiting import stop_process, wait_until
from benchmarks.bench_console import start_fleet_broker, start_workers, stop_workers
from benchmarks.procstat import cpu_seconds
from tests.core_helpers import make_core

TLS_RECORD_OVERHEAD = 5 + 8 + 16  # TLS 1.2 AES-GCM: header, explicit nonce, tag
PUBACK_V5 = 4


def proc_io() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {key: int(value) for key, value in fields.items()}


def ledger_day(directory: Path) -> dict[str, float]:
    store = LedgerStore(directory)
    store.open()
    days, state = store.load()
    ledger = UptimeLedger("Asia/Jakarta", days, state)
    mono, wall = 1000.0, 1_795_744_800.0 - 9 * 3600  # local midnight-ish, so the day boundary is crossed
    ledger.start(mono, "boot", connected=True)
    # A full ledger (89 earlier days) first, so the measured day writes into a file of its final size.
    for back in range(89, 0, -1):
        date = time.strftime("%Y-%m-%d", time.gmtime(wall - back * 86400))
        ledger.days[date] = Day(date, 30000.0, 29000.0, 3600.0, 1, 1)
    store.save(list(ledger.days.values()), ledger.state, {}, sorted(ledger.days))
    before = proc_io()
    started = time.perf_counter()
    for minute in range(1440):
        mono += 60
        ledger.observe(mono, connected=not 600 <= minute < 610, in_meeting=540 <= minute < 660)
        changed = ledger.checkpoint(mono, wall + (mono - 1000.0), True)
        store.save([ledger.days[d] for d in sorted(changed)], ledger.state, ledger.pending(), sorted(ledger.days))
    elapsed = time.perf_counter() - started
    after = proc_io()
    store.close()
    size = sum(path.stat().st_size for path in directory.glob("uptime.db*"))
    return {"wchar": after["wchar"] - before["wchar"], "write_bytes": after["write_bytes"] - before["write_bytes"],
            "seconds": elapsed, "files": size}


def mqtt_publish_bytes(topic: str, payload: bytes) -> int:
    body = 2 + len(topic.encode()) + 2 + 1 + len(payload)  # topic, packet id, empty v5 properties
    remaining = 1 if body < 128 else 2 if body < 16384 else 3
    return 1 + remaining + body + TLS_RECORD_OVERHEAD + PUBACK_V5 + TLS_RECORD_OVERHEAD


def wire() -> dict[str, float]:
    core, clock = make_core(clock=FakeClock())
    core.handle(io.HealthReport("clock", "synced"))
    sample = {"system_uptime_s": 123456.78, "cpu_temp_c": 54.3, "load1": 0.42, "mem_available_mb": 612.5,
              "disk_free_mb": 24012.3, "throttled": {"raw": "0x0", "under_voltage": False, "freq_capped": False,
                                                     "throttled": False, "soft_temp_limit": False,
                                                     "under_voltage_occurred": False, "freq_capped_occurred": False,
                                                     "throttled_occurred": False, "soft_temp_limit_occurred": False}}
    telemetry = [e for e in core.handle(io.TelemetryDue(sample)) if isinstance(e, io.Publish)][0]
    telemetry_bytes = mqtt_publish_bytes(telemetry.topic, encode(telemetry.payload))
    for _ in range(90):
        clock.advance(86400)
        core.handle(io.CheckpointDue())
    full_uptime = mqtt_publish_bytes(core.topics.uptime, encode(core.uptime_payload()))
    return {"telemetry_msg": telemetry_bytes, "telemetry_day_60s": telemetry_bytes * 1440,
            "uptime_msg_90d": full_uptime, "uptime_day_60s_90d": full_uptime * 1440}


# --- collect at fleet scale -------------------------------------------------------------------------
class TelemetryFleet(SimFleet):
    """SimFleet whose selector thread also publishes each site's telemetry (the real core's message)
    every `interval` s, spread evenly; paho clients are only ever touched from that one thread."""

    def __init__(self, sites: list, interval: float) -> None:
        super().__init__(sites)
        self.interval = interval
        self.publishing = threading.Event()
        self.sent = 0
        self.unacked: set[tuple[str, int]] = set()  # (site, packet id) of telemetry the broker has not acked yet
        for site in sites:
            site.client.on_publish = functools.partial(self._acked, site.spec.id)

    def _acked(self, site_id: str, client, userdata, mid: int, reason, properties) -> None:  # noqa: ANN001
        self.unacked.discard((site_id, mid))

    def _loop(self) -> None:
        due: list[float] = []
        next_misc = time.monotonic() + 1.0
        while not self._stop.is_set():
            touched = set()
            for key, _ in self.selector.select(timeout=0.02):
                site = key.data
                site.client.loop_read(50)
                touched.add(site)
            now = time.monotonic()
            if self.publishing.is_set():
                if not due:
                    due = [now + self.interval * index / len(self.sites) for index in range(len(self.sites))]
                for index, site in enumerate(self.sites):
                    if now >= due[index]:
                        due[index] += self.interval
                        for info in site.perform(site.core.handle(io.TelemetryDue({"load1": 0.1, "throttled": None}))):
                            self.unacked.add((site.spec.id, info.mid))
                            self.sent += 1
                        touched.add(site)
            for site in touched:
                if site.client.want_write():
                    site.client.loop_write()
            if now >= next_misc:
                next_misc = now + 1.0
                for site in self.sites:
                    site.client.loop_misc()
                    if site.client.want_write():
                        site.client.loop_write()


def sim_worker(specs, port: int, ca: str, public_key: str, interval: float, pipe) -> None:  # noqa: ANN001
    sites = [SimSite(spec, "localhost", port, ca, public_key, ("127.0.0.1",)) for spec in specs]
    fleet = TelemetryFleet(sites, interval).start(timeout=240)
    pipe.send("ready")
    pipe.recv()
    fleet.publishing.set()
    pipe.recv()
    fleet.publishing.clear()
    wait_until(lambda: not fleet.unacked, 30, what="the broker's PUBACK for every telemetry message")
    pipe.send(fleet.sent)
    pipe.recv()
    fleet.stop()


def stored_telemetry(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
        return db.execute("SELECT count(*) FROM telemetry").fetchone()[0]


def collect_run(n: int, interval: float, seconds: float, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-uptime-") as tmp:
        home, port, broker, specs, public_key = start_fleet_broker(Path(tmp), n)
        collector = None
        procs = []
        try:
            collector = subprocess.Popen([sys.executable, "-m", "appliance.console", "--home", str(home.root), "--json",
                                          "collect"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            start_workers(procs, sim_worker, specs, workers, port, str(home.ca_cert), public_key, interval, timeout=300)
            time.sleep(2.0)  # the connect burst (retained states, uptime) settles
            cpu_collect, cpu_broker = cpu_seconds(collector.pid), cpu_seconds(broker.process.pid)
            started = time.monotonic()
            for _, pipe in procs:
                pipe.send("go")
            time.sleep(seconds)
            for _, pipe in procs:
                pipe.send("stop")
            sent = sum(pipe.recv() for _, pipe in procs)
            run_s = time.monotonic() - started
            cpu_collect = cpu_seconds(collector.pid) - cpu_collect
            cpu_broker = cpu_seconds(broker.process.pid) - cpu_broker
            with contextlib.suppress(TimeoutError):  # what never arrives is reported as lost
                wait_until(lambda: stored_telemetry(home.database) >= sent, 60, interval=0.5)
            stored = stored_telemetry(home.database)
            drain_s = time.monotonic() - started - run_s
        finally:
            stop_workers(procs, "exit")
            if collector is not None:
                stop_process(collector, timeout=30)
            broker.stop()
    return {"sites": n, "sent": sent, "stored": stored, "lost": sent - stored, "run_s": run_s, "drain_s": drain_s,
            "rate": sent / run_s, "cpu_collect_pct": 100 * cpu_collect / run_s, "cpu_broker_pct": 100 * cpu_broker / run_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_uptime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="telemetry interval of every site, s")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the sites publish")
    parser.add_argument("--workers", type=int, default=2, help="processes for the simulated sites")
    parser.add_argument("--skip-collect", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-", dir=str(Path.cwd())) as tmp:
        ledger = ledger_day(Path(tmp))
    print(f"ledger, one day of 1,440 checkpoints (on {Path.cwd()}): {ledger['wchar'] / 1e6:.2f} MB written "
          f"(write(): {ledger['wchar']} B, block device: {ledger['write_bytes']} B), "
          f"{ledger['seconds'] * 1000 / 1440:.2f} ms per checkpoint, files {ledger['files']} B")
    sizes = wire()
    print(f"wire per site and day: telemetry {sizes['telemetry_msg']} B/message -> "
          f"{sizes['telemetry_day_60s'] / 1e6:.2f} MB/day at 60 s ({sizes['telemetry_day_60s'] * 6 / 1e6:.2f} MB at 10 s); "
          f"uptime message with 90 days {sizes['uptime_msg_90d']} B -> {sizes['uptime_day_60s_90d'] / 1e6:.2f} MB/day "
          f"republished every 60 s checkpoint")
    if not args.skip_collect:
        result = collect_run(args.sites, args.interval, args.seconds, args.workers)
        print(f"collect: {result['sites']} sites x telemetry every {args.interval:g} s for {result['run_s']:.0f} s: "
              f"{result['sent']} sent, {result['stored']} stored, lost {result['lost']}, "
              f"{result['rate']:.0f} msg/s; collector CPU {result['cpu_collect_pct']:.1f}% of one core, "
              f"broker {result['cpu_broker_pct']:.1f}%; drained {result['drain_s']:.1f} s after the last publish "
              f"({os.cpu_count()} cores)")
        return 1 if result["lost"] else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
