"""Remote operations that reach past the daemon: the journal for `logs`, the root reboot unit for
`reboot` (and the updater's trial and rollback reboots).

- Logs come from the system journal through `journalctl` (the daemon's user is in
  `systemd-journal`; units `appliance*` and the kernel's messages), read on a worker thread and
  posted as `ReplyData` (the core chunks and publishes them).
- A reboot is asked for by writing `<runtime dir>/reboot-request` (`normal` or `tryboot`), which
  `appliance-reboot.path` (root) acts on: the daemon holds no privilege to reboot. It is written
  after a short delay, so the command's ack leaves first.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.adapters.storage import write_atomic
from appliance.core import io

JOURNAL_UNITS = ("appliance.service", "appliance-provision.service", "appliance-audio.service",
                 "appliance-reboot.service", "appliance-trial-guard.service")
JOURNALCTL_TIMEOUT_S = 20


def reboot_request_path(config: Any) -> Path:
    return Path(os.path.dirname(config["paths"]["control_socket"]) or ".") / "reboot-request"


def request_reboot(path: Path, kind: str) -> None:
    write_atomic(path, f"{kind}\n".encode(), mode=0o640)


def journal_command(since: str | None, lines: int) -> list[str]:
    """The newest `lines` entries (since `since`), newest first: with `--since`, journalctl's `--lines`
    alone gives the OLDEST entries after it (systemd 252), so a busy site answered with the start of
    the hour. `journal_lines` puts them back in time order."""
    argv = ["journalctl", "--no-pager", "--output=short-iso-precise", "--utc", "--reverse", f"--lines={lines}"]
    for unit in JOURNAL_UNITS:
        argv += ["--unit", unit]
    if since:
        argv.append(f"--since={since.replace('T', ' ').removesuffix('Z')}")
    return argv


def journal_lines(stdout: str) -> list[str]:
    """`journal_command`'s output as log lines in time order, without journalctl's `-- ... --` notes."""
    return [line for line in reversed(stdout.splitlines()) if line and not line.startswith("-- ")]


class RemoteOps:
    def __init__(self, config: Any, post: Callable[[Any], None], *,
                 journal: Callable[[str | None, int], list[str]] | None = None) -> None:
        self._post = post
        self.reboot_request = reboot_request_path(config)
        self._journal = journal or self._journalctl

    def read_logs(self, effect: io.ReadLogs) -> None:
        def work() -> None:
            try:
                lines = self._journal(effect.since, effect.lines)
                self._post(io.ReplyData(effect.command_id, "logs", lines=tuple(lines)))
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                self._post(io.ReplyData(effect.command_id, "logs", error=f"cannot read the journal: {exc}"))

        threading.Thread(target=work, name="logs", daemon=True).start()

    def reboot(self, effect: io.RequestReboot) -> None:
        timer = threading.Timer(effect.delay_s, request_reboot, (self.reboot_request, effect.kind))
        timer.daemon = True
        timer.start()

    @staticmethod
    def _journalctl(since: str | None, lines: int) -> list[str]:
        result = subprocess.run(journal_command(since, lines), capture_output=True, text=True,
                                timeout=JOURNALCTL_TIMEOUT_S)
        if result.returncode != 0:
            raise ValueError((result.stderr or result.stdout).strip().splitlines()[-1:] or f"exit {result.returncode}")
        return journal_lines(result.stdout)
