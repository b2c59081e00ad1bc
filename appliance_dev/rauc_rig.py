"""A RAUC device in a directory, for the update tests and benchmarks: real `rauc` and `rauc service`
on a private system bus, A/B root slots as ext4 image files, the product's boot-chooser
(adapters/tryboot.py) on an autoboot.txt file, and bundles built and signed with real `rauc bundle`.

Development tool; never installed on the Pi. What it cannot be is the Pi's firmware: which slot
boots is read from autoboot.txt by `firmware_boots`, as the firmware would, and `boot(slot)`
restarts the service as that boot would see it (`--override-boot-slot`, `rauc.slot=` in the
command line the backend reads). The QEMU tests (make test-slow) boot real kernels instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from appliance.adapters import tryboot
from appliance.media import proc
from appliance_dev.waiting import wait_until

COMPATIBLE = "rapat-appliance-rpi"
SLOT_MB = 8

DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
</busconfig>
"""

SYSTEM_CONF = """[system]
compatible={compatible}
bootloader=custom
bundle-formats=-crypt
statusfile={dir}/rauc.status
[handlers]
bootloader-custom-backend={dir}/rauc-tryboot
[keyring]
path={keyring}
check-purpose=codesign
[slot.rootfs.0]
device={dir}/rootfs.A.img
type=ext4
bootname=A
[slot.rootfs.1]
device={dir}/rootfs.B.img
type=ext4
bootname=B
"""


def missing_tools() -> list[str]:
    return [tool for tool in ("rauc", "mksquashfs", "mkfs.ext4", "debugfs", "dbus-daemon") if not shutil.which(tool)]


def ext4_image(path: Path, files: dict[str, str], size_mb: int = SLOT_MB) -> Path:
    """An ext4 image holding `files` ({path inside: text})."""
    tree = Path(tempfile.mkdtemp(prefix="rootfs-tree-"))
    try:
        for name, text in files.items():
            target = tree / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path), f"{size_mb}M"], check=True,
                       capture_output=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return path


def build_bundle(out: Path, version: str, cert: Path, key: Path, compatible: str = COMPATIBLE,
                 files: dict[str, str] | None = None, fmt: str = "plain", size_mb: int = SLOT_MB) -> Path:
    """A signed bundle (`fmt` plain or verity) whose root image holds /etc/rapat-version (and `files`).
    Built from a fresh directory each time: `rauc bundle` rewrites the manifest in its input."""
    content = Path(tempfile.mkdtemp(prefix="bundle-content-"))
    try:
        ext4_image(content / "rootfs.ext4", {"/etc/rapat-version": f"{version}\n", **(files or {})}, size_mb)
        _sign(content, "rootfs.ext4", out, version, cert, key, compatible, fmt)
    finally:
        shutil.rmtree(content, ignore_errors=True)
    return out


def build_delta_bundle(out: Path, image: Path, version: str, cert: Path, key: Path, compatible: str = COMPATIBLE,
                       fmt: str = "plain") -> tuple[Path, Path]:
    """A signed casync bundle of the root `image`: the bundle holds only the image's chunk index
    (`rootfs.ext4.caibx`); the chunks go to the store next to it (`<out>.castr`, RAUC's default place
    for a bundle installed from a URL). A device fetches from the store only the chunks its running
    slot lacks. Returns (bundle, store)."""
    store = out.with_suffix(".castr")
    content = Path(tempfile.mkdtemp(prefix="bundle-content-"))
    try:
        subprocess.run(["casync", "make", f"--store={store}", str(content / "rootfs.ext4.caibx"), str(image)],
                       check=True, capture_output=True)
        _sign(content, "rootfs.ext4.caibx", out, version, cert, key, compatible, fmt)
    finally:
        shutil.rmtree(content, ignore_errors=True)
    return out, store


def _sign(content: Path, root_image: str, out: Path, version: str, cert: Path, key: Path, compatible: str,
          fmt: str) -> None:
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat={fmt}\n\n"
        f"[image.rootfs]\nfilename={root_image}\n")
    out.unlink(missing_ok=True)
    subprocess.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}", str(content), str(out)], check=True,
                   capture_output=True)


def unsigned_bundle(out: Path, version: str = "9.9.9") -> Path:
    """What a bundle is without its signature: the squashfs alone."""
    content = Path(tempfile.mkdtemp(prefix="bundle-content-"))
    try:
        ext4_image(content / "rootfs.ext4", {"/etc/rapat-version": f"{version}\n"})
        (content / "manifest.raucm").write_text(f"[update]\ncompatible={COMPATIBLE}\nversion={version}\n")
        out.unlink(missing_ok=True)
        subprocess.run(["mksquashfs", str(content), str(out), "-noappend", "-quiet"], check=True, capture_output=True)
    finally:
        shutil.rmtree(content, ignore_errors=True)
    return out


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))


def read_file(image: Path, inside: str) -> str:
    """A file from an ext4 image, without mounting it."""
    result = subprocess.run(["debugfs", "-R", f"cat {inside}", str(image)], capture_output=True, text=True)
    return result.stdout


class RaucDevice:
    def __init__(self, keyring: Path, factory_version: str = "1.0.0", slot_mb: int = SLOT_MB) -> None:
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"the RAUC rig needs {', '.join(missing)} (apt: rauc rauc-service squashfs-tools "
                               "e2fsprogs dbus)")
        self.dir = Path(tempfile.mkdtemp(prefix="rauc-device-"))
        self.keyring = keyring
        self.system_conf = self.dir / "system.conf"
        self.autoboot = self.dir / "autoboot.txt"
        self.cmdline = self.dir / "cmdline"
        self.bus = self.dir / "system_bus_socket"
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus}"}
        self._dbus: subprocess.Popen | None = None
        self._service: subprocess.Popen | None = None
        self.booted = "A"
        for slot in ("A", "B"):
            ext4_image(self.dir / f"rootfs.{slot}.img", {"/etc/rapat-version": f"{factory_version}\n"} if slot == "A"
                       else {}, slot_mb)
        self.autoboot.write_text(tryboot.render("A", "A"))
        # RAUC passes no environment to its backend: the wrapper carries where the files are.
        backend = self.dir / "rauc-tryboot"
        backend.write_text(f"#!/bin/sh\nexport {tryboot.AUTOBOOT_ENV}={self.autoboot} RAPAT_CMDLINE={self.cmdline}\n"
                           f"exec {sys.executable} -m appliance.adapters.tryboot \"$@\"\n")
        backend.chmod(0o755)
        self.system_conf.write_text(SYSTEM_CONF.format(compatible=COMPATIBLE, dir=self.dir, keyring=keyring))
        (self.dir / "mnt").mkdir()

    def start(self) -> RaucDevice:
        (self.dir / "dbus.conf").write_text(DBUS_CONF.format(socket=self.bus))
        self._dbus = proc.spawn(["dbus-daemon", "--config-file", str(self.dir / "dbus.conf"), "--nofork"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.bus.exists, 5, what="the private system bus")
        self.boot(self.booted)
        return self

    def boot(self, slot: str, trial: bool = False) -> None:
        """(Re)start RAUC as a boot of `slot` would see it; `trial`: the firmware's one tryboot (the
        flag the updater reads from the command line in `$RAPAT_CMDLINE`, as under the QEMU harness)."""
        proc.kill(self._service, 2.0)
        self.booted = slot
        self.cmdline.write_text(f"console=ttyAMA0 rauc.slot={slot}{' rapat.tryboot=1' if trial else ''}\n")
        log = open(self.dir / "service.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._service = proc.spawn(["rauc", f"--conf={self.system_conf}", f"--mount={self.dir / 'mnt'}", "service",
                                        f"--override-boot-slot={slot}"], env=self.env, stdout=log, stderr=log,
                                       cwd=self.dir)
        finally:
            log.close()
        wait_until(lambda: self.rauc("status").returncode == 0, 10,
                   what=lambda: f"rauc service ({(self.dir / 'service.log').read_text()[-800:]})")

    def rauc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rauc", *args], env=self.env, capture_output=True, text=True, timeout=60)

    def firmware_boots(self, tryboot_flag: bool) -> str:
        normal, trial = tryboot.parse(self.autoboot.read_text())
        return trial if tryboot_flag else normal

    def slot_version(self, slot: str) -> str:
        return read_file(self.dir / f"rootfs.{slot}.img", "/etc/rapat-version").strip()

    def close(self) -> None:
        proc.kill(self._service, 2.0)
        proc.kill(self._dbus)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RaucDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
