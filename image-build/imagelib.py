"""Helpers for build-image: commands, cleanup, partitions, FAT files without mounting, trees.

Nothing here mounts FAT or needs loop partition nodes (`losetup -P`): these build machines have no
FAT driver and make no partition nodes, and CI runners may forbid both. The FAT boot partition is
edited with mtools at a byte offset, the ext4 root is attached with `losetup -o`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512


class BuildError(Exception):
    """A problem the user can act on; printed as one line without a traceback."""


def log(message: str) -> None:
    print(f"build-image: {message}", file=sys.stderr, flush=True)


def run(*argv: str | os.PathLike, capture: bool = False, env: dict | None = None,
        input: bytes | None = None, ok: tuple[int, ...] = (0,)) -> str:
    args = [str(arg) for arg in argv]
    result = subprocess.run(args, input=input, env=env, stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE)
    if result.returncode not in ok:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise BuildError(f"`{' '.join(args)}` failed ({result.returncode}): {' / '.join(detail)}")
    return result.stdout.decode() if capture else ""


class Cleanup:
    """A stack of undo steps that runs on success, on error and on SIGINT/SIGTERM/SIGHUP, so a failed
    build never leaves loop devices or mounts behind."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def __enter__(self) -> Cleanup:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        return self

    @staticmethod
    def _on_signal(signum: int, _frame) -> None:
        raise BuildError(f"interrupted by signal {signal.Signals(signum).name}")

    def push(self, what: str, step: Callable[[], None]) -> None:
        self._steps.append((what, step))

    def pop(self, what: str) -> None:
        """Run the newest step now (it must be `what`), e.g. unmount before compressing."""
        name, step = self._steps.pop()
        assert name == what, (name, what)
        step()

    def mark(self) -> int:
        return len(self._steps)

    def unwind(self, mark: int) -> None:
        """Undo everything pushed since `mark`, newest first (e.g. the chroot's bind mounts)."""
        while len(self._steps) > mark:
            self.pop(self._steps[-1][0])

    def __exit__(self, *_exc_info) -> None:
        # Signals during cleanup must not stop it half-way.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest
                log(f"cleanup: {what} failed: {exc}")


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.step, self.start = total, 0, time.monotonic()

    def __call__(self, message: str) -> None:
        self.step += 1
        log(f"[{self.step}/{self.total} +{time.monotonic() - self.start:.0f}s] {message}")


@dataclass
class Partition:
    number: int
    start: int  # sectors
    size: int  # sectors
    type: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def bytes(self) -> int:
        return self.size * SECTOR


def partitions(image: Path) -> list[Partition]:
    try:
        table = json.loads(run("sfdisk", "--json", image, capture=True))["partitiontable"]
    except BuildError as exc:
        raise BuildError(f"{image}: no readable partition table ({exc})") from None
    return [Partition(index + 1, part["start"], part["size"], part["type"].lower())
            for index, part in enumerate(table.get("partitions", []))]


def attach(image: Path, part: Partition, cleanup: Cleanup, read_only: bool = False) -> str:
    args = ["losetup", "--find", "--show", "--offset", str(part.offset), "--sizelimit", str(part.bytes)]
    device = run(*args, *(["--read-only"] if read_only else []), image, capture=True).strip()
    cleanup.push(f"detach {device}", lambda: run("losetup", "--detach", device))
    return device


def mount(source: str, target: Path, cleanup: Cleanup, *options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    run("mount", *options, source, target)
    cleanup.push(f"unmount {target}", lambda: run("umount", target))


def fat_read(image: Path, part: Partition, name: str) -> str | None:
    result = subprocess.run(["mtype", "-i", f"{image}@@{part.offset}", f"::/{name}"],
                            capture_output=True)
    return result.stdout.decode() if result.returncode == 0 else None


def fat_write(image: Path, part: Partition, name: str, text: str, scratch: Path) -> None:
    local = scratch / name
    local.write_text(text)
    run("mcopy", "-o", "-i", f"{image}@@{part.offset}", local, f"::/{name}")


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Files the build touched get SOURCE_DATE_EPOCH as mtime, so two builds give the same tree."""
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime > epoch:
                    os.utime(path, (epoch, epoch), follow_symlinks=False)
            except FileNotFoundError:
                pass


def dpkg_versions(root: Path, names: list[str]) -> dict[str, str]:
    """Installed versions read from the image's dpkg database (no ARM code needs to run)."""
    status = root / "var/lib/dpkg/status"
    versions: dict[str, str] = {}
    if not status.exists():
        return versions
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") in names and "installed" in fields.get("Status", ""):
            versions[fields["Package"]] = fields.get("Version", "?")
    return versions
