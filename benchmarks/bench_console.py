"""Meeting start to N sites until every ack arrived, next to the bare broker round trip; and the
moderator's floor grant in a meeting of N sites, next to two pings.

    python -m benchmarks.bench_console [--what meeting,floor] [--sizes 242,2000] [--trials 30] [--workers 2]
                                       [--floor-sites 242] [--swaps 20]

Everything real except the sites' media: a Mosquitto started from the console's generated
configuration (TLS, passwords, ACL), the console's own signing and MQTT code, and N simulated
sites, each a real MQTT v5 connection running the real device core (`appliance_dev.simulate`),
spread over worker processes. On the same connections and in the same run, the baseline is the
broker's bare round trip: one unsigned `ECHO` message to the `all` group, answered by every site
without the core.

The floor (`--what floor`): every site joined one moderated meeting; one speaker at a time. A swap is
`FloorDesk.grant(next)` (what `floor grant` and the dashboard call) on the console's open
connection with the floor view already loaded: plan (revoke the current speaker, grant the next),
sign both commands, publish both, until both sites have acked. The peer, interleaved in the same
run: the same two sites sent a signed `ping` each, through the same `FloorDesk.send`. Prints
figures and the ratio; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.console import commands
from appliance.console.cli import main as console_main
from appliance.console.context import Context
from appliance.console.fleet import send_and_collect
from appliance.console.floor import floor_status
from appliance.console.floor_desk import FloorDesk, site_commands
from appliance.console.home import Home
from appliance.core.floor import LISTENING, MODERATED, SPEAKING
from appliance.core.protocol import group_command_topic, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.localnet import free_port
from appliance_dev.simulate import SimFleet, SimSite, SiteSpec

# Workers inherit the imported modules; nothing in this process has started threads yet when they fork.
FORK = multiprocessing.get_context("fork")


def console(home: Path, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = console_main(["--home", str(home), *args])
    if code != 0:
        raise SystemExit(f"appliance-console {' '.join(args)} exited {code}")
    return out.getvalue()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def start_workers(procs: list, target, specs: list[SiteSpec], workers: int, *args, timeout: float) -> None:  # noqa: ANN001
    """`workers` processes, each running target(its share of `specs`, *args, pipe), added to `procs` as
    (process, pipe) at once (for stop_workers, whatever happens); returns when every one has said "ready"."""
    for index in range(workers):
        parent, child = FORK.Pipe()
        process = FORK.Process(target=target, daemon=True, args=(specs[index::workers], *args, child))
        process.start()
        procs.append((process, parent))
    for _, pipe in procs:
        if not pipe.poll(timeout):
            raise SystemExit("simulated sites did not come up")
        pipe.recv()


def stop_workers(procs: list, message: str) -> None:
    for process, pipe in procs:
        with contextlib.suppress(OSError):
            pipe.send(message)
        process.join(30)
        if process.is_alive():
            process.kill()


def worker(specs: list[SiteSpec], port: int, ca: str, public_key: str, pipe) -> None:  # noqa: ANN001
    sites = [SimSite(spec, "localhost", port, ca, public_key, ("127.0.0.1",)) for spec in specs]
    fleet = SimFleet(sites).start(timeout=120)
    pipe.send("ready")
    pipe.recv()
    fleet.stop()


def setup_fleet(root: Path, n: int, port: int) -> Home:
    home = root / "home"
    console(home, "init", "--broker-url", f"mqtts://localhost:{port}", "--media-host", "127.0.0.1")
    sheet = root / "desa.csv"
    sheet.write_text("id,name,kind\n" + "".join(f"desa-{i:04d},Desa {i},desa\n" for i in range(n - 25)))
    if n > 25:
        console(home, "sites", "import", str(sheet))
    console(home, "broker-config", "--out", str(root / "broker"), "--bind", "127.0.0.1", "--run-as", getpass.getuser())
    return Home(home)


def start_fleet_broker(root: Path, n: int) -> tuple[Home, int, Mosquitto, list[SiteSpec], str]:
    """A console home with n sites, its generated broker running, and the sites' credentials."""
    port = free_port()
    home = setup_fleet(root, n, port)
    broker = Mosquitto(root / "mosquitto", config=root / "broker" / "mosquitto.conf", port=port).start()
    ctx = Context(home)
    try:
        credentials = ctx.store.credentials()
        specs = [SiteSpec(site.id, site.kind, credentials[site.id][0]) for site in ctx.store.sites()]
        return home, port, broker, specs, ctx.store.get_meta("console_public_key")
    except BaseException:
        broker.stop()
        raise
    finally:
        ctx.close()


def echo_round(fleet, n: int, token: int) -> float:  # noqa: ANN001
    marker = f'{{"echo":{token}}}'.encode()
    started = time.monotonic()
    fleet.publish([(group_command_topic(fleet.prefix, "all"), b"ECHO" + str(token).encode())])
    got = 0
    while got < n:
        _, payload, _, arrived = fleet.messages.get(timeout=30)
        if payload == marker:
            got += 1
    return arrived - started


def run_size(n: int, trials: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        home, port, broker, specs, public_key = start_fleet_broker(Path(tmp), n)
        procs = []
        try:
            ctx = Context(home)
            connect_started = time.monotonic()
            start_workers(procs, worker, specs, workers, port, str(home.ca_cert), public_key, timeout=180)
            connect_s = time.monotonic() - connect_started

            key = ctx.signing_key()
            all_ids = [spec.id for spec in specs]
            target = commands.resolve_target(ctx.store, None, "all", ctx.topic_prefix)
            echo, meeting, per_ack = [], [], []
            with ctx.fleet(timeout=30) as fleet:
                fleet.subscribe([site_topic(fleet.prefix, "+", "ack")])
                for trial in range(trials):
                    # Interleaved so both see the same machine load.
                    while not fleet.messages.empty():
                        fleet.messages.get_nowait()
                    echo.append(echo_round(fleet, n, trial))
                    body = {"meeting_id": f"bench-{trial}", "title": f"Bench {trial}",
                            "program_url": "rtmp://127.0.0.1/live/p", "ingest_url": "rtmp://127.0.0.1/live/{site}"}
                    command = commands.build("meeting.start", body, target, 600, key)
                    tracker = send_and_collect(fleet, command, target.topics, all_ids, timeout=30)
                    if not tracker.done:
                        raise SystemExit(f"trial {trial}: only {len(tracker.answers)}/{n} acks")
                    latencies = [answer["latency_s"] for answer in tracker.answers.values()]
                    meeting.append(max(latencies))
                    per_ack.extend(latencies)
            # The whole CLI, as an operator runs it: connect, subscribe, read retained states, sign, send, collect.
            cli = []
            for _ in range(3):
                started = time.monotonic()
                console(home.root, "meeting", "start", "--title", "CLI", "--program-url", "rtmp://127.0.0.1/live/p",
                        "--ingest-url", "rtmp://127.0.0.1/live/{site}", "--group", "all", "--json")
                cli.append(time.monotonic() - started)
            ctx.close()
        finally:
            stop_workers(procs, "stop")
            broker.stop()
    return {"n": n, "trials": trials, "connect_s": connect_s, "echo": echo, "meeting": meeting,
            "per_ack": per_ack, "cli": cli}


def run_floor(n: int, swaps: int, workers: int) -> dict:
    """Swaps of the floor in an n-site moderated meeting, each next to two pings (alternating which goes first)."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        home, port, broker, specs, public_key = start_fleet_broker(Path(tmp), n)
        procs = []
        try:
            ctx = Context(home)
            start_workers(procs, worker, specs, workers, port, str(home.ca_cert), public_key, timeout=180)
            key = ctx.signing_key()
            all_ids = sorted(spec.id for spec in specs)
            target = commands.resolve_target(ctx.store, None, "all", ctx.topic_prefix)
            grants, pings = [], []
            with ctx.fleet(timeout=30) as fleet:
                body = {"meeting_id": "bench-floor", "title": "Bench floor", "program_url": "rtmp://127.0.0.1/live/p",
                        "ingest_url": "rtmp://127.0.0.1/live/{site}", "auto_join": True, "floor": MODERATED}
                tracker = send_and_collect(fleet, commands.build("meeting.start", body, target, 600, key),
                                           target.topics, all_ids, timeout=60)
                if not tracker.done:
                    raise SystemExit(f"meeting.start: only {len(tracker.answers)}/{n} acks")
                desk = FloorDesk(fleet, key)
                desk.load()
                joined = desk.wait(lambda view: sum(len(m.sites) for m in view.meetings()) == n, 30)
                if not joined:
                    raise SystemExit("not every site joined the meeting")
                speakers = all_ids[:swaps + 1]
                desk.grant(speakers[0])
                for index in range(1, swaps + 1):
                    before, after = speakers[index - 1], speakers[index]
                    desk.wait(lambda view, site=before: floor_status(view, site) == SPEAKING, 5)
                    for kind in ("grant", "ping") if index % 2 else ("ping", "grant"):
                        if kind == "grant":
                            grants.append(grant_once(desk, before, after))
                        else:
                            pings.append(pings_once(desk, key, before, after))
                    desk.wait(lambda view, old=before, new=after: (floor_status(view, old), floor_status(view, new))
                              == (LISTENING, SPEAKING), 5)
            # The whole CLI, as an operator runs it: connect, read 242 retained states, grant, show the table.
            cli = []
            for site in all_ids[swaps + 1:swaps + 4]:
                started = time.monotonic()
                console(home.root, "floor", "grant", site, "--json")
                cli.append(time.monotonic() - started)
            ctx.close()
        finally:
            stop_workers(procs, "stop")
            broker.stop()
    return {"n": n, "swaps": swaps, "grant": grants, "ping": pings, "cli": cli}


def grant_once(desk: FloorDesk, before: str, after: str) -> float:
    started = time.monotonic()
    outcome = desk.grant(after)  # with the view loaded: plan, sign, publish both, collect both acks
    if outcome.plan.revoke != (before,) or outcome.plan.grant != (after,) or not outcome.ok:
        raise SystemExit(f"grant {after}: plan {outcome.plan}, summary {outcome.summary()}")
    return outcome.last_ack_at() - started


def pings_once(desk: FloorDesk, key, before: str, after: str) -> float:  # noqa: ANN001
    started = time.monotonic()
    sent = [*site_commands("ping", {}, [before], key, prefix=desk.fleet.prefix, expires_s=desk.expires_s),
            *site_commands("ping", {}, [after], key, prefix=desk.fleet.prefix, expires_s=desk.expires_s)]
    trackers = desk.send(sent)
    if not all(tracker.done and tracker.summary()["ok"] == 1 for tracker in trackers):
        raise SystemExit(f"pings to {before}, {after} not all acked")
    last = max(tracker.sent_at + answer["latency_s"] for tracker in trackers for answer in tracker.answers.values())
    return last - started


def ms(value: float) -> str:
    return f"{value * 1000:8.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="242,2000", help="comma-separated fleet sizes (each ≥ 25)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="processes for the simulated sites")
    parser.add_argument("--what", default="meeting,floor", help="meeting, floor or both (default)")
    parser.add_argument("--floor-sites", type=int, default=242, help="sites in the meeting of the floor benchmark")
    parser.add_argument("--swaps", type=int, default=20, help="floor swaps (each next to two pings)")
    args = parser.parse_args(argv)
    what = {part.strip() for part in args.what.split(",")}
    sizes = [int(size) for size in args.sizes.split(",")] if "meeting" in what else []
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, loopback TLS, "
          f"{args.workers} site processes; times in ms until EVERY site acked")
    if sizes:
        meeting_figures(sizes, args)
    if "floor" in what:
        floor_figures(args)
    return 0


FLOOR_TARGET_MS = 200.0


def floor_figures(args: argparse.Namespace) -> None:
    result = run_floor(args.floor_sites, args.swaps, args.workers)
    grant, ping = statistics.median(result["grant"]), statistics.median(result["ping"])
    print(f"\nfloor: {result['n']}-site moderated meeting, {result['swaps']} swaps (revoke the speaker, grant the next), "
          "from the call on the open connection with the view loaded until both sites acked")
    print(f"{'N':>6} {'what':<34} {'p50':>8} {'p90':>8} {'max':>8}")
    for label, values in (("floor grant (revoke + grant)", result["grant"]),
                          ("peer: two pings, same sites", result["ping"]),
                          ("whole CLI `floor grant` (3 runs)", result["cli"])):
        print(f"{result['n']:>6} {label:<34} {ms(percentile(values, 50))} {ms(percentile(values, 90))} {ms(max(values))}")
    verdict = "met" if grant * 1000 <= FLOOR_TARGET_MS else "NOT met"
    print(f"{result['n']:>6} grant / pings p50 ratio x{grant / ping:.2f}; target p50 <= {FLOOR_TARGET_MS:g} ms: {verdict}")


def meeting_figures(sizes: list[int], args: argparse.Namespace) -> None:
    print(f"{'N':>6} {'what':<34} {'p50':>8} {'p99':>8} {'max':>8}")
    results = []
    for n in sizes:
        result = run_size(n, args.trials, args.workers)
        results.append(result)
        for label, values in (("bare broker round trip (echo)", result["echo"]),
                              ("meeting.start, all acked", result["meeting"]),
                              ("  one site's ack (all trials)", result["per_ack"]),
                              ("whole CLI run (3 runs)", result["cli"])):
            print(f"{n:>6} {label:<34} {ms(percentile(values, 50))} {ms(percentile(values, 99))} {ms(max(values))}")
        print(f"{n:>6} {'(sites connected in)':<34} {ms(result['connect_s'])}")
    if len(results) > 1:
        small, large = results[0], results[-1]
        ratio = statistics.median(large["meeting"]) / statistics.median(small["meeting"])
        echo_ratio = statistics.median(large["echo"]) / statistics.median(small["echo"])
        print(f"growth {small['n']} -> {large['n']} sites (x{large['n'] / small['n']:.1f}): meeting.start p50 x{ratio:.1f}, "
              f"bare round trip p50 x{echo_ratio:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
