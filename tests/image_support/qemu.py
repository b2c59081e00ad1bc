"""Boot a built image in qemu-system-aarch64 ("virt" machine) with Debian's arm64 kernel.

The Raspberry Pi firmware is not emulated: qemu loads the kernel and initrd that the synthetic root
carries, with the command line from the image's own cmdline.txt (so init=overlay-init is used when
the image has a read-only root). The root and boot partitions are found by PARTUUID as on a Pi.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from appliance_dev.waiting import wait_until

PI_ONLY_ARGUMENTS = re.compile(r"^(console=|quiet$|splash$|plymouth\.)")


def firmware_choice(disk: Path, trial: bool = False) -> tuple[str, int, str]:
    """Play the Raspberry Pi firmware's one choice on an A/B disk (the one emulated part of the QEMU
    update tests): read autoboot.txt on p1, take `[tryboot] boot_partition` on a trial boot (the
    one-shot flag `reboot "0 tryboot"` sets) and `[all]` otherwise, and read that partition's
    cmdline.txt. Returns (slot, boot partition, guest command line); a trial boot's command line
    carries `rapat.tryboot=1`, which the updater reads where a Pi has
    /proc/device-tree/chosen/bootloader/tryboot."""
    from appliance.adapters import tryboot

    parts = {number: part for number, part in enumerate(_partitions(disk), start=1)}
    autoboot = _mtype(disk, parts[1]["start"], "autoboot.txt")
    normal, on_trial = tryboot.parse(autoboot)
    slot = on_trial if trial else normal
    number = tryboot.PARTITIONS[slot]
    cmdline = guest_cmdline(_mtype(disk, parts[number]["start"], "cmdline.txt"))
    return slot, number, cmdline + (" rapat.tryboot=1" if trial else "")


def _partitions(disk: Path) -> list[dict]:
    import json

    out = subprocess.run(["sfdisk", "--json", str(disk)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


def _mtype(disk: Path, start: int, name: str) -> str:
    return subprocess.run(["mtype", "-i", f"{disk}@@{start * 512}", f"::/{name}"], check=True,
                          capture_output=True, text=True).stdout


def guest_cmdline(pi_cmdline: str) -> str:
    kept = [word for word in pi_cmdline.split() if not PI_ONLY_ARGUMENTS.match(word)]
    # The serial console is the only screen here; journald copies the daemon's log to it.
    return " ".join(kept + ["console=ttyAMA0", "systemd.journald.forward_to_console=1"])


def start(image: Path, kernel: Path, initrd: Path, cmdline: str, log: Path, qmp: Path | None = None) -> subprocess.Popen:
    """`qmp`: a Unix socket for QEMU's monitor protocol (block_writes reads the disk's counters)."""
    argv = ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
            "-accel", "tcg,thread=multi", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-drive", f"if=none,file={image},format=raw,id=disk", "-device", "virtio-blk-device,drive=disk",
            "-netdev", "user,id=net", "-device", "virtio-net-device,netdev=net",
            # A PCI watchdog, so RuntimeWatchdogSec= has hardware to drive as on the Pi.
            "-device", "i6300esb"]
    if qmp is not None:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    handle = open(log, "wb")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
    finally:
        handle.close()


def wait_for(log: Path, pattern: str, process: subprocess.Popen, timeout: float) -> str:
    """The console log once `pattern` is in it."""
    def console_when_matched() -> str | None:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        if process.poll() is not None:
            raise AssertionError(f"qemu exited ({process.returncode}) before {pattern!r}:\n{text[-4000:]}")
        return None

    return wait_until(console_when_matched, timeout, interval=2,
                      what=lambda: f"{pattern!r} in the console:\n{log.read_text(errors='replace')[-4000:]}")


def block_writes(qmp: Path) -> int:
    """Bytes the guest has written to its disk (the SD card on a Pi) since qemu started."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(qmp))
        reader = sock.makefile("r")
        json.loads(reader.readline())  # the greeting
        replies = []
        for command in ({"execute": "qmp_capabilities"}, {"execute": "query-blockstats"}):
            sock.sendall(json.dumps(command).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply or "error" in reply:
                    replies.append(reply)
                    break
    stats = replies[-1]["return"]
    return sum(device["stats"]["wr_bytes"] for device in stats)


REBOOT = re.compile(r"reboot: Restarting system(?: with command '([^']*)')?")


def wait_for_reboot(log: Path, process: subprocess.Popen, timeout: float) -> bool:
    """Wait until the guest reboots (qemu runs with -no-reboot, so it exits then); whether the
    reboot asked the firmware for a trial boot: the kernel prints the argument that `systemctl
    reboot --reboot-argument="0 tryboot"` passed, which a Pi's firmware reads as its one-shot flag."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no reboot within {timeout:g} s:\n{log.read_text(errors='replace')[-4000:]}") from None
    found = REBOOT.findall(log.read_text(errors="replace"))
    if not found:
        raise AssertionError(f"qemu exited ({process.returncode}) without a reboot:\n"
                             f"{log.read_text(errors='replace')[-4000:]}")
    return found[-1].split() == ["0", "tryboot"]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


available = shutil.which("qemu-system-aarch64") is not None
