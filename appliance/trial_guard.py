"""The last line of an update's trial: if the new version has not been kept some minutes after its
trial boot, reboot normally, so the Raspberry Pi firmware starts the old slot again.

The daemon itself gives a trial version back when it is not healthy in time (core/update_flow.py).
This guard covers the cases where the daemon cannot: it never starts, hangs before READY, or shows
"not provisioned" because the new version cannot read the configuration. Without it such a site
would stay on the broken version until the daemon's crash loop reached systemd's
`StartLimitAction=reboot`, or forever if the daemon stays up but useless.

Run as root by `appliance-trial-guard.service` on every boot (`rapat-trial-guard`):
- not a trial boot (no tryboot flag from the firmware, no `rapat.tryboot=1`): exit at once;
- the deadline is counted from the kernel's boot (CLOCK_BOOTTIME): `update.health_timeout_s` plus
  GRACE_S, so the daemon always has its own full time first;
- committed by then (autoboot.txt's `[all]` names the booted slot): exit;
- the daemon answers and is in a meeting: wait, look again (a trial is never ended mid-meeting);
- otherwise: write why into the update record on the data partition (the old version reports it to
  the centre as `update.rolled_back`), mark the slot bad (best effort) and reboot normally.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.adapters import tryboot
from appliance.adapters.storage import write_atomic

log = logging.getLogger("appliance.trial_guard")

GRACE_S = 180.0  # boot to daemon start on a slow card, plus the daemon's own rollback
MEETING_RECHECK_S = 60.0
DEFAULT_HEALTH_TIMEOUT_S = 300.0
BUSY_STATES = ("joining", "in_meeting", "leaving")


def committed(autoboot: Path, booted: str | None) -> bool:
    """Whether the firmware's normal boot is now the booted slot (what committing writes)."""
    try:
        normal, _ = tryboot.parse(autoboot.read_text(encoding="ascii", errors="replace"))
    except (OSError, ValueError):
        return False  # unreadable: not committed; the normal boot is whatever the firmware finds
    return booted is not None and normal == booted


def settings(config_files: list[str]) -> tuple[float, str, str]:
    """(health timeout, state dir, control socket) from the device's configuration; the defaults when
    the new version cannot read it (that is one of the failures this guard is for)."""
    from appliance.config import SCHEMA, load  # noqa: PLC0415

    defaults = (DEFAULT_HEALTH_TIMEOUT_S, SCHEMA["paths"]["state_dir"].default,
                SCHEMA["paths"]["control_socket"].default)
    try:
        config = load([path for path in config_files if os.path.exists(path)])
    except Exception as exc:  # noqa: BLE001 - any failure here means "use the defaults"
        log.warning("configuration unreadable (%s): using the defaults", exc)
        return defaults
    return (float(config["update"]["health_timeout_s"]), config["paths"]["state_dir"],
            config["paths"]["control_socket"])


def daemon_busy(control_socket: str) -> bool:
    """Whether the daemon answers and is in a meeting (anything else, silence included, is not busy)."""
    from appliance.adapters.control import NoDaemon, request  # noqa: PLC0415

    try:
        reply = request(control_socket, {"cmd": "status"}, timeout=5)
    except (NoDaemon, OSError):
        return False
    return reply.get("ok") is True and (reply.get("status") or {}).get("state") in BUSY_STATES


def record_reason(state_dir: str, reason: str) -> None:
    """Add why to the record the daemon wrote before the trial reboot, unless it already says why."""
    path = Path(state_dir) / "update" / "record.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        record = {}
    except (OSError, ValueError) as exc:
        log.error("update record %s unreadable (%s): rewriting it", path, exc)
        record = {}
    if not isinstance(record, dict):
        record = {}
    if record.get("reason"):
        return
    record.setdefault("version", "?")
    record["reason"] = reason
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record).encode(), mode=0o640)
    try:  # the daemon's user must still read and remove it
        stat = path.parent.stat()
        os.chown(path, stat.st_uid, stat.st_gid)
    except OSError:
        pass


def boot_time() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def guard(*, cmdline: str, flag_path: str, autoboot: Path, config_files: list[str],
          clock: Callable[[], float] = boot_time, sleep: Callable[[float], None] = time.sleep,
          busy: Callable[[str], bool] = daemon_busy,
          run: Callable[[list[str]], Any] = subprocess.run) -> str:
    """Watch one boot; returns what it did (`not a trial`, `committed`, `rebooted`)."""
    if not tryboot.booted_on_trial(cmdline, flag_path):
        return "not a trial"
    booted = tryboot.booted_slot(cmdline)
    health_timeout, state_dir, control_socket = settings(config_files)
    deadline = health_timeout + GRACE_S
    log.info("trial boot of slot %s: it must be kept within %g s of boot", booted, deadline)
    while True:
        now = clock()
        if now < deadline:
            sleep(min(deadline - now, MEETING_RECHECK_S))
            if committed(autoboot, booted):
                log.info("slot %s was kept", booted)
                return "committed"
            continue
        if committed(autoboot, booted):
            log.info("slot %s was kept", booted)
            return "committed"
        if busy(control_socket):
            log.warning("slot %s is not kept yet, but a meeting runs: looking again in %g s", booted, MEETING_RECHECK_S)
            sleep(MEETING_RECHECK_S)
            continue
        reason = (f"the new version was not kept within {deadline:g} s of its trial boot (the daemon never "
                  "reported healthy): the trial guard restarted the previous version")
        log.error("%s", reason)
        record_reason(state_dir, reason)
        run(["rauc", "status", "mark-bad", "booted"])  # best effort: the normal boot goes back either way
        run(["systemctl", "reboot"])
        return "rebooted"


def main(argv: list[str] | None = None) -> int:
    from appliance.config import DEFAULT_FILES  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="rapat-trial-guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="configuration files (default: the daemon's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cmdline_path = os.environ.get("RAPAT_CMDLINE", tryboot.CMDLINE)
    try:
        cmdline = Path(cmdline_path).read_text()
    except OSError as exc:
        print(f"rapat-trial-guard: cannot read {cmdline_path}: {exc}", file=sys.stderr)
        return 1
    outcome = guard(cmdline=cmdline, flag_path=tryboot.PI_TRYBOOT_FLAG,
                    autoboot=Path(os.environ.get(tryboot.AUTOBOOT_ENV, tryboot.DEFAULT_AUTOBOOT)),
                    config_files=args.config or list(DEFAULT_FILES))
    print(f"rapat-trial-guard: {outcome}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
