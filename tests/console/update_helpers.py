"""Small real RAUC bundles for the console's update tests (appliance_dev/rauc_rig.py builds them)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance_dev.rauc_rig import COMPATIBLE, flip_byte, unsigned_bundle
from appliance_dev.rauc_rig import build_bundle as _build

__all__ = ["COMPATIBLE", "build_bundle", "flip_byte", "unsigned_bundle"]


def build_bundle(out: Path, cert: Path, key: Path, version: str, fmt: str = "verity",
                 compatible: str = COMPATIBLE, payload_bytes: int = 12000) -> Path:
    """A signed bundle with random content: every build has other bytes (and another checksum)."""
    return _build(out, version, cert, key, compatible, files={"/payload.txt": os.urandom(payload_bytes).hex()},
                  fmt=fmt)
