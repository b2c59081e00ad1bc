"""RAUC's boot-chooser for the Raspberry Pi firmware's A/B boot (`bootloader=custom` in
/etc/rauc/system.conf; RAUC runs it as root: `rauc-tryboot get-primary | set-primary SLOT |
get-state SLOT | set-state SLOT good|bad`).

The firmware reads `autoboot.txt` on the first (FAT) partition:

    [all]
    tryboot_a_b=1
    boot_partition=2        <- the slot it boots normally (A: partition 2, B: partition 3)
    [tryboot]
    boot_partition=3        <- the slot it boots ONCE after `reboot "0 tryboot"`

A tryboot is one-shot: whatever happens in that boot (a hang, a crash, a power cut, a watchdog
reset), the next boot is the normal one again. So an update never needs anyone on site:

- RAUC installs into the other slot, marks it bad while writing, then calls `set-primary OTHER`:
  this writes only the [tryboot] section (the normal boot stays the running slot);
- the daemon reboots with the tryboot flag; the new slot runs on trial;
- healthy, the daemon commits: `rauc status mark-good booted` then `mark-active booted`, which calls
  `set-primary BOOTED`: now [all] boot_partition is the new slot, for good;
- not healthy, the daemon (or the firmware, if the new slot never got that far) boots normally:
  the old slot, untouched.

Slot states (good/bad) are kept beside autoboot.txt in `rauc-slot-states`; a slot marked bad is
never made the tryboot target. autoboot.txt always has the same length and is rewritten in place
(one sector, no change to FAT's allocation table, which a power cut can leave inconsistent); the
slot states are replaced atomically (write, fsync, rename): losing them only makes both slots good.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

AUTOBOOT_ENV = "RAPAT_AUTOBOOT"  # where autoboot.txt is (tests, and images that mount it elsewhere)
DEFAULT_AUTOBOOT = "/boot/autoboot/autoboot.txt"
CMDLINE = "/proc/cmdline"
# Set by the Pi firmware on a tryboot: a big-endian 32-bit 1.
PI_TRYBOOT_FLAG = "/proc/device-tree/chosen/bootloader/tryboot"
PARTITIONS = {"A": 2, "B": 3}  # bootname -> the boot partition the firmware loads it from
STATES_FILE = "rauc-slot-states"


def render(normal: str, trial: str) -> str:
    return (f"[all]\ntryboot_a_b=1\nboot_partition={PARTITIONS[normal]}\n"
            f"[tryboot]\nboot_partition={PARTITIONS[trial]}\n")


def parse(text: str) -> tuple[str, str]:
    """(normal slot, tryboot slot) of an autoboot.txt; ValueError if it names no known partition."""
    section, found = "", {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        match = re.fullmatch(r"boot_partition\s*=\s*(\d+)", line)
        if match and section in ("all", "tryboot"):
            found[section] = int(match.group(1))
    by_partition = {number: name for name, number in PARTITIONS.items()}
    if found.get("all") not in by_partition:
        raise ValueError(f"autoboot.txt has no [all] boot_partition of {sorted(by_partition)}")
    normal = by_partition[found["all"]]
    return normal, by_partition.get(found.get("tryboot", -1), normal)


def booted_slot(cmdline: str) -> str | None:
    match = re.search(r"(?:^|\s)rauc\.slot=(\S+)", cmdline)
    return match.group(1) if match else None


def booted_on_trial(cmdline: str, flag_path: str = PI_TRYBOOT_FLAG) -> bool:
    """Whether this boot is a trial: the Pi firmware's flag, or the `rapat.tryboot=1` word that a
    test harness (which plays the firmware) or another loader puts on the command line."""
    try:
        flag = Path(flag_path).read_bytes()
        if flag and int.from_bytes(flag[:4], "big") == 1:
            return True
    except OSError:
        pass
    return "rapat.tryboot=1" in cmdline.split()


def write_in_place(path: Path, text: str) -> None:
    """autoboot.txt is the one file the firmware must always read. On FAT a new file plus a rename
    changes the allocation table, and a power cut right after a commit left the table without the
    new file's cluster (seen in the QEMU update test: an empty autoboot.txt, a Pi that no longer
    boots). Every autoboot.txt this module writes has the same length (render), so it is rewritten
    in place: the same cluster, no allocation, one sector's data. Any other size: write_atomic."""
    data = text.encode("ascii")
    try:
        handle = open(path, "r+b")
    except FileNotFoundError:
        write_atomic(path, text)
        return
    with handle:
        if os.fstat(handle.fileno()).st_size != len(data):
            handle.close()
            write_atomic(path, text)
            return
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: Path, text: str) -> None:
    # Not storage.write_atomic: that one chmods the new file, which FAT (autoboot.txt's partition) refuses.
    temporary = path.with_name(path.name + ".new")
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class BootChooser:
    def __init__(self, autoboot: Path, cmdline: str) -> None:
        self.autoboot = autoboot
        self.states_path = autoboot.with_name(STATES_FILE)
        self.booted = booted_slot(cmdline)

    def _slots(self) -> tuple[str, str]:
        return parse(self.autoboot.read_text(encoding="ascii", errors="replace"))

    def _states(self) -> dict[str, str]:
        states = {name: "good" for name in PARTITIONS}
        try:
            for line in self.states_path.read_text(encoding="ascii").splitlines():
                name, _, value = line.partition("=")
                if name in states and value in ("good", "bad"):
                    states[name] = value
        except (OSError, UnicodeDecodeError):
            pass  # never written, or lost: both slots count as good, autoboot.txt still decides
        return states

    def get_primary(self) -> str:
        normal, _ = self._slots()
        return normal

    def set_primary(self, slot: str) -> None:
        normal, _ = self._slots()
        if slot == self.booted or slot == normal:
            write_in_place(self.autoboot, render(slot, slot))  # committed: boot it every time
        else:
            write_in_place(self.autoboot, render(normal, slot))  # the next tryboot only
        self.set_state(slot, "good")

    def get_state(self, slot: str) -> str:
        return self._states()[slot]

    def set_state(self, slot: str, state: str) -> None:
        states = self._states()
        states[slot] = state
        write_atomic(self.states_path, "".join(f"{name}={value}\n" for name, value in sorted(states.items())))
        if state == "bad":
            normal, trial = self._slots()
            if trial == slot and normal != slot:
                write_in_place(self.autoboot, render(normal, normal))  # never try a bad slot


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    autoboot = Path(os.environ.get(AUTOBOOT_ENV, DEFAULT_AUTOBOOT))
    try:
        cmdline = Path(os.environ.get("RAPAT_CMDLINE", CMDLINE)).read_text()
        chooser = BootChooser(autoboot, cmdline)
        if args[:1] == ["get-primary"] and len(args) == 1:
            print(chooser.get_primary())
        elif args[:1] == ["get-state"] and len(args) == 2 and args[1] in PARTITIONS:
            print(chooser.get_state(args[1]))
        elif args[:1] == ["set-primary"] and len(args) == 2 and args[1] in PARTITIONS:
            chooser.set_primary(args[1])
        elif args[:1] == ["set-state"] and len(args) == 3 and args[1] in PARTITIONS and args[2] in ("good", "bad"):
            chooser.set_state(args[1], args[2])
        else:
            print(f"usage: rauc-tryboot get-primary | set-primary A|B | get-state A|B | set-state A|B good|bad "
                  f"(got {' '.join(args) or 'nothing'})", file=sys.stderr)
            return 2
    except (OSError, ValueError) as exc:
        print(f"rauc-tryboot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
