"""Real systemd journal files without journald, for tests and benchmarks on machines whose PID 1 is not
systemd: entries in the journal export format, turned into a journal file by `systemd-journal-remote`,
read by the real `journalctl --directory`. Development tool; never installed on the Pi.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

JOURNAL_REMOTE = next((path for path in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
                       if os.access(path, os.X_OK)), None) or shutil.which("systemd-journal-remote")


def export_entry(at: float, unit: str, message: str, *, boot: str, monotonic_s: float, pid: int = 1009,
                 hostname: str = "rapat-kalibaru") -> str:
    """One entry in the export format: `at` in seconds since the epoch, as journald would record a unit's line."""
    name = unit.removesuffix(".service")
    return (f"__REALTIME_TIMESTAMP={int(at * 1e6)}\n__MONOTONIC_TIMESTAMP={int(monotonic_s * 1e6)}\n"
            f"_BOOT_ID={boot}\n_HOSTNAME={hostname}\n_TRANSPORT=stdout\n_UID=998\n_PID={pid}\n"
            f"_COMM={name[:15]}\n_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER={name}\nPRIORITY=6\nMESSAGE={message}\n\n")


def write_journal(directory: Path, export: str) -> Path:
    """A journal file in `directory` holding the `export`ed entries (RuntimeError without the tool)."""
    if JOURNAL_REMOTE is None:
        raise RuntimeError("systemd-journal-remote is not installed (apt: systemd-journal-remote)")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "site.journal"
    subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=export.encode(), check=True, capture_output=True)
    return path
