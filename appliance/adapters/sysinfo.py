"""What the system says about itself, read from /proc and /sys; None wherever it says nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
# Bits of the Pi firmware's get_throttled word (documented for `vcgencmd get_throttled`).
THROTTLE_FLAGS = {
    "under_voltage": 0, "freq_capped": 1, "throttled": 2, "soft_temp_limit": 3,
    "under_voltage_occurred": 16, "freq_capped_occurred": 17, "throttled_occurred": 18,
    "soft_temp_limit_occurred": 19,
}
TIME_ERROR = 5  # adjtimex(2): the kernel clock is not synchronised
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def system_uptime_s() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


CPU_ZONE_TYPES = ("cpu", "x86_pkg", "soc")  # the Pi's zone is "cpu-thermal"; others are boards, batteries...


def cpu_temp_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The CPU's own sensor only: another thermal zone's reading would be a real number about the wrong thing."""
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            if any(kind in (zone / "type").read_text().strip().lower() for kind in CPU_ZONE_TYPES):
                return round(int((zone / "temp").read_text()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def mem_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def disk_free_mb(path: str) -> float | None:
    try:
        return round(shutil.disk_usage(path).free / 2**20, 1)
    except OSError:
        return None


def throttled() -> dict[str, Any] | None:
    word = _throttled_word()
    if word is None:
        return None
    return {"raw": hex(word), **{name: bool(word >> bit & 1) for name, bit in THROTTLE_FLAGS.items()}}


def _throttled_word() -> int | None:
    try:
        return int(THROTTLED_SYSFS.read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    if shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2).stdout
            return int(out.strip().split("=")[1], 16)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
    return None


def clock_synced(timesync_flag: Path = TIMESYNC_FLAG) -> bool | None:
    """The kernel's own sync flag (adjtimex), else systemd-timesyncd's flag file.

    Under the unit's ProtectClock=yes even a read-only adjtimex() is refused (EPERM); timesyncd,
    Raspberry Pi OS's default, then still tells through /run/systemd/timesync/synchronized.
    """
    state = _adjtimex_state()
    if state is not None:
        return state != TIME_ERROR
    if timesync_flag.parent.is_dir():
        return timesync_flag.exists()
    return None


def _adjtimex_state() -> int | None:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex with modes = 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state


def load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def telemetry_sample(state_dir: str) -> dict[str, Any]:
    return {
        "system_uptime_s": system_uptime_s(),
        "cpu_temp_c": cpu_temp_c(),
        "load1": load1(),
        "mem_available_mb": mem_available_mb(),
        "disk_free_mb": disk_free_mb(state_dir),
        "throttled": throttled(),
    }
