"""The A/B layout for RAUC and the Raspberry Pi firmware's tryboot, and the update bundle.

    p1  FAT16  RAPAT     autoboot.txt (the firmware's choice), RAUC's slot states, the site file
    p2  FAT    bootfs    boot A: firmware, config.txt, kernel; cmdline.txt root=PARTUUID=<id>-05 rauc.slot=A
    p3  FAT    BOOTFS_B  boot B: cmdline.txt root=PARTUUID=<id>-06 rauc.slot=B (the rest comes with an update)
    p4  extended
    p5  ext4   rootfs    root A
    p6  (none)           root B: empty until the first update installs into it
    p7  ext4   rapat-data  /var/lib/appliance: never written by an update

The firmware's `boot_partition=` takes primary partitions only (1-4), so the two boot partitions are
primary and the roots and the data live in the extended partition. The disk identifier is the base
image's and stays fixed (Pi OS's firstboot, which would randomise it, is not run): system.conf and
both cmdline.txt name the partitions by PARTUUID.

Nothing here mounts FAT: the partitions are written with dd, mkfs.vfat --offset and mtools.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagelib import SECTOR, BuildError, Partition, fat_read, fat_write, partitions, run

MIB = 1024 * 1024
MIB_SECTORS = MIB // SECTOR
COMPATIBLE = "rapat-appliance-rpi"
AUTOBOOT_MB = 16
AUTOBOOT_LABEL = "RAPAT"
BOOT_B_LABEL = "BOOTFS_B"
AUTOBOOT_DIR = "/boot/autoboot"  # where p1 is mounted; adapters/tryboot.py's default autoboot.txt is here
BOOT_DIR = "/boot/firmware"  # the booted slot's boot partition (a generated mount: it is not static)
SLOTS = {"A": (2, 5), "B": (3, 6)}  # bootname -> (boot partition, root partition)
DATA_PARTITION = 7
RAUC_CONF = "/etc/rauc/system.conf"
RAUC_KEYRING = "/etc/rauc/keyring.pem"
RAUC_STATUS_DIR = "/var/lib/appliance/rauc"  # on the data partition: survives updates
TRYBOOT_BACKEND = "/opt/rapat-appliance/bin/rapat-tryboot"  # the venv's entry point (pyproject: rapat-tryboot)
POST_INSTALL = "/usr/lib/rapat-appliance/rauc-post-install"
GENERATOR = "/usr/lib/systemd/system-generators/rapat-boot-firmware"
HERE = Path(__file__).resolve().parent
FORMATS = ("verity", "plain")


@dataclass
class Layout:
    disk_id: str  # 8 lowercase hex digits, as in PARTUUID=<disk_id>-05
    autoboot: Partition
    boot_a: Partition
    boot_b: Partition
    root_a: Partition
    root_b: Partition
    data: Partition

    def partuuid(self, number: int) -> str:
        return f"{self.disk_id}-{number:02d}"


def autoboot_text(normal: str = "A", trial: str = "A") -> str:
    """autoboot.txt as adapters/tryboot.py renders it (A/B -> partition 2/3)."""
    return (f"[all]\ntryboot_a_b=1\nboot_partition={SLOTS[normal][0]}\n"
            f"[tryboot]\nboot_partition={SLOTS[trial][0]}\n")


def disk_id(image: Path) -> str:
    table = json.loads(run("sfdisk", "--json", image, capture=True))["partitiontable"]
    ident = str(table.get("id", "")).lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,8}", ident) or table.get("label") != "dos":
        raise BuildError(f"{image}: expected an MBR (dos) partition table with a disk identifier")
    return ident.rjust(8, "0")


def _round_up(sectors: int) -> int:
    return -(-sectors // MIB_SECTORS) * MIB_SECTORS


def _copy(source: Path, source_offset: int, target: Path, target_offset: int, length: int) -> None:
    run("dd", f"if={source}", f"of={target}", "bs=4M", f"skip={source_offset}", f"seek={target_offset}",
        f"count={length}", "iflag=skip_bytes,count_bytes", "oflag=seek_bytes", "conv=notrunc,sparse",
        "status=none")


def assemble(base: Path, image: Path, root_grow_mb: int, data_mb: int) -> Layout:
    """Write the A/B image from a Pi OS-shaped base (FAT boot p1, ext4 root p2): boot A and root A are
    copies of the base's, the root partitions have the root plus `root_grow_mb` each."""
    parts = partitions(base)
    if len(parts) != 2 or parts[0].type not in {"b", "c", "e", "6"} or parts[1].type != "83":
        raise BuildError(f"{base}: expected a Raspberry Pi OS layout (FAT boot, Linux root), got "
                         + ", ".join(f"p{p.number} type {p.type}" for p in parts))
    ident = disk_id(base)
    boot, root = parts
    boot_size = _round_up(boot.size)
    root_size = _round_up(root.size + root_grow_mb * MIB_SECTORS)
    starts, sizes = [], []
    position = boot.start  # 4 MiB, as Pi OS
    for size in (AUTOBOOT_MB * MIB_SECTORS, boot_size, boot_size):
        starts.append(position)
        sizes.append(size)
        position += size
    extended = position
    for size in (root_size, root_size, data_mb * MIB_SECTORS):  # one MiB before each for its EBR
        position += MIB_SECTORS
        starts.append(position)
        sizes.append(size)
        position += size
    with open(image, "wb") as handle:
        handle.truncate(position * SECTOR)
    types = ["e", boot.type, boot.type]
    script = [f"label: dos\nlabel-id: 0x{ident}\nunit: sectors\n"]
    script += [f"start={starts[i]}, size={sizes[i]}, type={types[i]}" for i in range(3)]
    script.append(f"start={extended}, size={position - extended}, type=5")
    script += [f"start={starts[i]}, size={sizes[i]}, type=83" for i in range(3, 6)]
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image, input=("\n".join(script) + "\n").encode())
    written = {p.number: p for p in partitions(image)}
    if sorted(written) != [1, 2, 3, 4, 5, 6, 7]:
        raise BuildError(f"sfdisk wrote partitions {sorted(written)}, expected 1-7")
    layout = Layout(ident, written[1], written[2], written[3], written[5], written[6], written[7])
    _copy(base, boot.offset, image, layout.boot_a.offset, boot.bytes)
    _copy(base, root.offset, image, layout.root_a.offset, root.bytes)
    volume = ident[-8:]
    for part, label, serial in ((layout.autoboot, AUTOBOOT_LABEL, f"{int(volume, 16) ^ 0x1:08x}"),
                                (layout.boot_b, BOOT_B_LABEL, f"{int(volume, 16) ^ 0x3:08x}")):
        # FAT16 for the small p1; FAT32 for boot B as for boot A (one sector per cluster below 256 MiB,
        # where the default cluster size leaves too few clusters for FAT32).
        fat = ["-F", "16"] if part is layout.autoboot else ["-F", "32", *(["-s", "1"] if part.bytes < 256 * MIB else [])]
        run("mkfs.vfat", *fat, "-n", label, "-i", serial,
            "--offset", str(part.start), image, str(part.bytes // 1024))
    return layout


def slot_cmdline(cmdline: str, layout: Layout, slot: str, read_only: bool, overlay_init: str) -> str:
    """The base's cmdline.txt for one slot: its own root by PARTUUID, `rauc.slot=` for RAUC and the
    boot-firmware generator, and no Pi OS firstboot (it would grow the last partition and give the
    disk a new identifier, which system.conf and cmdline.txt name)."""
    words = [word for word in cmdline.split() if not word.startswith(("root=", "init=", "rauc.slot="))]
    words.insert(0, f"root=PARTUUID={layout.partuuid(SLOTS[slot][1])}")
    words.append(f"rauc.slot={slot}")
    if read_only:
        words.append(f"init={overlay_init}")
    return " ".join(words) + "\n"


def configure_partitions(image: Path, layout: Layout, scratch: Path, read_only: bool, overlay_init: str) -> list[str]:
    """cmdline.txt of both slots and autoboot.txt (A normally and on a tryboot: nothing to try yet).
    Run after boot A's config.txt was changed."""
    cmdline = fat_read(image, layout.boot_a, "cmdline.txt")
    if cmdline is None:
        raise BuildError("the boot partition has no cmdline.txt; is --base a Raspberry Pi OS image?")
    changes = []
    for slot, part in (("A", layout.boot_a), ("B", layout.boot_b)):
        text = slot_cmdline(cmdline, layout, slot, read_only, overlay_init)
        fat_write(image, part, "cmdline.txt", text, scratch)
        changes.append(f"cmdline.txt of boot {slot} (p{part.number}): root=PARTUUID={layout.partuuid(SLOTS[slot][1])} "
                       f"rauc.slot={slot}" + (f" init={overlay_init}" if read_only else "") + " (no Pi OS firstboot)")
    fat_write(image, layout.autoboot, "autoboot.txt", autoboot_text("A", "A"), scratch)
    changes.append("autoboot.txt on p1: tryboot_a_b=1, boot_partition=2 (A), [tryboot] boot_partition=2")
    return changes


def system_conf(layout: Layout, compatible: str, bundle_format: str) -> str:
    """/etc/rauc/system.conf: root and boot slots by PARTUUID, the Pi firmware's tryboot as boot-chooser.
    A delta bundle is installed from its URL, which RAUC downloads itself: its limit (8 MiB by default)
    is raised for the chunk index of a large root; the daemon has checked the bundle's size already."""
    formats = "verity" if bundle_format == "verity" else "plain verity"
    lines = ["# rapat-appliance: written by image-build (docs/image.md, 'Updates')", "[system]",
             f"compatible={compatible}", "bootloader=custom", f"bundle-formats={formats}",
             f"max-bundle-download-size={64 * 1024 * 1024}",
             f"statusfile={RAUC_STATUS_DIR}/status.raucs", "", "[handlers]",
             f"bootloader-custom-backend={TRYBOOT_BACKEND}", f"post-install={POST_INSTALL}", "",
             "[keyring]", f"path={RAUC_KEYRING}", "check-purpose=codesign", ""]
    for index, slot in enumerate(("A", "B")):
        boot, root = SLOTS[slot]
        lines += [f"[slot.rootfs.{index}]", f"device=/dev/disk/by-partuuid/{layout.partuuid(root)}", "type=ext4",
                  f"bootname={slot}", "",
                  f"[slot.boot.{index}]", f"device=/dev/disk/by-partuuid/{layout.partuuid(boot)}", "type=vfat",
                  f"parent=rootfs.{index}", ""]
    return "\n".join(lines)


def _install(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


PROVISION_UNIT = "appliance-provision.service"
PROVISION_DROP_IN = f"etc/systemd/system/{PROVISION_UNIT}.d/10-rapat-ab.conf"


def install_root(root: Path, layout: Layout, keyring: Path | None, compatible: str, bundle_format: str) -> list[str]:
    """RAUC's configuration, its post-install handler, the generated /boot/firmware mount, fstab and
    the provisioning unit's site-file path (p1), in the mounted root."""
    conf = root / RAUC_CONF.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(system_conf(layout, compatible, bundle_format))
    conf.chmod(0o644)
    changes = [f"{RAUC_CONF}: compatible={compatible}, slots rootfs.0/1 (p5/p6), boot.0/1 (p2/p3), "
               f"tryboot backend, bundle-formats {bundle_format}"]
    if keyring:
        _install(keyring, root / RAUC_KEYRING.lstrip("/"), 0o644)
        changes.append(f"{RAUC_KEYRING}: the update CA ({keyring.name})")
    _install(HERE / "rauc-post-install", root / POST_INSTALL.lstrip("/"), 0o755)
    _install(HERE / "boot-firmware-generator", root / GENERATOR.lstrip("/"), 0o755)
    tmpfiles = root / "usr/lib/tmpfiles.d/rapat-rauc.conf"
    tmpfiles.parent.mkdir(parents=True, exist_ok=True)
    tmpfiles.write_text(f"# RAUC's status file lives on the data partition (image-build)\n"
                        f"d {RAUC_STATUS_DIR} 0755 root root -\n")
    (root / AUTOBOOT_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / BOOT_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    changes.append(f"{GENERATOR}: mounts the booted slot's boot partition (rauc.slot=) on {BOOT_DIR}")
    changes += _provision_drop_in(root)
    return changes


def _provision_drop_in(root: Path) -> list[str]:
    """The technician's site file goes on p1 (the same drive whichever slot runs; updates never write
    it): the provisioning unit's command line, with the site file's path changed, as a drop-in."""
    unit = root / "usr/lib/systemd/system" / PROVISION_UNIT
    if not unit.exists():
        return []
    exec_start = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    old = f"{BOOT_DIR}/appliance-site.toml"
    if len(exec_start) != 1 or old not in exec_start[0]:
        raise BuildError(f"{PROVISION_UNIT}: expected one ExecStart= naming {old}")
    new = exec_start[0].replace(old, f"{AUTOBOOT_DIR}/appliance-site.toml")
    drop_in = root / PROVISION_DROP_IN
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(
        "# image-build, A/B layout: the site file is read from the first FAT partition (RAPAT, mounted on\n"
        f"# {AUTOBOOT_DIR}), which is the same whichever slot boots and which no update writes.\n"
        "[Unit]\nAfter=boot-autoboot.mount\n\n"
        f"[Service]\nReadWritePaths={AUTOBOOT_DIR}\nExecStart=\n{new}\n")
    return [f"{PROVISION_UNIT}: site file from {AUTOBOOT_DIR}/appliance-site.toml (p1)"]


def fstab_lines(layout: Layout, lines: list[str], data_label: str) -> tuple[list[str], list[str]]:
    """fstab for the A/B layout: no static /boot/firmware (generated from rauc.slot=), p1 on
    /boot/autoboot, the data partition on /var/lib/appliance."""
    out, changes = [], []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == BOOT_DIR:
            changes.append(f"fstab: {BOOT_DIR} is mounted by {Path(GENERATOR).name} (the booted slot's boot)")
            continue
        if len(fields) >= 2 and fields[1] == "/" and not line.lstrip().startswith("#"):
            # systemd never mounts / from fstab, nor waits for its device: the options matter, not the name.
            fields[0] = "/dev/root"
            out.append("# / is the booted slot's root (root= in its cmdline.txt): p5 (A) or p6 (B)")
            line = "\t".join(fields)
            changes.append("fstab: / without a slot's PARTUUID")
        out.append(line)
    out.append(f"PARTUUID={layout.partuuid(1)}\t{AUTOBOOT_DIR}\tvfat\tdefaults,fmask=0077,dmask=0077,nofail\t0\t2")
    changes.append(f"fstab: p1 ({AUTOBOOT_LABEL}, autoboot.txt) on {AUTOBOOT_DIR}, root only")
    if not any(data_label in line for line in out):
        out.append(f"LABEL={data_label}\t/var/lib/appliance\text4\tdefaults,noatime,nofail\t0\t2")
        changes.append(f"fstab: data partition LABEL={data_label} on /var/lib/appliance")
    return out, changes


# --- the update bundle -------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_conf(keyring: Path, compatible: str, directory: Path) -> Path:
    """A system.conf for `rauc --conf=... info` with the device's keyring checks (check-purpose=codesign)."""
    conf = directory / "verify-system.conf"
    conf.write_text(f"[system]\ncompatible={compatible}\nbootloader=noop\n\n[keyring]\npath={keyring}\n"
                    "check-purpose=codesign\n")
    return conf


def make_bundle(image: Path, layout: Layout, out: Path, name: str, version: str, compatible: str,
                bundle_format: str, cert: Path, key: Path, keyring: Path | None, build_time: str,
                work: Path) -> dict:
    """`rauc bundle` of boot A (boot.vfat) and root A (rootfs.ext4) as the image holds them, signed;
    checked with `rauc info` against `keyring` when given. Beside it, the delta bundle of the same
    images (`<name>-delta.raucb`: casync chunk indexes) and its chunk store (`<name>-delta.castr/`).
    Returns the bundle's manifest."""
    content = Path(tempfile.mkdtemp(prefix="bundle.", dir=work))
    delta_content = Path(tempfile.mkdtemp(prefix="delta.", dir=work))
    try:
        images = {}
        for slot_class, part, filename in (("rootfs", layout.root_a, "rootfs.ext4"), ("boot", layout.boot_a, "boot.vfat")):
            _copy(image, part.offset, content / filename, 0, part.bytes)
            with open(content / filename, "r+b") as handle:
                handle.truncate(part.bytes)
            images[slot_class] = {"file": filename, "size": part.bytes, "sha256": _sha256(content / filename)}
        header = (f"[update]\ncompatible={compatible}\nversion={version}\ndescription={name}\nbuild={build_time}\n\n"
                  f"[bundle]\nformat={bundle_format}\n\n")
        # A fresh directory each build: `rauc bundle` rewrites the manifest in its input.
        (content / "manifest.raucm").write_text(header + "[image.rootfs]\nfilename=rootfs.ext4\n\n"
                                                "[image.boot]\nfilename=boot.vfat\n")
        signer, partial = _sign(content, out, name, cert, key, keyring, compatible, work)
        # The delta: RAUC 1.8 has no handler for `*.vfat.caibx` on a vfat slot; `*.img.caibx` is its raw
        # copy for any slot type, what `*.vfat` gets too.
        store = out / f"{name}-delta.castr"
        shutil.rmtree(store, ignore_errors=True)
        try:
            for filename, index in (("rootfs.ext4", "rootfs.ext4.caibx"), ("boot.vfat", "boot.img.caibx")):
                run("casync", "make", f"--store={store}", delta_content / index, content / filename)
            (delta_content / "manifest.raucm").write_text(header + "[image.rootfs]\nfilename=rootfs.ext4.caibx\n\n"
                                                          "[image.boot]\nfilename=boot.img.caibx\n")
            _, delta_partial = _sign(delta_content, out, f"{name}-delta", cert, key, keyring, compatible, work)
        except BaseException:
            partial.unlink(missing_ok=True)
            shutil.rmtree(store, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(content, ignore_errors=True)
        shutil.rmtree(delta_content, ignore_errors=True)
    bundle, delta = out / f"{name}.raucb", out / f"{name}-delta.raucb"
    os.replace(delta_partial, delta)
    os.replace(partial, bundle)
    store_bytes = sum(path.stat().st_size for path in store.rglob("*") if path.is_file())
    return {"name": name, "version": version, "compatible": compatible, "format": bundle_format,
            "build_time": build_time, "file": bundle.name, "size": bundle.stat().st_size, "sha256": _sha256(bundle),
            "signer": signer, "verified_with_keyring": bool(keyring), "images": images,
            "delta": {"file": delta.name, "size": delta.stat().st_size, "sha256": _sha256(delta),
                      "store": store.name, "store_bytes": store_bytes},
            "image_manifest": f"{name}.manifest.json"}


def _sign(content: Path, out: Path, name: str, cert: Path, key: Path, keyring: Path | None, compatible: str,
          work: Path) -> tuple[str, Path]:
    """`rauc bundle` of `content` into `out/.<name>.raucb.part`, checked against `keyring`; (signer, file)."""
    partial = out / f".{name}.raucb.part"
    partial.unlink(missing_ok=True)
    run("rauc", "bundle", f"--cert={cert}", f"--key={key}", content, partial)
    signer = ""
    if keyring:
        result = subprocess.run(["rauc", f"--conf={verify_conf(keyring, compatible, work)}", "info",
                                 "--output-format=json", str(partial)], capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            detail = [line for line in result.stderr.splitlines() if line.strip()][-1:]
            raise BuildError(f"the bundle does not verify against --update-keyring {keyring}: {' '.join(detail)} "
                             "(is --update-cert issued by that CA, with extendedKeyUsage codeSigning?)")
        match = re.search(r"Verified (?:detached|inline) signature by '([^']*)'", result.stderr + result.stdout)
        signer = match.group(1) if match else ""
    return signer, partial
