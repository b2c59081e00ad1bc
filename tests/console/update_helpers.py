"""Small real RAUC bundles for the update tests: a squashfs image from random bytes, signed by `rauc bundle`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

COMPATIBLE = "rapat-appliance-rpi"


def build_bundle(out: Path, cert: Path, key: Path, version: str, fmt: str = "verity",
                 compatible: str = COMPATIBLE, payload_bytes: int = 12000) -> Path:
    """A signed bundle at `out` (a fresh input directory each time: `rauc bundle` rewrites the manifest)."""
    work = out.parent / f".{out.name}.d"
    tree, content = work / "tree", work / "content"
    tree.mkdir(parents=True)
    content.mkdir()
    (tree / "payload.bin").write_bytes(os.urandom(payload_bytes))  # random: every build has other bytes
    subprocess.run(["mksquashfs", str(tree), str(content / "rootfs.img"), "-noappend", "-quiet"], check=True,
                   capture_output=True)
    (content / "manifest.raucm").write_text(f"[update]\ncompatible={compatible}\nversion={version}\n\n"
                                            f"[bundle]\nformat={fmt}\n\n[image.rootfs]\nfilename=rootfs.img\n")
    subprocess.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}", str(content), str(out)], check=True,
                   capture_output=True)
    return out


def unsigned_bundle(out: Path) -> Path:
    """What a bundle is without its signature: the squashfs alone."""
    tree = out.parent / f".{out.name}.d"
    tree.mkdir(parents=True)
    (tree / "rootfs.img").write_bytes(os.urandom(12000))
    (tree / "manifest.raucm").write_text(f"[update]\ncompatible={COMPATIBLE}\nversion=9.9.9\n")
    subprocess.run(["mksquashfs", str(tree), str(out), "-noappend", "-quiet"], check=True, capture_output=True)
    return out


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))
