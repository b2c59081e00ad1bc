"""RAUC's boot-chooser for the Pi firmware's autoboot.txt (appliance/adapters/tryboot.py), called as RAUC
calls it: install into the other slot, trial boot, commit or not. The firmware's own choice (one-shot
[tryboot] section) is what `firmware_boots` plays here; on a Pi the firmware does it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.adapters import tryboot


def firmware_boots(autoboot: Path, with_tryboot: bool) -> str:
    """The slot the Raspberry Pi firmware would boot: [tryboot] once after `reboot "0 tryboot"`, else [all]."""
    normal, trial = tryboot.parse(autoboot.read_text())
    return trial if with_tryboot else normal


def backend(autoboot: Path, booted: str, *args: str) -> subprocess.CompletedProcess:
    cmdline = autoboot.with_name("cmdline")
    cmdline.write_text(f"console=ttyAMA0 root=PARTUUID=abcd-0{5 if booted == 'A' else 6} rauc.slot={booted}\n")
    env = {tryboot.AUTOBOOT_ENV: str(autoboot), "RAPAT_CMDLINE": str(cmdline), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "appliance.adapters.tryboot", *args], env=env,
                          capture_output=True, text=True)


@pytest.fixture
def autoboot(tmp_path: Path) -> Path:
    path = tmp_path / "autoboot.txt"
    path.write_text(tryboot.render("A", "A"))
    return path


def test_an_install_arms_one_trial_boot_and_a_commit_makes_it_permanent(autoboot: Path) -> None:
    assert backend(autoboot, "A", "get-primary").stdout.strip() == "A"
    # What `rauc install` does into B while A runs: B bad while written, then primary.
    assert backend(autoboot, "A", "set-state", "B", "bad").returncode == 0
    assert backend(autoboot, "A", "set-primary", "B").returncode == 0
    assert backend(autoboot, "A", "get-primary").stdout.strip() == "A"  # the normal boot is still A
    assert (firmware_boots(autoboot, with_tryboot=False), firmware_boots(autoboot, with_tryboot=True)) == ("A", "B")
    # In B on trial, healthy: `rauc status mark-good booted`, `mark-active booted`.
    assert backend(autoboot, "B", "set-state", "B", "good").returncode == 0
    assert backend(autoboot, "B", "set-primary", "B").returncode == 0
    assert (firmware_boots(autoboot, with_tryboot=False), firmware_boots(autoboot, with_tryboot=True)) == ("B", "B")
    assert backend(autoboot, "B", "get-state", "B").stdout.strip() == "good"


def test_a_trial_that_is_never_committed_leaves_the_old_slot_booting(autoboot: Path) -> None:
    backend(autoboot, "A", "set-state", "B", "bad")
    backend(autoboot, "A", "set-primary", "B")
    # The trial boot hangs or fails; the daemon may mark it bad, or never get that far.
    backend(autoboot, "B", "set-state", "B", "bad")
    assert firmware_boots(autoboot, with_tryboot=False) == "A"
    assert firmware_boots(autoboot, with_tryboot=True) == "A"  # a bad slot is not tried again
    assert backend(autoboot, "A", "get-state", "B").stdout.strip() == "bad"


def test_files_are_replaced_whole_and_bad_input_is_refused(autoboot: Path) -> None:
    backend(autoboot, "A", "set-primary", "B")
    assert not list(autoboot.parent.glob("*.new"))
    refused = backend(autoboot, "A", "set-primary", "C")
    assert refused.returncode == 2 and "usage" in refused.stderr
    autoboot.write_text("[all]\ntryboot_a_b=1\n")  # hand-edited, no boot_partition
    broken = backend(autoboot, "A", "get-primary")
    assert broken.returncode == 1 and "boot_partition" in broken.stderr


def test_autoboot_txt_is_what_the_firmware_documents() -> None:
    text = tryboot.render("A", "B")
    assert text.splitlines() == ["[all]", "tryboot_a_b=1", "boot_partition=2", "[tryboot]", "boot_partition=3"]
    assert tryboot.parse("# comment\n[all]\ntryboot_a_b=1\nboot_partition=3\n") == ("B", "B")


def test_autoboot_is_rewritten_in_place_so_fat_allocates_nothing(autoboot: Path) -> None:
    """A power cut right after a commit once left FAT's table without the new file's cluster (QEMU
    update test): autoboot.txt keeps its file (inode, size) and only its bytes change."""
    before = autoboot.stat()
    assert len({len(tryboot.render(normal, trial)) for normal in "AB" for trial in "AB"}) == 1  # one length
    assert backend(autoboot, "A", "set-primary", "B").returncode == 0  # install into B: the trial target
    assert backend(autoboot, "B", "set-primary", "B").returncode == 0  # B committed
    after = autoboot.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert firmware_boots(autoboot, with_tryboot=False) == "B"
    assert not list(autoboot.parent.glob("autoboot.txt.new"))


def test_an_autoboot_of_another_length_is_replaced_whole(autoboot: Path) -> None:
    autoboot.write_text("[all]\ntryboot_a_b=1\nboot_partition=2\n# written by hand\n")
    assert backend(autoboot, "A", "set-primary", "B").returncode == 0
    assert autoboot.read_text() == tryboot.render("A", "B")
