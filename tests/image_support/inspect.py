"""Open a built image the way build-image does (no FAT mount, no partition nodes) to look inside."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512


@dataclass
class Opened:
    """A built image with its root mounted. In the A/B layout `root` is root A (p5) and the boot
    partition is boot A (p2); p1 holds autoboot.txt. In the single layout: p1 boot, p2 root."""
    image: Path
    root: Path
    partitions: list[dict]

    @property
    def ab(self) -> bool:
        return is_ab(self.partitions)

    def partition(self, number: int) -> dict:
        return next(part for part in self.partitions if part["number"] == number)

    def fat_file(self, number: int, name: str) -> str:
        offset = self.partition(number)["start"] * SECTOR
        return subprocess.run(["mtype", "-i", f"{self.image}@@{offset}", f"::/{name}"], check=True,
                              capture_output=True, text=True).stdout

    def boot_file(self, name: str) -> str:
        """A file of the boot partition the image boots first (boot A in the A/B layout)."""
        return self.fat_file(2 if self.ab else 1, name)

    def read(self, number: int, length: int | None = None) -> bytes:
        part = self.partition(number)
        with open(self.image, "rb") as handle:
            handle.seek(part["start"] * SECTOR)
            return handle.read(part["size"] * SECTOR if length is None else length)


def is_ab(parts: list[dict]) -> bool:
    """The A/B layout: an extended partition holding the roots and the data."""
    return any(part["type"] in ("5", "f", "85") for part in parts)


def partitions(image: Path) -> list[dict]:
    """sfdisk's partitions, each with its `number` (p5 is the first logical partition)."""
    out = subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True, text=True).stdout
    parts = json.loads(out)["partitiontable"]["partitions"]
    for part in parts:
        part["number"] = int(re.search(r"(\d+)$", part["node"]).group(1))
    return parts


def root_partition(parts: list[dict]) -> dict:
    """Root A (p5) in the A/B layout, the root (p2) in the single one: the first Linux partition."""
    return next(part for part in parts if part["type"] == "83")


@contextlib.contextmanager
def opened(xz_image: Path, workdir: Path, writable: bool = False) -> Iterator[Opened]:
    """Unpack the .img.xz into workdir and mount its root; always detach and unmount afterwards."""
    image = workdir / xz_image.name.removesuffix(".xz")
    if not image.exists():
        with open(image, "wb") as handle:
            subprocess.run(["xz", "-dc", "-T0", str(xz_image)], stdout=handle, check=True)
    parts = partitions(image)
    root_part = root_partition(parts)
    mount_point = Path(tempfile.mkdtemp(prefix="root.", dir=workdir))
    device = subprocess.run(["losetup", "--find", "--show", "--offset", str(root_part["start"] * SECTOR),
                             "--sizelimit", str(root_part["size"] * SECTOR),
                             *([] if writable else ["--read-only"]), str(image)],
                            check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", *([] if writable else ["-o", "ro"]), device, str(mount_point)],
                       check=True)
        try:
            yield Opened(image, mount_point, parts)
        finally:
            subprocess.run(["umount", "-R", str(mount_point)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def loop_devices_for(path_fragment: str) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if path_fragment in line]


def mounts_under(path_fragment: str) -> list[str]:
    with open("/proc/mounts") as handle:
        return [line for line in handle if path_fragment in line]


def tree(root: Path) -> dict[str, tuple]:
    """Every path with type, mode, owner, size, content hash or link target, and mtime."""
    import hashlib
    import os
    import stat

    entries = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [".", *dirnames, *sorted(filenames)]:
            path = os.path.normpath(os.path.join(directory, name))
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            else:
                content = ""
            relative = os.path.relpath(path, root)
            entries[relative] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                                 info.st_size if not stat.S_ISDIR(info.st_mode) else 0, content,
                                 int(info.st_mtime))
    return entries


def tree_differences(first: dict, second: dict, limit: int = 20) -> list[str]:
    paths = sorted(set(first) | set(second))
    return [f"{path}: {first.get(path)} != {second.get(path)}" for path in paths
            if first.get(path) != second.get(path)][:limit]
