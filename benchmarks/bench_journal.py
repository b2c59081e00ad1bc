"""Journal bytes the device writes to its SD card per day in normal operation (target: <= 1 MB a day).

    python -m benchmarks journal          (BENCH_JOURNAL_PHASE_S=65: seconds of each steady phase)

1. What the daemon logs: a real `appliance run` (testsrc camera pushing to nginx-rtmp, headless VLC playing
   an SRT program, audio.echo = aec with a running audio engine: the echo rig's PipeWire) on Mosquitto on
   127.0.0.1, driven by signed commands and its control socket; its stdout/stderr stamped line by line,
   phase by phase (idle, meeting start + join, steady meeting, floor request + grant, revoke, leave, idle).
2. What it costs on the card. THE DAY MODEL (an assumption): 24 h, 2 meetings of 2 h (09:00, 14:00) with
   12 floor turns each (3 min a speaker), idle the rest; steady phases repeat at the measured rate, events
   once per occurrence. Under systemd the daemon logs through its stderr stream with a priority prefix per
   line (adapters/systemd.py), so each line is a stream entry with journald 252's fields (stream_entry()).
   journald writes through mmap and fsyncs every 15 min only: entries reach the card when the kernel writes
   the file's dirty pages back, `vm.dirty_expire_centisecs` after it was first dirtied, each page once: the
   image sets that to 15 min (systemd/sysctl.d/60-rapat-card-wear.conf; the kernel's default is 30 s). So
   the entries go into ONE real journal file (systemd-journal-remote: systemd 252's file code, as
   journald's; sized as the device's, see create_journal), one run per writeback window, appending; after
   each run the file is compared with its previous copy page by page (4 KiB): the changed pages are what
   the card gets.
   Peers, same run, same lines: a plain text log (its bytes); the day's entries in one batch; the stream at
   the kernel's 30-s writeback; and the product before (python-systemd's JournalHandler, native entries:
   native_entry(), at 30 s).

Not counted: ext4's journal commits and metadata, the card's own write amplification, journald's 15-min
fsync (one more header write at most), other units (docs/performance.md: boot log ~1.2 MB, nothing while
idle). Modelled, not measured: the fields journald adds (_trusted()); for the native peer CODE_LINE/CODE_FUNC
(one value per call site), CODE_ARGS (on all but the core's pre-formatted lines), _SOURCE_REALTIME_TIMESTAMP
(journald adds it to native entries); no _AUDIT_*.
Returns 1 if the day's journal bytes to the card exceed 1 MB.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.audio_rig import AudioRig
from appliance_dev.broker import Mosquitto
from appliance_dev.central_media import RtmpServer, SrtProgram
from appliance_dev.journal_file import JOURNAL_REMOTE, export_entry
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from appliance_dev.waiting import wait_until
from tests.support.site import ConsoleKey, meeting_body

PHASE_S = float(os.environ.get("BENCH_JOURNAL_PHASE_S", "65"))
REPO = Path(__file__).resolve().parents[1]
CARD_WEAR_SYSCTL = REPO / "systemd/sysctl.d/60-rapat-card-wear.conf"  # what the image sets
KERNEL_DEFAULT_WINDOW_S = 30.0  # vm.dirty_expire_centisecs = 3000, the kernel's default
PAGE = 4096
TARGET_BYTES = 1_000_000
HOUR = 3600.0
MEETINGS = ((9 * HOUR, 11 * HOUR), (14 * HOUR, 16 * HOUR))
FLOOR_TURNS, SPEAKING_S = 12, 180.0  # per meeting; how long each speaker holds the floor
SITE = "kalibaru"
SMALL_PROGRAM = "testsrc2=size=640x360:rate=30"
MEDIA = """[camera]\nbackend = "testsrc"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\ntest_audio = "engine"
[display]\nbackend = "vlc"\noutput = "headless"\nwidth = 640\nheight = 360\nframes_dir = "{frames}"\n"""
# The daemon's stderr format (appliance.adapters.systemd.setup_logging, without systemd).
LOGGING_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")
COMMAND_ID = re.compile(r"cmd-[0-9a-f]{6,}")
PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class LineTap(threading.Thread):
    """Follows the daemon's output file and stamps each complete line with the wall time it arrived."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.lines, self.done = path, [], threading.Event()

    def run(self) -> None:
        with open(self.path, "rb") as handle:
            pending = b""
            while True:
                finished = self.done.is_set()  # read once more after the stop, so nothing is lost
                pending += handle.read()
                *complete, pending = pending.split(b"\n")
                now = time.time()
                self.lines += [(now, line.decode(errors="replace")) for line in complete]
                if finished:
                    return
                time.sleep(0.1)


def capture(workdir: Path) -> list[tuple[str, float, list[tuple[float, str]]]]:
    """Each phase's (name, seconds, [(offset in the phase, line)]) from a real daemon's day in brief."""
    key, frames, log_path = ConsoleKey(), workdir / "frames", workdir / "daemon.log"
    frames.mkdir()
    log_path.touch()
    (workdir / "media.toml").write_text(MEDIA.format(frames=frames))
    marks: list[tuple[str, float]] = []
    with contextlib.ExitStack() as stack:
        # The device's normal sound path (audio.echo = aec): the audio engine running, here the echo rig's
        # PipeWire. Without an engine VLC retries its audio output ~47 times a second, and libasound prints
        # 8 lines each time: that is a failure mode, not normal operation (see the report).
        rig = stack.enter_context(AudioRig())
        broker = Mosquitto(workdir / "broker").start()
        stack.callback(broker.stop)
        server = stack.enter_context(contextlib.closing(RtmpServer().start()))
        program = stack.enter_context(contextlib.closing(SrtProgram(video=SMALL_PROGRAM, bitrate_kbps=1000).start()))
        tap = LineTap(log_path)
        tap.start()
        stack.callback(tap.join, 5)
        stack.callback(tap.done.set)
        daemon = DaemonProcess(site_config(workdir, SITE, broker.url, key.public_b64), rig.env,
                               overlays=[workdir / "media.toml"], log_path=log_path)
        stack.callback(daemon.stop)
        acks = MqttRecorder(broker.port, site_topic(DEFAULT_TOPIC_PREFIX, SITE, "ack"))
        console = stack.enter_context(contextlib.closing(acks))

        def command(command_type: str, body: dict) -> None:
            sent = key.command(command_type, body, to=[SITE])
            mark = console.mark()
            console.publish(site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd"), sent)
            if not (ack := console.ack_for(sent["id"], SITE, after=mark)).get("ok"):
                raise RuntimeError(f"{command_type} refused: {ack}")

        def phase(name: str, seconds: float = 0.0) -> None:
            marks.append((name, time.time()))
            time.sleep(seconds)

        meeting = {**meeting_body("bench-journal"), "program_url": program.url, "ingest_url": server.url("{site}"),
                   "auto_join": True}
        phase("start-up")
        daemon.start()
        daemon.wait_status(lambda status: status["broker_connected"] and status["health"].get("audio") == "ok", 20)
        time.sleep(3)  # the start-up's last lines
        phase("idle", PHASE_S)
        phase("meeting start + join")
        command("meeting.start", meeting)
        daemon.wait_status(lambda status: status["state"] == "in_meeting", 20)
        wait_until(lambda: server.streams().get(SITE, {}).get("publishing"), 20, what="the uplink at nginx-rtmp")
        time.sleep(5)  # the display's first frames, the uplink's first seconds
        phase("meeting (steady)", PHASE_S)
        phase("floor request + grant")
        daemon.control({"cmd": "press"})  # a short press: floor.requested
        command("floor.grant", {"meeting_id": meeting["meeting_id"]})
        time.sleep(3)  # the site speaks
        phase("floor revoke")
        command("floor.revoke", {"meeting_id": meeting["meeting_id"]})
        time.sleep(2)
        phase("leave + meeting.end")
        daemon.control({"cmd": "leave"})
        daemon.wait_status(lambda status: status["state"] != "in_meeting", 20)
        command("meeting.end", {"meeting_id": meeting["meeting_id"]})
        daemon.wait_status(lambda status: status["state"] == "idle", 20)
        time.sleep(3)
        phase("idle after", PHASE_S)
        phase("shutdown")
        daemon.stop()
        phase("", 0.5)
    return [(name, end - start, [(at - start, line) for at, line in tap.lines if start <= at < end])
            for (name, start), (_, end) in itertools.pairwise(marks)]


def day_lines(phases: dict[str, tuple[float, list]]) -> list[tuple[float, str]]:
    """(seconds since midnight, line) for the model day: steady phases repeated, events placed. Each copy
    gets command ids of its own (real ones never repeat; a repeated MESSAGE would cost the journal less)."""
    out: list[tuple[float, str]] = []
    copies = iter(range(1, 1 << 30))

    def fresh(line: str, copy: int) -> str:
        return COMMAND_ID.sub(lambda found: f"cmd-{zlib.crc32(f'{found.group()}/{copy}'.encode()):08x}", line)

    def once(name: str, at: float) -> float:
        seconds, lines = phases[name]
        copy = next(copies)
        out.extend((at + offset, fresh(line, copy)) for offset, line in lines)
        return at + seconds

    def tile(name: str, start: float, end: float) -> None:  # the capture repeated over [start, end)
        seconds, lines = phases[name]
        for k in range(int((end - start) // seconds) + 1):
            copy = next(copies)
            out.extend((at, fresh(line, copy)) for offset, line in lines if (at := start + k * seconds + offset) < end)

    idle_from, idle_phase = 0.0, "idle"
    for begin, end in MEETINGS:
        tile(idle_phase, idle_from, begin)
        tile("meeting (steady)", once("meeting start + join", begin), end)
        for turn in range(FLOOR_TURNS):
            granted = begin + (turn + 1) * (end - begin) / (FLOOR_TURNS + 1)
            once("floor revoke", once("floor request + grant", granted) + SPEAKING_S)
        idle_from, idle_phase = once("leave + meeting.end", end), "idle after"
    tile(idle_phase, idle_from, 24 * HOUR)
    return sorted(out)


def device_window_s() -> float:
    """How long the image lets a dirty page wait before the kernel writes it back (its sysctl drop-in)."""
    for line in CARD_WEAR_SYSCTL.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "vm.dirty_expire_centisecs":
            return int(value) / 100
    return KERNEL_DEFAULT_WINDOW_S


def _trusted(at: float, message: str, level: str, boot: str, boot_at: float, ids: dict[str, str], transport: str) -> str:
    """The fields journald itself adds to any entry of the appliance unit (shared by every entry)."""
    base = export_entry(at, "appliance.service", message, boot=boot, monotonic_s=at - boot_at)
    base = base.replace("_TRANSPORT=stdout", f"_TRANSPORT={transport}", 1).replace("PRIORITY=6", f"PRIORITY={PRIORITY[level]}", 1)
    return base[:-1] + ("_GID=998\n_EXE=/usr/bin/python3.11\n"
                        "_CMDLINE=/opt/rapat-appliance/bin/python /opt/rapat-appliance/bin/appliance run\n_CAP_EFFECTIVE=0\n"
                        "_SYSTEMD_CGROUP=/system.slice/appliance.service\n_SYSTEMD_SLICE=system.slice\n"
                        f"_SYSTEMD_INVOCATION_ID={ids['invocation']}\n_MACHINE_ID={ids['machine']}\n")


def stream_entry(at: float, line: str, boot: str, boot_at: float, ids: dict[str, str]) -> str:
    """The entry journald stores for one line of the daemon's stderr stream, as the product logs under
    systemd ("<N>message", adapters/systemd.JournalLineFormatter): MESSAGE is the one field that changes."""
    matched = LOGGING_LINE.match(line)
    level, message = (matched.group(1), matched.group(3)) if matched else ("INFO", line)
    return _trusted(at, message, level, boot, boot_at, ids, "stdout") + f"_STREAM_ID={ids['stream']}\nSYSLOG_FACILITY=3\n\n"


def native_entry(at: float, line: str, boot: str, boot_at: float, ids: dict[str, str]) -> str:
    """The entry journald stored for one line through python-systemd's JournalHandler (the product before
    the stream): the handler's fields, and the source timestamp journald adds to native entries."""
    matched = LOGGING_LINE.match(line)
    if not matched:  # not from `logging`: through the unit's stdout stream
        return stream_entry(at, line, boot, boot_at, ids)
    level, logger, message = matched.groups()
    call_site = zlib.crc32(f"{logger}:{re.sub(r'[0-9.]+', '', message)[:30]}".encode())
    module = "daemon" if logger == "appliance" else logger.split(".")[-1]
    fields = (f"_SOURCE_REALTIME_TIMESTAMP={int(at * 1e6) - 180}\nLOGGER={logger}\n"
              "THREAD_NAME=MainThread\nPROCESS_NAME=MainProcess\n"
              f"CODE_FILE=/opt/rapat-appliance/lib/python3.11/site-packages/appliance/{module}.py\n"
              f"CODE_LINE={call_site % 500 + 20}\nCODE_FUNC=f{call_site % 97}\n")
    if logger != "appliance":  # %-style calls; the core's lines come pre-formatted (no args)
        fields += f"CODE_ARGS=({message[-40:]!r},)\n"
    return _trusted(at, message, level, boot, boot_at, ids, "journal") + fields + "\n"


def header(data: bytes) -> tuple[int, int]:
    """(entries, bytes in use) from a journal file's header: n_entries, and where the tail object ends."""
    tail_offset, _, n_entries = struct.unpack_from("<3Q", data, 136)
    tail_size = struct.unpack_from("<Q", data, tail_offset + 8)[0]
    return n_entries, tail_offset + (tail_size + 7) // 8 * 8


def changed_pages(before: bytes, after: bytes) -> int:
    """4 KiB pages of `after` that differ from `before` (missing pages read as zeros: fallocated, unwritten)."""
    zero, view, old = bytes(PAGE), memoryview(after), memoryview(before)
    return sum(1 for at in range(0, len(after), PAGE)
               if view[at:at + PAGE] != (old[at:at + PAGE] if at < len(before) else zero[:len(view[at:at + PAGE])]))


def create_journal(path: Path, export: str) -> bool:
    """A new journal file holding `export`, sized as the device's (SystemMaxFileSize=8M: a 14,563-bucket data
    hash table, in whose random pages each new value lands). journal-remote 252 has no such setting and sizes
    files by their file system (max_size = 1/80 of it, at most 128 MiB, a 3.6 MiB table), so the file is
    made on a private 640 MiB tmpfs (own mount namespace) and copied out. False if not possible (not root)."""
    mount = path.parent / "mnt"
    mount.mkdir(exist_ok=True)
    script = 'mount -t tmpfs -o size=640m rapat-journal "$2" && "$1" --output="$2/new.journal" - && cp "$2/new.journal" "$3"'
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", JOURNAL_REMOTE,
                           str(mount), str(path)], input=export.encode(), capture_output=True)
    mount.rmdir()
    if done.returncode != 0:
        subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=export.encode(), check=True, capture_output=True)
    return done.returncode == 0


def write_windows(path: Path, windows: list[list[str]]) -> tuple[list[int], list[int], bool]:
    """Each window one journal-remote run appending to `path` (the first creates it): pages it changed,
    the file's bytes in use after each, and whether the file is sized as the device's."""
    pages, used, before, expected, device_sized = [], [], b"", 0, False
    for entries in windows:
        if not path.exists():
            device_sized = create_journal(path, "".join(entries))
        else:
            subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input="".join(entries).encode(), check=True,
                           capture_output=True)
        after = path.read_bytes()
        expected += len(entries)
        others = [p.name for p in path.parent.iterdir() if p != path]
        entry_count, in_use = header(after)
        if others or entry_count != expected:  # replaced (renamed: "from the future", corrupt) or rotated
            raise RuntimeError(f"systemd-journal-remote did not append: {entry_count} entries, not {expected}; {others}")
        pages.append(changed_pages(before, after))
        used.append(in_use)
        before = after
    return pages, used, device_sized


def day_on_card(work: Path, by_name: dict[str, tuple[float, list]], entry, window_s: float) -> dict:  # noqa: ANN001
    """The model day through real journal files, its entries made by `entry`: written back every
    `window_s` (as the card gets them) and in one batch (the peer)."""
    work.mkdir()
    day = day_lines(by_name)
    # The model day ended two days ago: journal-remote will not append to a file "from the future".
    day_start = (time.time() // 86400 - 2) * 86400
    boot_at, boot = day_start - 600, uuid.uuid4().hex
    ids = {"invocation": uuid.uuid4().hex, "machine": uuid.uuid4().hex, "stream": uuid.uuid4().hex}
    startup = [entry(boot_at + 20 + offset, line, boot, boot_at, ids) for offset, line in by_name["start-up"][1]]
    if not startup:
        raise RuntimeError("the daemon logged nothing while starting: is its output captured?")
    # A window opens with the first entry that dirties the (clean) file and is written back window_s later.
    entries: list[list[str]] = []
    opened = -window_s
    for at, line in day:
        if at >= opened + window_s:
            entries.append([])
            opened = at
        entries[-1].append(entry(day_start + at, line, boot, boot_at, ids))
    for name in ("windowed", "batch"):
        (work / name).mkdir()
    # Both files start with the daemon's start-up entries (on the Pi the file holds the boot already).
    pages, used, device_sized = write_windows(work / "windowed" / "site.journal", [startup, *entries])
    batch_pages, _, _ = write_windows(work / "batch" / "site.journal", [startup, sum(entries, [])])
    return {"lines": len(day), "windows": len(entries), "startup": (len(startup), pages[0] * PAGE),
            "text": sum(len(line.encode()) + 1 for _, line in day),
            "growth": used[-1] - used[0], "batch": batch_pages[1] * PAGE, "card": sum(pages[1:]) * PAGE,
            "max_pages": max(pages[1:], default=0), "device_sized": device_sized,
            "buckets": struct.unpack_from("<Q", (work / "windowed" / "site.journal").read_bytes(), 112)[0] // 16}


def main(argv: list[str]) -> int:
    if JOURNAL_REMOTE is None:
        print("systemd-journal-remote is not installed; install the Debian package systemd-journal-remote "
              "(apt-get install systemd-journal-remote): this bench writes real journal files with it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        phases = capture(Path(tmp))
        print(f"daemon stdout/stderr by phase (each line stamped on arrival; steady phases {PHASE_S:g} s):")
        print(f"{'phase':<22} {'seconds':>8} {'lines':>6} {'lines/min':>10} {'bytes':>7}")
        for name, seconds, lines in phases:
            print(f"{name:<22} {seconds:8.1f} {len(lines):6d} {60 * len(lines) / seconds:10.2f} "
                  f"{sum(len(line.encode()) + 1 for _, line in lines):7d}")
        for name, _, lines in phases:  # what each phase logged (a steady phase's: the first few, periodic or not)
            if lines:
                shown = [f"+{at:5.1f}s {line[24 if LOGGING_LINE.match(line) else 0:][:130]}" for at, line in lines[:10]]
                print(f"  {name}:\n    " + "\n    ".join(shown))
        by_name = {name: (seconds, lines) for name, seconds, lines in phases}
        window_s = device_window_s()
        # The device (stream entries, the image's writeback) and two same-run peers that change one thing each.
        day = day_on_card(Path(tmp) / "device", by_name, stream_entry, window_s)
        at_30s = day_on_card(Path(tmp) / "stream-30s", by_name, stream_entry, KERNEL_DEFAULT_WINDOW_S)
        before = day_on_card(Path(tmp) / "native-30s", by_name, native_entry, KERNEL_DEFAULT_WINDOW_S)
    print(f"\nday model: 24 h, {len(MEETINGS)} meetings of 2 h (09:00, 14:00) with {FLOOR_TURNS} floor turns each "
          f"({SPEAKING_S / 60:g} min each), idle the rest: {day['lines']:,} lines")
    print(f"journal file: data hash table {day['buckets']:,} buckets, " + (
        "as journald's for SystemMaxFileSize=8M" if day["device_sized"] else
        "journal-remote's default (could not size it as the device's: unshare/mount need root)"))
    print(f"{'per day':<64} {'windows':>7} {'bytes':>11} {'vs text':>8}")
    text = day["text"]
    for label, windows, value in (
            ("plain text log, the lines' raw bytes", "", text),
            ("journal file growth (bytes in use)", "", day["growth"]),
            ("journal, the day's entries in one batch (pages)", 1, day["batch"]),
            (f"before: native entries (JournalHandler), {KERNEL_DEFAULT_WINDOW_S:g}-s writeback", before["windows"],
             before["card"]),
            (f"stream entries, the kernel's default {KERNEL_DEFAULT_WINDOW_S:g}-s writeback", at_30s["windows"],
             at_30s["card"]),
            (f"THE DEVICE: stream entries, {window_s / 60:g}-min writeback (sysctl.d)", day["windows"], day["card"])):
        print(f"{label:<64} {windows!s:>7} {value:11,d} {value / text if text else float('nan'):8.2f}")
    mean = day["card"] / max(1, day["windows"])
    print(f"device: journal pages per writeback, mean {mean / PAGE:.1f}, max {day['max_pages']}; "
          f"against before: x{day['card'] / before['card']:.2f}; against the stream at 30 s: x{day['card'] / at_30s['card']:.2f}")
    print(f"once per boot, not in the day: the daemon's start-up, {day['startup'][0]} entries, {day['startup'][1]:,} "
          "bytes to the card (first window of a new file); the whole boot log ~1.2 MB (QEMU, docs/performance.md)")
    met = day["card"] <= TARGET_BYTES
    print(f"target: journal bytes to the card per day in normal operation <= {TARGET_BYTES / 1e6:g} MB: "
          f"{day['card'] / 1e6:.3f} MB, " + ("met" if met else "MISSED"))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
