"""The image's own RAUC configuration run on this machine, against its slots copied to files.

`rauc service` on a private system bus (as appliance_dev/rauc_rig.py does) with the image's
/etc/rauc/system.conf, changed only where a file must stand in for a device: each slot's
/dev/disk/by-partuuid/<disk>-0N becomes a copy of that partition, the keyring, the status file and the
boot-chooser's autoboot.txt (a copy of p1's) live in a temporary directory. The post-install handler
and the boot-chooser are the image's own (the handler from the image, the chooser from this checkout,
as the image's venv has it). What it cannot show: the kernel (no device-mapper here, so verity bundles
do not install; plain ones do) and the firmware.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from appliance_dev.rauc_rig import DBUS_CONF
from appliance_dev.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
SECTOR = 512


def copy_partition(image: Path, part: dict, target: Path) -> Path:
    subprocess.run(["dd", f"if={image}", f"of={target}", "bs=1M", f"skip={part['start'] * SECTOR}",
                    f"count={part['size'] * SECTOR}", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"],
                   check=True)
    with open(target, "r+b") as handle:
        handle.truncate(part["size"] * SECTOR)
    return target


class ImageRauc:
    def __init__(self, opened, work: Path, booted: str = "A") -> None:
        self.dir = work
        self.booted = booted
        root = opened.root
        parts = {part["number"]: part for part in opened.partitions}
        conf = (root / "etc/rauc/system.conf").read_text()
        self.files: dict[int, Path] = {}
        for number in (2, 3, 5, 6):
            self.files[number] = copy_partition(opened.image, parts[number], work / f"p{number}.img")
            conf = re.sub(rf"/dev/disk/by-partuuid/[0-9a-f]{{8}}-0{number}\b", str(self.files[number]), conf)
        self.autoboot = work / "autoboot.txt"
        self.autoboot.write_text(opened.fat_file(1, "autoboot.txt"))
        self.cmdline = work / "cmdline"
        self.cmdline.write_text(opened.boot_file("cmdline.txt"))
        shutil.copy(root / "etc/rauc/keyring.pem", work / "keyring.pem")
        shutil.copy(root / "usr/lib/rapat-appliance/rauc-post-install", work / "rauc-post-install")
        backend = work / "rapat-tryboot"
        backend.write_text(f"#!/bin/sh\nexport RAPAT_AUTOBOOT={self.autoboot} RAPAT_CMDLINE={self.cmdline} "
                           f"PYTHONPATH={REPO}\nexec {sys.executable} -m appliance.adapters.tryboot \"$@\"\n")
        backend.chmod(0o755)
        self.original_conf = conf
        conf = conf.replace("/etc/rauc/keyring.pem", str(work / "keyring.pem"))
        conf = conf.replace("/usr/lib/rapat-appliance/rauc-post-install", str(work / "rauc-post-install"))
        conf = conf.replace("/opt/rapat-appliance/bin/rapat-tryboot", str(backend))
        conf = re.sub(r"statusfile=.*", f"statusfile={work}/status.raucs", conf)
        self.conf = work / "system.conf"
        self.conf.write_text(conf)
        (work / "mnt").mkdir()
        self.bus = work / "bus"
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus}"}
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> ImageRauc:
        (self.dir / "dbus.conf").write_text(DBUS_CONF.format(socket=self.bus))
        self._processes.append(subprocess.Popen(["dbus-daemon", "--config-file", str(self.dir / "dbus.conf"),
                                                 "--nofork"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(self.bus.exists, 5, what="the private system bus")
        log = open(self.dir / "service.log", "wb")  # noqa: SIM115 - handed to the child
        self._processes.append(subprocess.Popen(
            ["rauc", f"--conf={self.conf}", f"--mount={self.dir / 'mnt'}", "service",
             f"--override-boot-slot={self.booted}"], env=self.env, stdout=log, stderr=log, cwd=self.dir))
        log.close()
        wait_until(lambda: self.rauc("status").returncode == 0, 15, what="rauc service")
        return self

    def __exit__(self, *_exc) -> None:
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def rauc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rauc", *args], env=self.env, capture_output=True, text=True, timeout=300)

    def fat_file(self, number: int, name: str) -> str:
        return subprocess.run(["mtype", "-i", str(self.files[number]), f"::/{name}"], check=True,
                              capture_output=True, text=True).stdout

    def log(self) -> str:
        return (self.dir / "service.log").read_text(errors="replace")


def missing_tools() -> list[str]:
    return [tool for tool in ("rauc", "mksquashfs", "dbus-daemon", "mtype", "mcopy") if not shutil.which(tool)]
