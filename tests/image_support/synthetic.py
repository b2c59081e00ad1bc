"""A synthetic stand-in for a Raspberry Pi OS Lite image, made without mounting anything.

The official image cannot be downloaded here, so the tests build an image with the same shape:
an MBR with a FAT boot partition (config.txt, cmdline.txt as Pi OS ships them) and an ext4 root.
The root is either a real Debian bookworm arm64 tree (debootstrap, cached between runs because it
takes a minute or two) or a small stand-in tree of plain files for the fast tests. Only mkfs with
offsets, mtools and dd are used, because these machines cannot mount FAT and CI may not mount at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

MIRROR = os.environ.get("RAPAT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# python3 so the provisioning flow and `appliance check-config` run in the chroot; systemd so unit
# links and disabled services look as on Pi OS.
DEBOOTSTRAP_INCLUDE = ["python3", "systemd", "systemd-sysv", "ca-certificates"]
# A kernel for qemu's "virt" machine, and networkd as the stand-in for Pi OS's NetworkManager.
BOOTABLE_INCLUDE = ["linux-image-arm64", "kmod", "udev", "systemd-timesyncd"]
SECTOR = 512
BOOT_START = 8192  # Pi OS starts its boot partition at 4 MiB too
BOOT_MB = 64

PI_OS_CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID={diskid}-02 rootfstype=ext4 "
                 "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n")
PI_OS_CONFIG = "# Stand-in for Raspberry Pi OS config.txt\ndtparam=audio=on\nauto_initramfs=1\n[all]\n"
# Services Pi OS Lite enables that an appliance does not need; stand-ins so build-image can disable them.
PI_OS_SERVICES = ["bluetooth.service", "hciuart.service", "avahi-daemon.service", "triggerhappy.service",
                  "dphys-swapfile.service", "userconfig.service", "ModemManager.service"]


def cache_dir() -> Path:
    base = os.environ.get("RAPAT_IMAGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rapat-appliance-tests")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(*argv: str | os.PathLike, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in argv], check=True, **kwargs)


def debootstrap_root() -> Path:
    """A cached Debian bookworm arm64 root tree; built once (about 6 minutes) and reused. It has
    Debian's arm64 kernel and networking so the built image also boots in qemu-system-aarch64."""
    include = DEBOOTSTRAP_INCLUDE + BOOTABLE_INCLUDE
    key = hashlib.sha256(json.dumps([MIRROR, include]).encode()).hexdigest()[:12]
    root = cache_dir() / f"bookworm-arm64-{key}"
    if (root / ".complete").exists():
        make_pi_like(root)
        wired_network(root)
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run("debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
        f"--include={','.join(include)}", "bookworm", partial, MIRROR,
        stdout=subprocess.DEVNULL)
    limit_initramfs(partial)
    ensure_binfmt()
    try:
        run("chroot", partial, "/debootstrap/debootstrap", "--second-stage", stdout=subprocess.DEVNULL)
    finally:
        unmount_below(partial)
    (partial / "etc/apt/sources.list").write_text(f"deb {MIRROR} bookworm main\n")
    make_pi_like(partial)
    make_bootable(partial)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    (root / ".complete").write_text("ok\n")
    return root


def ensure_binfmt() -> None:
    """arm64 programs run through qemu-user-static only once binfmt_misc knows it; on a fresh machine
    binfmt_misc may not even be mounted (build-image does the same for itself)."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=False)
    if not (binfmt / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    if not (binfmt / "qemu-aarch64").exists():
        raise RuntimeError("qemu-aarch64 is not registered in binfmt_misc: install qemu-user-static binfmt-support")


def unmount_below(path: Path) -> None:
    """debootstrap mounts /proc and /sys in the target; never leave them (or cache them)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as handle:
        points = [line.split()[1] for line in handle if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def limit_initramfs(root: Path) -> None:
    """Only the drivers qemu's virt machine needs: the default (MODULES=most) takes over 20 minutes
    to pack under qemu-user emulation, this about one."""
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/rapat-qemu.conf").write_text("MODULES=list\n")
    # modules.d, not /etc/initramfs-tools/modules: that one is a conffile dpkg would ask about.
    modules = root / "usr/share/initramfs-tools/modules.d"
    modules.mkdir(parents=True, exist_ok=True)
    (modules / "rapat-qemu").write_text("virtio_mmio\nvirtio_pci\nvirtio_blk\next4\n")


def make_bootable(root: Path) -> None:
    wired_network(root)
    run("systemctl", f"--root={root}", "--quiet", "enable", "systemd-networkd.service")


def wired_network(root: Path) -> None:
    """qemu's user network by a static address: networkd 252's DHCP client failed under load ("Failed to
    configure DHCPv4 client: Device or resource busy", eth0 matched twice while udev renamed it) and left a
    booted guest without a network for good (seen in the QEMU update test). A Pi runs NetworkManager."""
    network = root / "etc/systemd/network/20-wired.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nName=en* eth*\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n")


def stand_in_root(dest: Path) -> Path:
    """A tiny root tree with the files build-image edits but no ARM programs (for fast tests)."""
    for sub in ("etc/systemd/system", "usr/lib/systemd/system", "usr/bin", "var/lib", "boot/firmware",
                "tmp", "proc", "sys", "dev", "run"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (dest / "etc/group").write_text("root:x:0:\naudio:x:29:\nvideo:x:44:\nrender:x:105:\n")
    (dest / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (dest / "etc/gshadow").write_text("root:*::\naudio:*::\nvideo:*::\nrender:*::\n")
    (dest / "etc/os-release").write_text('PRETTY_NAME="Stand-in bookworm"\nVERSION_CODENAME=bookworm\n')
    # A fixed machine id, as a root made by debootstrap has (systemd's postinst writes one).
    (dest / "etc/machine-id").write_text("54bc2d091a1646dbad56828de9252dd9\n")
    os.chmod(dest / "tmp", 0o1777)
    make_pi_like(dest)
    return dest


def make_pi_like(root: Path, diskid: str = "5e3da3da") -> None:
    """What Raspberry Pi OS Lite has and Debian lacks that build-image acts on (idempotent)."""
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\traspberrypi\n")
    (root / "etc/fstab").write_text(f"proc            /proc           proc    defaults          0       0\n"
                                    f"PARTUUID={diskid}-01  /boot/firmware  vfat    defaults          0       2\n"
                                    f"PARTUUID={diskid}-02  /               ext4    defaults,noatime  0       1\n")
    (root / "boot/firmware").mkdir(parents=True, exist_ok=True)
    unit_dir = root / "usr/lib/systemd/system"
    wants = root / "etc/systemd/system/multi-user.target.wants"
    unit_dir.mkdir(parents=True, exist_ok=True)
    wants.mkdir(parents=True, exist_ok=True)
    for name in PI_OS_SERVICES:
        (unit_dir / name).write_text(f"[Unit]\nDescription=Stand-in for Pi OS {name}\n[Service]\n"
                                     "ExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(f"/usr/lib/systemd/system/{name}")


def make_image(root: Path, image: Path, root_mb: int, diskid: str = "5e3da3da") -> Path:
    """Write an MBR image: FAT32 boot at 4 MiB with Pi OS's boot files, ext4 root from `root`."""
    work = image.with_suffix(".parts")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        boot_sectors = BOOT_MB * 1024 * 1024 // SECTOR
        root_start = BOOT_START + boot_sectors
        root_sectors = root_mb * 1024 * 1024 // SECTOR
        total = root_start + root_sectors
        with open(image, "wb") as handle:
            handle.truncate(total * SECTOR)
        layout = (f"label: dos\nlabel-id: 0x{diskid}\nunit: sectors\n\n"
                  f"start={BOOT_START}, size={boot_sectors}, type=c\n"
                  f"start={root_start}, size={root_sectors}, type=83\n")
        run("sfdisk", "--quiet", image, input=layout.encode())
        run("mkfs.vfat", "-F", "32", "-s", "1", "-n", "BOOTFS", "-i", diskid, "--offset", str(BOOT_START), image,
            str(boot_sectors * SECTOR // 1024), stdout=subprocess.DEVNULL)
        (work / "config.txt").write_text(PI_OS_CONFIG)
        (work / "cmdline.txt").write_text(PI_OS_CMDLINE.format(diskid=diskid))
        target = f"{image}@@{BOOT_START * SECTOR}"
        run("mcopy", "-i", target, work / "config.txt", work / "cmdline.txt", "::/")
        ext4 = work / "root.ext4"
        run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", root, "-E", "root_owner=0:0", ext4, f"{root_mb}M",
            env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})
        run("dd", f"if={ext4}", f"of={image}", "bs=1M", f"seek={root_start * SECTOR}", "oflag=seek_bytes",
            "conv=notrunc,sparse", "status=none")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
