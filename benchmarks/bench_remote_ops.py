"""`appliance-console logs SITE --since 1h` (1,000 lines) and `screenshot SITE --out FILE`, whole round trips
from the shell, next to `appliance-console ping --sites SITE` to the same site in the same run (issue 14).

    python -m benchmarks.bench_remote_ops [--reps 7] [--no-720p]

Everything real: the console's generated Mosquitto (TLS, passwords, ACLs) on 127.0.0.1, the real daemon
(`appliance run` with the provisioning file the console wrote; headless VLC display), and the console CLI
run as a subprocess each time (interpreter start, imports, TLS connect, sign, publish, collect the ack and
the chunked reply, write the output), as an operator runs it. The peer is `ping` to the same site through
the same CLI: everything but the reply's payload and the site's work to produce it (journalctl, the grab).
Also shown: `appliance-console --help` (interpreter start and the CLI's imports, no network), the floor of all.

The journal: this machine's PID 1 is not systemd, so the site's journal is empty. If
`systemd-journal-remote` is installed (Debian: `apt-get install systemd-journal-remote`; the bench installs
nothing), it turns 1,500 entries in journal export format (1,200 of the JOURNAL_UNITS in the last hour, 300
older) and 200 of other units into a real journal file, and a `journalctl` first on the daemon's PATH runs
the real `journalctl --directory=DIR "$@"` on it. Without it, that `journalctl` is a stand-in that prints the
last `--lines` of 1,000 fixed lines in `short-iso-precise` shape (the output says which). Either way the console must receive
exactly 1,000 lines, all from the appliance's units. Returns 1 if a median misses its target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from appliance.adapters.remote_ops import JOURNAL_UNITS, journal_command
from appliance.console.remote_cli import since_time
from appliance_dev.journal_file import JOURNAL_REMOTE, export_entry, write_journal
from appliance_dev.waiting import wait_until
from tests.console.conftest import Console

TARGET_S = 2.0
LOG_LINES = 1000
SITE, SITE_720 = "kalibaru", "licin"
HEADLESS = 'backend = "vlc"\noutput = "headless"\nwidth = {w}\nheight = {h}'
MESSAGES = (  # the daemon's own kind of lines, ~90-130 bytes once journalctl has prefixed them
    "state idle -> meeting_available (meeting rapat-{n:04d}, program srt://10.8.0.1:9000)",
    "mqtt connected to mqtts://broker.rapat.lan:8883 as appliance-kalibaru (session present: 1)",
    "health: display ok, camera ok, audio ok, disk 41% used, cpu 52.3 C",
    "command {n:04d} ping from console accepted (signature ok, replay id stored)",
    "uplink rtmp://10.8.0.1/live/kalibaru: 1 frames dropped in the last 10 s (queue 3)",
    "telemetry published: rtt 12.{n} ms, loss 0.0 %, bitrate 1180 kbit/s",
)
UNIT_WEIGHTS = (20, 1, 3, 1, 1)  # appliance.service says most


def journal_entries(now: float) -> tuple[str, list[str]]:
    """Journal export format: 1,200 appliance entries in the last hour, 300 older, 200 of other units; and the
    MESSAGEs of the 1,200 recent appliance entries, in order (`--since 1h --lines 1000` must give the last 1,000)."""
    rng, boot = random.Random(14), uuid.uuid4().hex
    rows = [(now - 3600 * 3 + i * 20, rng.choices(JOURNAL_UNITS, UNIT_WEIGHTS)[0], False) for i in range(300)]
    rows += [(now - 3300 + i * 2.7, rng.choices(JOURNAL_UNITS, UNIT_WEIGHTS)[0], True) for i in range(1200)]
    rows += [(now - 3300 + i * 16.1 + 0.5, rng.choice(("ssh.service", "cron.service")), False) for i in range(200)]
    rows.sort()
    entries, wanted = [], []
    for index, (at, unit, counted) in enumerate(rows):
        message = MESSAGES[index % len(MESSAGES)].format(n=index)
        entries.append(export_entry(at, unit, message, boot=boot, monotonic_s=at - now + 4 * 3600,
                                    pid=1000 + len(unit)))
        if counted:
            wanted.append(message)
    return "".join(entries), wanted


def journal_bin(base: Path) -> tuple[Path, str, list[str] | None]:
    """A directory to put first on the daemon's PATH holding its `journalctl`; what it reads; the lines expected."""
    bindir = base / "journal-bin"
    bindir.mkdir()
    journalctl = shutil.which("journalctl")
    if JOURNAL_REMOTE and journalctl:
        export, wanted = journal_entries(time.time())
        write_journal(base / "journal", export)
        script = f'#!/bin/sh\nexec {journalctl} --directory={base / "journal"} "$@"\n'
        how = f"a real journal file ({len(export) // 1024} KiB export -> systemd-journal-remote), real {journalctl}"
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1800))
        lines = [f"{stamp}.{i:06d}+0000 rapat-kalibaru appliance[1009]: {MESSAGES[i % len(MESSAGES)].format(n=i)}"
                 for i in range(LOG_LINES)]
        (base / "standin.txt").write_text("\n".join(lines) + "\n")
        script = ('#!/bin/sh\nn=1000\nfor a; do case $a in --lines=*) n=${a#--lines=};; esac; done\n'
                  f'exec tail -n "$n" {base / "standin.txt"}\n')
        how = "STAND-IN journalctl printing the last --lines of 1,000 fixed lines (no systemd-journal-remote here)"
        wanted = None
    (bindir / "journalctl").write_text(script)
    (bindir / "journalctl").chmod(0o755)
    return bindir, how, wanted


class Cli:
    """`appliance-console --home HOME ...` as a subprocess, timed from spawn to exit."""

    def __init__(self, home: Path) -> None:
        script = Path(sys.executable).with_name("appliance-console")
        self.argv = [str(script)] if script.exists() else [sys.executable, "-m", "appliance.console"]
        self.home = home
        self.env = {key: value for key, value in os.environ.items() if key != "APPLIANCE_CONSOLE_HOME"}

    def timed(self, *args: str) -> tuple[float, str]:
        started = time.monotonic()
        done = subprocess.run([*self.argv, "--home", str(self.home), *args], capture_output=True, text=True, env=self.env)
        took = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"appliance-console {' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}")
        return took, done.stdout


def setup(base: Path) -> Console:
    console = Console(base / "home").with_fleet_broker()
    return console


def start_site(console: Console, site: str, base: Path, size: tuple[int, int], env: dict[str, str]) -> None:
    daemon = console.start_daemon(site, base, display=HEADLESS.format(w=size[0], h=size[1]), env=env)
    console.wait_online([site], timeout=30)
    wait_until(lambda: daemon.status()["health"]["display"] == "ok", 30, what=f"{site}'s screen")


def measure(cli: Cli, jobs: dict[str, tuple[str, ...]], checks: dict, reps: int) -> dict[str, list[float]]:
    """Each job once unmeasured, then `reps` rounds, the order rotated each round (same load for all)."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    names = list(jobs)
    for round_ in range(-1, reps):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            took, out = cli.timed(*jobs[name])
            if name in checks:
                checks[name](out)
            if round_ >= 0:
                times[name].append(took)
    return times


def journal_alone(bindir: Path, reps: int) -> list[float]:
    """The site's share of `logs`: the daemon's journalctl command line, run here as the daemon runs it."""
    argv = [str(bindir / "journalctl"), *journal_command(since_time("1h"), LOG_LINES)[1:]]
    times = []
    for _ in range(reps):
        started = time.monotonic()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.monotonic() - started)
    return times


def check_logs(count: int, wanted: list[str] | None, sizes: dict[str, int]):  # noqa: ANN201
    def check(out: str) -> None:
        lines = json.loads(out)["lines"]
        assert len(lines) == count, f"{len(lines)} lines, not {count}"
        if wanted is not None:  # the newest `count` of the hour's appliance entries, in time order
            got = [line.split(": ", 1)[1] for line in lines]
            assert got == wanted[-count:], f"not the newest {count} appliance entries of the last hour, in order"
        sizes[f"logs{count}"] = sum(len(line.encode()) + 1 for line in lines)
    return check


def check_shot(key: str, sizes: dict[str, int]):  # noqa: ANN201
    def check(out: str) -> None:
        answer = json.loads(out)
        assert answer["content_type"] == "image/jpeg" and answer["bytes"] == Path(answer["out"]).stat().st_size > 1000, answer
        sizes[key] = answer["bytes"]
    return check


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_remote_ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-720p", action="store_true", help="skip the 1280x720 screen")
    args = parser.parse_args(argv)
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-remote-ops-") as tmp:
        base = Path(tmp)
        bindir, how, wanted = journal_bin(base)
        env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        console = setup(base)
        cli = Cli(console.home)
        try:
            start_site(console, SITE, base, (640, 360), env)
            ping = ("ping", "--sites", SITE, "--json")
            jobs = {"ping": ping, "start": ("--help",),
                    "logs": ("logs", SITE, "--since", "1h", "--lines", str(LOG_LINES), "--json"),
                    "logs1": ("logs", SITE, "--since", "1h", "--lines", "1", "--json"),
                    "shot": ("screenshot", SITE, "--out", str(base / "shot.jpg"), "--json")}
            times = measure(cli, jobs, {"logs": check_logs(LOG_LINES, wanted, sizes), "logs1": check_logs(1, wanted, sizes),
                                         "shot": check_shot("shot", sizes)}, args.reps)
            times["journal"] = journal_alone(bindir, args.reps)
            if not args.no_720p:
                start_site(console, SITE_720, base, (1280, 720), env)
                more = measure(cli, {"ping720": ("ping", "--sites", SITE_720, "--json"),
                                     "shot720": ("screenshot", SITE_720, "--out", str(base / "shot720.jpg"), "--json")},
                               {"shot720": check_shot("shot720", sizes)}, args.reps)
                times.update(more)
        finally:
            console.stop_all()
    return report(times, sizes, how, args.reps)


def report(times: dict[str, list[float]], sizes: dict[str, int], how: str, reps: int) -> int:
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, loopback TLS; the console CLI as a "
          f"subprocess, {reps} runs each, interleaved\njournal: {how}")
    if "journal" in how:
        print(f"the console got the newest {LOG_LINES:,} of the hour's 1,200 appliance entries, in order "
              "(none older, none of other units)")
    rows = [("logs --since 1h, 1,000 lines", "logs", "ping", f"{sizes[f'logs{LOG_LINES}'] / 1024:.0f} KiB text", True),
            ("logs --since 1h --lines 1", "logs1", "ping", "1 line", False),
            ("screenshot, 640x360 screen", "shot", "ping", f"{sizes['shot'] / 1024:.0f} KiB JPEG", True)]
    if "shot720" in times:
        rows.append(("screenshot, 1280x720 screen", "shot720", "ping720", f"{sizes['shot720'] / 1024:.0f} KiB JPEG", True))
    print(f"{'figure':<31} {'payload':>14} {'median':>8} {'max':>8} {'ping med':>9} {'ratio':>6}  target")
    missed = []
    for label, key, peer, payload, targeted in rows:
        median, peer_median = statistics.median(times[key]), statistics.median(times[peer])
        verdict = "—"
        if targeted:
            verdict = f"<= {TARGET_S:g} s " + ("met" if median <= TARGET_S else "MISSED")
            if median > TARGET_S:
                missed.append(label)
        print(f"{label:<31} {payload:>14} {median:7.3f}s {max(times[key]):7.3f}s {peer_median:8.3f}s "
              f"{median / peer_median:6.2f}  {verdict}")
    for label, key, payload in (("peer: ping --sites kalibaru", "ping", "ack only"),
                                ("peer: ping --sites licin (720p)", "ping720", "ack only"),
                                ("floor: console --help", "start", "no network"),
                                ("the site's journalctl alone", "journal", "1,000 lines")):
        if key in times:
            print(f"{label:<31} {payload:>14} {statistics.median(times[key]):7.3f}s {max(times[key]):7.3f}s")
    print("targets:", "all met" if not missed else "MISSED: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
