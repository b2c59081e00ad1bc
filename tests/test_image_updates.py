"""A whole remote update of a booted A/B image in qemu-system-aarch64 (slow: `make test-slow`).

One image is built by image-build from a real Debian arm64 root with RAUC in it; its releases are
the build's own bundle signed again with a higher version (tests/image_support/update_lab.py). The
site runs the image's own units under real systemd; commands are signed by the console's key and
go through a real Mosquitto; bundles come from nginx. The only emulated part is the Raspberry Pi
firmware's choice of boot partition: the harness reads autoboot.txt on p1 and takes `[tryboot]`
when the guest's last reboot asked for it (`reboot "0 tryboot"`), `[all]` otherwise
(tests/image_support/qemu.py, `firmware_choice`).

In one run, in this order (each step needs the one before):
1. A power cut (qemu killed) in the middle of the download leaves slot A booting.
2. A power cut in the middle of RAUC's install into slot B leaves slot A booting.
3. The update completes: install into B, trial boot of B, kept (`update.committed`), B is now the
   firmware's normal boot.
4. A release whose daemon never becomes ready is installed into A, booted on trial, given back by
   the trial guard with no person involved, and the centre gets `update.rolled_back` with the reason
   from the old version, which boots again.
5. The journal kept on the data partition: the centre's `logs` shows what the broken trial boot
   logged before the rollback; one machine id across every boot; the bytes an idle site writes to
   its card in five minutes (qemu's disk counters), printed for docs/performance.md.
Then, from the factory image again:
6. A delta (casync) release: RAUC fetches from the store beside the bundle only the chunks the
   running slots lack; the trial boot keeps it. The bytes fetched are printed.
And once more from the factory image:
7. The journal of a meeting reaches the card in at most two writebacks, not one per active
   half-minute: the image's `vm.dirty_expire_centisecs` (15 min, journald's SyncIntervalSec) is in
   force, and journald's cgroup writes come in bursts that far apart. Bytes per burst are printed
   (about 40 min).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from appliance.console import update_keys
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.bundle_server import BundleServer
from appliance_dev.localnet import free_port
from appliance_dev.recorder import MqttRecorder
from tests.image_support import inspect, qemu, update_lab
from tests.support.site import ConsoleKey, meeting_body

SITE = "qemu-site"
GOOD, BROKEN, DELTA = "0.2.0", "0.3.0", "0.4.0"
HEALTH_TIMEOUT_S = 60
IDLE_S = 300  # the window in which an idle site's writes to its card are counted
WRITEBACK_S = 15 * 60  # the image's vm.dirty_expire_centisecs (systemd/sysctl.d/60-rapat-card-wear.conf)
BOOT_TIMEOUT_S = 900  # emulated arm64 on 2 cores; measured boot to READY: about 80 s
TOOLS = ["qemu-system-aarch64", "debootstrap", "qemu-aarch64-static", "rauc", "mksquashfs", "debugfs", "mcopy", "casync"]
_missing = [tool for tool in TOOLS if not shutil.which(tool)]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root (loop devices, mounts, chroot)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing {', '.join(_missing)} (make test-slow installs "
                                              "qemu-system-arm debootstrap qemu-user-static rauc squashfs-tools)"),
]


class Site:
    """The emulated site: its disk, the console log of each boot, and the broker's view of it."""

    def __init__(self, work: Path, disk: Path, kernel: Path, initrd: Path, observer: MqttRecorder) -> None:
        self.work, self.disk, self.kernel, self.initrd, self.observer = work, disk, kernel, initrd, observer
        self.boots: list[tuple[str, Path]] = []
        self.machine: subprocess.Popen | None = None

    def boot(self, trial: bool = False) -> str:
        """Power on; the harness plays the firmware. Returns the slot it chose."""
        slot, _, cmdline = qemu.firmware_choice(self.disk, trial=trial)
        log = self.work / f"boot-{len(self.boots) + 1}-{slot}{'-trial' if trial else ''}.log"
        self.boots.append((slot, log))
        self.qmp = self.work / f"qmp-{len(self.boots)}.sock"
        self.machine = qemu.start(self.disk, self.kernel, self.initrd, cmdline, log, qmp=self.qmp)
        return slot

    @property
    def log(self) -> Path:
        return self.boots[-1][1]

    def power_cut(self) -> None:
        assert self.machine is not None
        qemu.stop(self.machine)

    def rebooted_for_trial(self, timeout: float) -> bool:
        assert self.machine is not None
        return qemu.wait_for_reboot(self.log, self.machine, timeout)

    def state(self, predicate, timeout: float = BOOT_TIMEOUT_S, after: int = 0) -> dict:  # noqa: ANN001
        return self.observer.wait_for(lambda topic, payload: topic == site_topic(DEFAULT_TOPIC_PREFIX, SITE, "state")
                                      and isinstance(payload, dict) and predicate(payload), timeout, after)[1]

    def online_running(self, version: str, after: int) -> dict:
        """The first state from `after` on: online, running `version`, no update under way."""
        return self.state(lambda state: state.get("online") is True
                          and (state.get("software") or {}).get("running") == version
                          and (state.get("software") or {}).get("update") is None, after=after)

    def event(self, kind: str, after: int, timeout: float) -> dict:
        return self.observer.wait_for(lambda topic, payload: topic.endswith(f"/site/{SITE}/event")
                                      and isinstance(payload, dict) and payload.get("type") == kind, timeout, after)[1]

    def logs(self, key: ConsoleKey, lines: int) -> list[str]:
        """`appliance-console logs`: the signed command, then the reply's chunks in order."""
        command = key.command("logs", {"lines": lines}, to=[SITE])
        mark = self.observer.mark()
        self.observer.publish(site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd"), command)
        assert self.observer.ack_for(command["id"], SITE, timeout=60, after=mark)["ok"]
        reply_topic = f"{site_topic(DEFAULT_TOPIC_PREFIX, SITE, 'reply')}/{command['id']}"
        received: list[str] = []
        for seq in range(1000):
            chunk = self.observer.wait_for(lambda topic, payload, seq=seq: topic == reply_topic
                                           and isinstance(payload, dict) and payload.get("seq") == seq, 120, mark)[1]
            assert "error" not in chunk, chunk
            received += chunk["lines"]
            if chunk["last"]:
                return received
        raise AssertionError("no last chunk")

    def update_phase(self, phase: str, at_least: int, after: int, timeout: float) -> dict:
        def reached(state: dict) -> bool:
            update = (state.get("software") or {}).get("update") or {}
            return update.get("phase") == phase and update.get("progress", 0) >= at_least
        return self.state(reached, timeout, after)


def _journal_on_data_partition(disk: Path, work: Path, window: tuple[float, float] | None = None) -> dict:
    """The journal as the data partition (p7) holds it: machine directories, boots, bytes; with `window`
    (epoch seconds), the entries logged in it and their size in journalctl's export format."""
    part = next(part for part in inspect.partitions(disk) if part["number"] == 7)
    mount_point = work / "data"
    mount_point.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "ext4", "-o", f"ro,noload,offset={part['start'] * 512},sizelimit={part['size'] * 512}",
                    str(disk), str(mount_point)], check=True)
    try:
        machines = [path for path in (mount_point / "journal").iterdir() if path.is_dir()]
        boots = subprocess.run(["journalctl", f"--directory={machines[0]}", "--list-boots", "--no-pager"],
                               capture_output=True, text=True, check=True).stdout.strip().splitlines() if machines else []
        size = sum(path.stat().st_size for path in (mount_point / "journal").rglob("*.journal*"))
        found = {"machines": [path.name for path in machines], "boots": len(boots), "bytes": size}
        if window and machines:
            export = subprocess.run(["journalctl", f"--directory={machines[0]}", "--no-pager", "-o", "export",
                                     f"--since=@{int(window[0])}", f"--until=@{int(window[1])}"],
                                    capture_output=True, check=True).stdout
            found.update(window_entries=export.count(b"\n\n"), window_export_bytes=len(export))
        return found
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _written_per_day(console_log: str, since: float, until: float) -> dict[str, float]:
    """Bytes a day each unit wrote to the disk between `since` and `until`, from the lab-only probe's
    `lab-io <epoch> <unit> <cgroup io.stat>` lines on the serial console (update_lab.IO_PROBE)."""
    samples: dict[str, list[tuple[int, int]]] = {}
    for at, unit, stat in re.findall(r"lab-io (\d+) (\S+) ([^\r\n]*)", console_log):
        samples.setdefault(unit, []).append((int(at), sum(int(n) for n in re.findall(r"wbytes=(\d+)", stat))))
    rates = {}
    for unit, points in samples.items():
        inside = [(at, written) for at, written in points if since <= at <= until]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            rates[unit] = (inside[-1][1] - inside[0][1]) * 86400 / (inside[-1][0] - inside[0][0])
    return rates


def _write_bursts(console_log: str, unit: str, gap_s: float = 60) -> list[tuple[int, int]]:
    """(time, bytes) of each burst of `unit`'s writes to the disk: rises of its io.stat wbytes in the
    probe's 20-s samples, rises less than `gap_s` apart counted as one."""
    points = [(int(at), sum(int(n) for n in re.findall(r"wbytes=(\d+)", stat)))
              for at, name, stat in re.findall(r"lab-io (\d+) (\S+) ([^\r\n]*)", console_log) if name == unit]
    bursts: list[list[int]] = []
    for (_, before), (at, after) in itertools.pairwise(points):
        if after > before:
            if bursts and at - bursts[-1][0] < gap_s:
                bursts[-1][1] += after - before
            else:
                bursts.append([at, after - before])
    return [(at, written) for at, written in bursts]


def update_command(key: ConsoleKey, bundle: Path, url: str) -> dict:
    data = bundle.read_bytes()
    return key.command("update", {"version": bundle.name.removeprefix("rapat-").removesuffix(".raucb"), "url": url,
                                  "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                  "allow_downgrade": False}, to=[SITE], ttl_s=3600)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # noqa: ANN201
    work = tmp_path_factory.mktemp("update-lab")
    ca, ca_key = update_keys.make_update_ca()
    cert, key = update_keys.make_signing_cert(ca, ca_key)
    pki = {}
    for name, data in (("ca", ca), ("signing", cert), ("signing-key", key)):
        pki[name] = work / f"{name}.pem"
        pki[name].write_bytes(data)
    console_key = ConsoleKey()
    built = update_lab.build(work, broker_port=free_port(), console_public_b64=console_key.public_b64, pki=pki,
                             health_timeout_s=HEALTH_TIMEOUT_S)
    releases = work / "releases"
    releases.mkdir()
    good = update_lab.release(built, releases, GOOD)
    broken = update_lab.release(built, releases, BROKEN, broken=True)
    delta = update_lab.release(built, releases, DELTA, delta=True)
    return built, console_key, good, broken, delta


@contextlib.contextmanager
def _booted_lab(built, releases: Path, tmp_path: Path, probe: bool = False):  # noqa: ANN001, ANN202
    """The build's image with a site file on its boot partition, a broker on the lab's port, nginx at
    full speed and at 1 MB/s serving the releases: (site, observer, {server: URL}, fast, slow, disk).
    `probe`: the factory slot gets the lab's write probe too (releases always have it)."""
    broker = Mosquitto(tmp_path / "broker", port=built.broker_port).start()
    observer = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    fast = BundleServer(releases).start()
    slow = BundleServer(releases, rate="1m").start()  # 1 MB/s: a download long enough to cut
    url = {server: f"http://10.0.2.2:{server.port}/" for server in (fast, slow)}
    site = None
    try:
        with inspect.opened(built.image_xz, tmp_path, writable=probe) as image:
            if probe:
                update_lab.install_probe(image.root)
            kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
            shutil.copy(next(image.root.glob("boot/vmlinuz-*")), kernel)
            shutil.copy(next(image.root.glob("boot/initrd.img-*")), initrd)
            disk = image.image
        site_file = tmp_path / "appliance-site.toml"
        site_file.write_text(f'[site]\nid = "{SITE}"\nkind = "desa"\n')
        subprocess.run(["mcopy", "-i", f"{disk}@@{image.partitions[0]['start'] * 512}", str(site_file), "::/"], check=True)
        site = Site(tmp_path, disk, kernel, initrd, observer)
        yield site, observer, url, fast, slow, disk
    finally:
        if site is not None and site.machine is not None:
            site.power_cut()
        observer.close()
        fast.close()
        slow.close()
        broker.stop()


def test_power_cuts_then_a_kept_update_then_a_broken_one_given_back(lab, tmp_path: Path) -> None:
    built, console_key, good, broken, _ = lab
    command_topic = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd")
    with _booted_lab(built, good.parent, tmp_path) as (site, observer, url, fast, slow, disk):
        timings: dict[str, float] = {}

        # 1. A power cut in the middle of the download.
        mark = observer.mark()
        assert site.boot() == "A"
        site.online_running(update_lab.FACTORY_VERSION, mark)
        mark = observer.mark()
        command = update_command(console_key, good, url[slow] + good.name)
        observer.publish(command_topic, command)
        assert observer.ack_for(command["id"], SITE, timeout=60, after=mark)["ok"]
        site.update_phase("downloading", 5, mark, timeout=300)
        site.power_cut()
        mark = observer.mark()
        assert site.boot() == "A"  # autoboot.txt untouched
        site.online_running(update_lab.FACTORY_VERSION, mark)

        # 2. A power cut in the middle of the install into slot B.
        mark = observer.mark()
        command = update_command(console_key, good, url[fast] + good.name)
        started = time.monotonic()
        observer.publish(command_topic, command)
        assert observer.ack_for(command["id"], SITE, timeout=60, after=mark)["ok"]
        assert site.event("update.downloaded", mark, timeout=600)["version"] == GOOD
        site.update_phase("installing", 1, mark, timeout=600)
        site.power_cut()
        mark = observer.mark()
        assert site.boot() == "A"
        site.online_running(update_lab.FACTORY_VERSION, mark)

        # 3. The whole update: install, trial boot of B, kept.
        mark = observer.mark()
        command = update_command(console_key, good, url[fast] + good.name)
        started = time.monotonic()
        observer.publish(command_topic, command)
        assert site.event("update.installed", mark, timeout=1800)["version"] == GOOD
        assert site.rebooted_for_trial(timeout=300) is True
        assert site.boot(trial=True) == "B"
        committed = site.event("update.committed", mark, timeout=BOOT_TIMEOUT_S)
        timings["command to committed"] = time.monotonic() - started
        assert committed["version"] == GOOD
        site.online_running(GOOD, mark)
        site.power_cut()  # only to look at the disk: the firmware's normal boot is B now
        assert qemu.firmware_choice(disk, trial=False)[0] == "B"
        mark = observer.mark()
        assert site.boot() == "B"
        site.online_running(GOOD, mark)

        # 4. A release whose daemon never becomes ready: given back by itself.
        mark = observer.mark()
        command = update_command(console_key, broken, url[fast] + broken.name)
        observer.publish(command_topic, command)
        assert site.event("update.installed", mark, timeout=1800)["version"] == BROKEN
        assert site.rebooted_for_trial(timeout=300) is True
        assert site.boot(trial=True) == "A"
        trial_started = time.monotonic()
        # No person involved: the trial guard reboots normally, the firmware boots B again.
        assert site.rebooted_for_trial(timeout=HEALTH_TIMEOUT_S + 180 + BOOT_TIMEOUT_S) is False
        timings["broken trial boot to reboot"] = time.monotonic() - trial_started
        trial_log = site.log.read_text(errors="replace")
        assert "this release hangs on purpose" in trial_log
        assert re.search(r"trial guard restarted the previous version", trial_log)
        assert site.boot() == "B"
        rolled_back = site.event("update.rolled_back", mark, timeout=BOOT_TIMEOUT_S)
        assert rolled_back["version"] == BROKEN and rolled_back["running"] == GOOD
        assert "trial guard" in rolled_back["reason"]
        site.online_running(GOOD, mark)

        # 5. The journal on the data partition: what the broken trial boot logged, before the
        # rollback, is read from the centre afterwards (issue 14: logs across reboots).
        lines = site.logs(console_key, 5000)
        assert any("this release hangs on purpose" in line for line in lines), lines[-20:]
        assert any("trial guard restarted the previous version" in line for line in lines), lines[-20:]
        # What an idle site writes to its card: qemu's own counter of the disk's written bytes.
        written, started, window_start = qemu.block_writes(site.qmp), time.monotonic(), time.time()
        time.sleep(IDLE_S)
        written, idle = qemu.block_writes(site.qmp) - written, time.monotonic() - started
        timings["card bytes per idle day"] = written * 86400 / idle
        for unit, per_day in _written_per_day(site.log.read_text(errors="replace"), window_start,
                                              window_start + idle).items():
            timings[f"{unit} card bytes per idle day"] = per_day
        # A clean restart (the centre's `reboot`): journald writes out what it holds, which a power cut
        # would lose (SyncIntervalSec=15min).
        mark = observer.mark()
        command = console_key.command("reboot", {"force": False}, to=[SITE])
        observer.publish(command_topic, command)
        assert observer.ack_for(command["id"], SITE, timeout=60, after=mark)["ok"]
        assert site.rebooted_for_trial(timeout=300) is False
        journal = _journal_on_data_partition(disk, tmp_path, (window_start, window_start + idle))
        assert len(journal["machines"]) == 1  # one machine id across every boot and both slots
        assert journal["boots"] >= len(site.boots) - 1  # every boot but the cut ones may lose their tail
        assert journal["bytes"] <= 48 << 20  # SystemMaxUse
        timings["journal bytes on the card"] = journal["bytes"]
        # What the journal was given while idle (a power cut loses up to SyncIntervalSec of it).
        timings["journal entries per idle day"] = journal.get("window_entries", 0) * 86400 / idle
        timings["journal export bytes per idle day"] = journal.get("window_export_bytes", 0) * 86400 / idle
        print(f"qemu update figures: {timings}")


def test_a_delta_release_fetches_only_what_the_running_slots_lack(lab, tmp_path: Path) -> None:
    """6. From the factory image, a delta (casync) release: the site checks the small bundle, RAUC fetches
    from the store beside it only the chunks slots A lack, B boots on trial and is kept."""
    built, console_key, good, _, delta = lab
    command_topic = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd")
    store_bytes = sum(path.stat().st_size for path in delta.with_suffix(".castr").rglob("*.cacnk"))
    with _booted_lab(built, delta.parent, tmp_path) as (site, observer, url, fast, _, _):
        mark = observer.mark()
        assert site.boot() == "A"
        site.online_running(update_lab.FACTORY_VERSION, mark)
        mark = observer.mark()
        started = time.monotonic()
        observer.publish(command_topic, update_command(console_key, delta, url[fast] + delta.name))
        assert site.event("update.installed", mark, timeout=1800)["version"] == DELTA
        installed = time.monotonic() - started
        sent = fast.sent()
        assert site.rebooted_for_trial(timeout=300) is True
        assert site.boot(trial=True) == "B"
        assert site.event("update.committed", mark, timeout=BOOT_TIMEOUT_S)["version"] == DELTA
        site.online_running(DELTA, mark)
    fetched = sum(size for _, size in sent)
    chunks = sum(1 for request, _ in sent if ".castr/" in request)
    print(f"qemu delta figures: {fetched} bytes fetched in {len(sent)} requests ({chunks} chunks) for a release whose "
          f"whole bundle is {good.stat().st_size} bytes and whose store is {store_bytes} bytes; command to installed "
          f"{installed:.0f} s")
    assert chunks and fetched < good.stat().st_size / 20, (fetched, good.stat().st_size)


def test_a_meeting_reaches_the_card_in_few_journal_writebacks(lab, tmp_path: Path) -> None:
    """7. From the factory image (with the lab's probe): after the boot's own log has been written back,
    a meeting with six floor turns over about six minutes logs its lines; journald's writes for them
    reach the card in at most two bursts, WRITEBACK_S apart: the kernel's expiry and journald's own
    15-min sync are not aligned, so one may split a meeting (seen: 90 KB 11 s after the meeting began,
    124 KB 15 min later). With the kernel's default (30 s) each active half-minute would be a burst of
    its own: twelve or more here."""
    built, console_key, good, _, _ = lab
    command_topic = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd")

    def send(kind: str, body: dict) -> None:
        command = console_key.command(kind, body, to=[SITE])
        mark = observer.mark()
        observer.publish(command_topic, command)
        assert observer.ack_for(command["id"], SITE, timeout=60, after=mark)["ok"], kind

    with _booted_lab(built, good.parent, tmp_path, probe=True) as (site, observer, _, _, _, _):
        mark = observer.mark()
        assert site.boot() == "A"
        site.online_running(update_lab.FACTORY_VERSION, mark)
        assert "lab-vm dirty_expire_centisecs 90000" in site.log.read_text(errors="replace")
        online_at = int(time.time())
        # The boot's log: written back about WRITEBACK_S after journald first dirtied the file (its flush
        # from RAM early in the boot may come first). The meeting starts once that is over and journald
        # has been quiet for a minute, so its pages are dirtied afresh.
        time.sleep(WRITEBACK_S + 60)
        quiet_deadline = time.monotonic() + 600
        while (bursts := _write_bursts(site.log.read_text(errors="replace"), "systemd-journald")) \
                and bursts[-1][0] > time.time() - 80:
            assert time.monotonic() < quiet_deadline, f"journald never went quiet: {bursts}"
            time.sleep(20)
        assert any(at >= online_at for at, _ in bursts), f"the boot's log was not written back by now: {bursts}"
        meeting_started = int(time.time())
        meeting = {**meeting_body("journal-day", host="10.0.2.2", auto_join=True), "floor": "moderated"}
        mark = observer.mark()
        send("meeting.start", meeting)
        site.state(lambda state: state.get("state") == "in_meeting", timeout=120, after=mark)
        for _ in range(6):
            send("floor.grant", {"meeting_id": meeting["meeting_id"]})
            time.sleep(30)
            send("floor.revoke", {"meeting_id": meeting["meeting_id"]})
            time.sleep(30)
        mark = observer.mark()
        send("meeting.end", {"meeting_id": meeting["meeting_id"]})
        site.state(lambda state: state.get("state") == "idle", timeout=120, after=mark)
        meeting_ended = int(time.time())
        time.sleep(max(0, meeting_started + WRITEBACK_S + 180 - time.time()))
        log = site.log.read_text(errors="replace")
        bursts = _write_bursts(log, "systemd-journald")
        after_boot = [(at, written) for at, written in bursts if at >= meeting_started]
        journal = site.logs(console_key, 400)
        figures = {"bursts": bursts, "meeting": (meeting_started, meeting_ended), "boot at": online_at,
                   "meeting lines in the journal": sum(1 for line in journal if "journal-day" in line or "floor" in line)}
        print(f"qemu journal figures: {figures}")
        assert after_boot, "the meeting's log never reached the card"
        assert len(after_boot) <= 2, after_boot
        assert all(later - earlier >= WRITEBACK_S - 120 for (earlier, _), (later, _) in itertools.pairwise(after_boot)), \
            after_boot
