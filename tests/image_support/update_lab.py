"""The parts of the QEMU update tests: an A/B image built by image-build from a real Debian arm64
root with RAUC in it, and release bundles made from the build's own bundle.

Only one image is built (the slow part). The releases after it are the build's bundle taken apart
with `rauc extract`, changed inside its root file system with debugfs (no mount), and signed again
with the fleet's signing key by `rauc bundle`, as the centre would sign a real release:

- `good`: the same software, a marker file, a higher version;
- `broken`: a higher version still, whose daemon never becomes ready (`appliance run` hangs before
  READY=1; every other `appliance` command works), so the trial guard has to give it back.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.image_support import synthetic

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "image-build/build-image"
SDE = 1764000000
FACTORY_VERSION = "0.1.0"  # what the flashed slot reports (the software's own version: no RAUC record)
# What the image holds besides the appliance: RAUC and what it needs; no Pi-only package, no audio engine.
APT = "python3-systemd rauc rauc-service casync mtools dbus"  # casync: RAUC runs it for delta bundles
# The lab image's fleet-wide defaults: the test machine's broker and update server as qemu's user
# network shows them (10.0.2.2), the console's key, no hardware, a short trial.
LAB_DEFAULTS = """[broker]
url = "mqtt://10.0.2.2:{port}"
[security]
console_public_key = "{key}"
allowed_media_hosts = ["10.0.2.2"]
[panel]
backend = "mock"
[camera]
backend = "none"
[display]
backend = "none"
[audio]
echo = "off"
[update]
allowed_hosts = ["10.0.2.2"]
health_timeout_s = {health_timeout_s}
"""
HANGING_RUN = """#!/bin/sh
# A broken release for the rollback test: the daemon never gets as far as READY=1.
if [ "${1:-}" = run ]; then
    echo "appliance: this release hangs on purpose (QEMU rollback test)" >&2
    exec sleep infinity
fi
exec /opt/rapat-appliance/bin/appliance.real "$@"
"""
APPLIANCE_BIN = "/opt/rapat-appliance/bin/appliance"
# Lab only, in every release: what journald and the daemon write, from their cgroups' io.stat (writeback of
# their dirty pages included), printed every 20 s on the serial console, which the harness keeps, and
# never into the journal being measured.
IO_PROBE = """#!/bin/sh
echo "lab-vm dirty_expire_centisecs $(cat /proc/sys/vm/dirty_expire_centisecs)"
while :; do
    for unit in systemd-journald appliance; do
        echo "lab-io $(date +%s) $unit $(tr '\\n' ' ' < /sys/fs/cgroup/system.slice/$unit.service/io.stat 2>&1)"
    done
    sleep 20
done
"""
IO_PROBE_UNIT = """[Unit]
Description=QEMU lab only: the journal's and the daemon's writes, on the serial console
[Service]
ExecStart=/usr/local/sbin/rapat-lab-io
StandardOutput=tty
TTYPath=/dev/console
[Install]
WantedBy=multi-user.target
"""
IO_ACCOUNTING = "[Manager]\nDefaultIOAccounting=yes\nDefaultMemoryAccounting=yes\n"
# Where the probe goes in a root file system (path: text, mode), and the link that enables it.
PROBE_FILES = {"/usr/local/sbin/rapat-lab-io": (IO_PROBE, 0o755),
               "/etc/systemd/system/rapat-lab-io.service": (IO_PROBE_UNIT, 0o644),
               "/etc/systemd/system.conf.d/rapat-lab-io.conf": (IO_ACCOUNTING, 0o644)}
PROBE_LINK = ("/etc/systemd/system/multi-user.target.wants/rapat-lab-io.service", "/etc/systemd/system/rapat-lab-io.service")
COMPATIBLE = "rapat-appliance-rpi"  # image-build's default (--compatible)


@dataclass
class Lab:
    image_xz: Path
    bundle: Path  # the build's own bundle (FACTORY_VERSION)
    keyring: Path
    cert: Path
    key: Path
    broker_port: int


def build(work: Path, *, broker_port: int, console_public_b64: str, pki: dict[str, Path],
          health_timeout_s: int = 60) -> Lab:
    root = synthetic.debootstrap_root()  # cached between runs
    image = synthetic.make_image(root, work / "base.img", root_mb=900)
    subprocess.run(["xz", "-T0", "-0", str(image)], check=True)
    base = work / "base.img.xz"
    defaults = work / "lab-defaults.toml"
    defaults.write_text(LAB_DEFAULTS.format(port=broker_port, key=console_public_b64,
                                            health_timeout_s=health_timeout_s))
    out = work / "out"
    result = subprocess.run(
        [sys.executable, str(BUILD), "--base", str(base), "--sha256", synthetic.sha256(base), "--out", str(out),
         "--xz-level", "0", "--read-only-root", "--apt-packages", APT, "--defaults", str(defaults),
         "--root-grow-mb", "64", "--data-mb", "512", "--version", FACTORY_VERSION,
         "--update-keyring", str(pki["ca"]), "--update-cert", str(pki["signing"]), "--update-key", str(pki["signing-key"])],
        capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(SDE)})
    if result.returncode != 0:
        raise AssertionError(f"build-image failed:\n{result.stderr[-4000:]}")
    base.unlink()
    name = f"rapat-appliance-{FACTORY_VERSION}"
    return Lab(out / f"{name}.img.xz", out / f"{name}.raucb", pki["ca"], pki["signing"], pki["signing-key"],
               broker_port)


def install_probe(root: Path) -> None:
    """The lab-only probe (PROBE_FILES) into a mounted root file system, e.g. the factory image's slot A."""
    for path, (text, mode) in PROBE_FILES.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    link, target = PROBE_LINK
    (root / link.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / link.lstrip("/")).symlink_to(target)


def _debugfs(image: Path, *requests: str) -> None:
    script = "\n".join(requests) + "\n"
    result = subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=script, capture_output=True, text=True)
    if result.returncode != 0 or "debugfs: " in result.stderr.replace("debugfs 1.", ""):
        raise AssertionError(f"debugfs on {image}: {result.stderr}")


def release(lab: Lab, work: Path, version: str, *, broken: bool = False, delta: bool = False) -> Path:
    """A signed bundle of `version` made from the build's own bundle; `broken`: its daemon hangs;
    `delta`: a casync bundle of the same images, with its chunk store beside it (`rapat-<version>.castr`),
    as image-build makes `<name>-delta.raucb`."""
    content = work / f"content-{version}"
    shutil.rmtree(content, ignore_errors=True)
    # The fleet's signing certificate is for code signing only: RAUC must be told to check that purpose.
    conf = work / "verify.conf"
    conf.write_text(f"[system]\ncompatible={COMPATIBLE}\nbootloader=noop\n\n"
                    f"[keyring]\npath={lab.keyring}\ncheck-purpose=codesign\n")
    result = subprocess.run(["rauc", f"--conf={conf}", "extract", str(lab.bundle), str(content)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"rauc extract {lab.bundle}: {result.stderr[-2000:]}")
    manifest = configparser.ConfigParser(interpolation=None)
    manifest.read(content / "manifest.raucm")
    compatible, bundle_format = manifest["update"]["compatible"], manifest["bundle"].get("format", "plain")
    rootfs = content / "rootfs.ext4"
    marker = work / f"release-{version}"
    marker.write_text(f"{version}\n")
    requests = [f"write {marker} /etc/rapat-test-release"]
    for path, (text, mode) in PROBE_FILES.items():
        local = work / Path(path).name
        local.write_text(text)
        local.chmod(mode)
    requests += ["mkdir /usr/local/sbin", "mkdir /etc/systemd/system.conf.d"]
    requests += [f"write {work / Path(path).name} {path}" for path in PROBE_FILES]
    requests += ["symlink {} {}".format(*PROBE_LINK)]
    if broken:
        hanging = work / "hanging-appliance"
        hanging.write_text(HANGING_RUN)
        requests += [f"ln {APPLIANCE_BIN} {APPLIANCE_BIN}.real", f"unlink {APPLIANCE_BIN}", f"write {hanging} {APPLIANCE_BIN}",
                     f"set_inode_field {APPLIANCE_BIN} mode 0100755"]
    _debugfs(rootfs, *requests)
    images = {"rootfs": "rootfs.ext4", "boot": "boot.vfat"}
    if delta:
        store = work / f"rapat-{version}.castr"
        shutil.rmtree(store, ignore_errors=True)
        for slot_class, index in (("rootfs", "rootfs.ext4.caibx"), ("boot", "boot.img.caibx")):
            subprocess.run(["casync", "make", f"--store={store}", str(content / index), str(content / images[slot_class])],
                           check=True, capture_output=True)
            (content / images[slot_class]).unlink()
            images[slot_class] = index
    # A fresh manifest: `rauc bundle` fills in the hashes and sizes of the changed images.
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\ndescription=qemu test release {version}\n\n"
        f"[bundle]\nformat={bundle_format}\n\n"
        f"[image.rootfs]\nfilename={images['rootfs']}\n\n[image.boot]\nfilename={images['boot']}\n")
    bundle = work / f"rapat-{version}.raucb"
    bundle.unlink(missing_ok=True)
    subprocess.run(["rauc", "bundle", f"--cert={lab.cert}", f"--key={lab.key}", str(content), str(bundle)],
                   check=True, capture_output=True, text=True)
    shutil.rmtree(content)
    return bundle
