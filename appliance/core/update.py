"""Remote updates, the rules (pure): what an `update` command must carry, which versions a site
takes, the phases an update goes through and the health that keeps a new version.

The update engine is RAUC with two root slots (A/B) and the Raspberry Pi firmware's one-shot
`tryboot` (adapters/updater.py); the core decides *when*: download and install outside meetings,
reboot at the first idle moment (or in the maintenance window), keep the new slot only once it is
healthy, else go back. `update_flow.py` applies these rules to events.

    downloading -> verifying -> installing -> installed -> rebooting -> (boot) -> trying -> committed
         \\______________\\___________\\______________\\-> failed            \\-> rolled back (old slot)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DOWNLOADING = "downloading"
VERIFYING = "verifying"
INSTALLING = "installing"
INSTALLED = "installed"      # in the other slot, waiting for an idle moment to reboot into it
REBOOTING = "rebooting"
TRYING = "trying"            # booted into the new slot once; not kept until healthy
PHASES = (DOWNLOADING, VERIFYING, INSTALLING, INSTALLED, REBOOTING, TRYING)

DOWNLOADED_EVENT = "update.downloaded"
INSTALLED_EVENT = "update.installed"
COMMITTED_EVENT = "update.committed"
ROLLED_BACK_EVENT = "update.rolled_back"
FAILED_EVENT = "update.failed"

SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERSION = re.compile(r"^[0-9]+(\.[0-9]+){0,3}([-+~][0-9A-Za-z.]{1,32})?$")
MAX_BUNDLE_BYTES = 4 * 1024 ** 3   # an image's root file system is ~1-2 GB; more is a mistake
# Checks that must pass in the new version's own self-test, whatever the old one's said: without
# the broker the centre cannot reach the site any more, without the disk nothing is kept.
ALWAYS_REQUIRED_CHECKS = ("broker", "disk")


# A delta bundle (casync) carries chunk indexes instead of images; its chunks are in the store beside it.
DELTA_INDEX_SUFFIXES = (".caibx", ".caidx")
DELTA_STORE_SUFFIX = ".castr"


def is_delta_bundle(info: dict[str, Any]) -> bool:
    """Whether `rauc info --output-format=json` describes a delta (casync) bundle."""
    for image in info.get("images") or []:
        for described in (image.values() if isinstance(image, dict) else []):
            if isinstance(described, dict) and str(described.get("filename", "")).endswith(DELTA_INDEX_SUFFIXES):
                return True
    return False


def version_key(text: str) -> tuple[tuple[int, ...], str] | None:
    """Comparable form of a version such as `1.4.2` or `2026.12.1-rc1`; None if it is not one.
    A suffix sorts before the plain release (`1.2.0-rc1` < `1.2.0`)."""
    if not isinstance(text, str) or not VERSION.match(text):
        return None
    numbers = re.split(r"[-+~]", text, maxsplit=1)[0]
    suffix = text[len(numbers):]
    parts = tuple(int(part) for part in numbers.split("."))
    parts += (0,) * (4 - len(parts))
    return parts, ("\uffff" if not suffix else suffix)


def body_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with an `update` command's body (the contract's fields), or None."""
    version, sha256, size = body.get("version"), body.get("sha256"), body.get("size")
    if version_key(version) is None:
        return "body.version: expected a version such as 1.4.2"
    if not isinstance(body.get("url"), str) or not body["url"]:
        return "body.url: expected the bundle's http(s) URL"
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        return "body.sha256: expected 64 lower-case hex digits"
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES:
        return f"body.size: expected the bundle's size in bytes (1..{MAX_BUNDLE_BYTES})"
    if not isinstance(body.get("allow_downgrade", False), bool):
        return "body.allow_downgrade: expected true or false"
    return None


def refusal(body: dict[str, Any], running: str, current: Update | None) -> str | None:
    """Why this site does not take the update now (invalid_state), or None."""
    version = body["version"]
    if current is not None and current.version != version:
        return f"an update to {current.version} is already {current.phase}"
    if version == running and current is None:
        return f"version {version} is already running"
    wanted, have = version_key(version), version_key(running)
    if have is not None and wanted is not None and wanted < have and not body.get("allow_downgrade", False):
        return f"version {version} is older than the running {running}; send allow_downgrade to go back"
    return None


@dataclass
class Update:
    """The update in progress, as the state shows it (`software.update`)."""

    version: str
    url: str
    sha256: str
    size: int
    allow_downgrade: bool = False
    phase: str = DOWNLOADING
    progress: int = 0
    # The self-test checks that passed before the update: the new version must pass them too.
    required_checks: tuple[str, ...] = field(default=ALWAYS_REQUIRED_CHECKS)

    def payload(self) -> dict[str, Any]:
        return {"version": self.version, "phase": self.phase, "progress": self.progress}


def failing_checks(checks: dict[str, dict[str, Any]], required: tuple[str, ...]) -> list[str]:
    """The required checks a self-test did not pass (a check that did not run counts as failed)."""
    return [name for name in required if (checks.get(name) or {}).get("ok") is not True]
