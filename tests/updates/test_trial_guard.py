"""The trial guard (appliance/trial_guard.py): a trial boot whose new version is never kept
is rebooted normally after the daemon's own time plus a grace, never in a meeting, with the reason
left in the update record for the old version to report. The clock and the reboot are injected;
the files (autoboot.txt, the record, the configuration) and the control socket are real."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from appliance import trial_guard
from appliance.adapters import tryboot

TRIAL_CMDLINE = "console=ttyAMA0 root=PARTUUID=abcd-06 rauc.slot=B rapat.tryboot=1"


class Boot:
    """A fake boot clock that sleeping advances, and the commands the guard ran."""

    def __init__(self, start: float = 30.0) -> None:
        self.now = start
        self.ran: list[list[str]] = []
        self.on_sleep = None

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self.now)

    def run(self, argv: list[str]) -> None:
        self.ran.append(argv)


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    autoboot = tmp_path / "autoboot.txt"
    autoboot.write_text(tryboot.render("A", "B"))  # A is the normal boot, B the one-shot trial
    state = tmp_path / "state"
    (state / "update").mkdir(parents=True)
    (state / "update/record.json").write_text(json.dumps({"version": "2.0.0", "required_checks": ["broker"]}))
    config = tmp_path / "appliance.toml"
    config.write_text(f'[site]\nid = "kalibaru"\n[broker]\nurl = "mqtt://127.0.0.1:1883"\n'
                      '[security]\nallow_unsigned = true\n'
                      f'[paths]\nstate_dir = "{state}"\ncontrol_socket = "{tmp_path / "control.sock"}"\n'
                      '[update]\nhealth_timeout_s = 120\n')
    return {"autoboot": autoboot, "state": state, "config": config, "socket": tmp_path / "control.sock"}


def run_guard(site: dict[str, Path], boot: Boot, cmdline: str = TRIAL_CMDLINE, busy=lambda path: False) -> str:
    return trial_guard.guard(cmdline=cmdline, flag_path="/nonexistent", autoboot=site["autoboot"],
                             config_files=[str(site["config"])], clock=lambda: boot.now, sleep=boot.sleep,
                             busy=busy, run=boot.run)


def test_a_normal_boot_is_left_alone(site) -> None:
    boot = Boot()
    assert run_guard(site, boot, cmdline="root=PARTUUID=abcd-05 rauc.slot=A") == "not a trial"
    assert boot.ran == [] and boot.now == 30.0


def test_a_trial_never_kept_is_rebooted_after_the_daemons_time_plus_grace_with_the_reason_recorded(site) -> None:
    boot = Boot()
    assert run_guard(site, boot) == "rebooted"
    assert boot.now == pytest.approx(120 + trial_guard.GRACE_S)  # counted from the kernel's boot
    assert boot.ran == [["rauc", "status", "mark-bad", "booted"], ["systemctl", "reboot"]]
    record = json.loads((site["state"] / "update/record.json").read_text())
    assert record["version"] == "2.0.0" and record["required_checks"] == ["broker"]
    assert "not kept within 300 s" in record["reason"] and "trial guard" in record["reason"]


def test_a_kept_trial_ends_the_guard_without_a_reboot(site) -> None:
    boot = Boot()

    def commit_at_90_s(now: float) -> None:
        if now >= 90:  # what `rauc status mark-active booted` does through the boot-chooser
            site["autoboot"].write_text(tryboot.render("B", "B"))

    boot.on_sleep = commit_at_90_s
    assert run_guard(site, boot) == "committed"
    assert boot.ran == []
    assert boot.now < 120 + trial_guard.GRACE_S


def test_a_meeting_postpones_the_reboot_until_it_ends(site) -> None:
    boot = Boot()
    meeting_until = 120 + trial_guard.GRACE_S + 3 * trial_guard.MEETING_RECHECK_S
    assert run_guard(site, boot, busy=lambda path: boot.now < meeting_until) == "rebooted"
    assert boot.now >= meeting_until
    assert boot.ran[-1] == ["systemctl", "reboot"]


def test_the_daemons_own_reason_is_kept(site) -> None:
    record = site["state"] / "update/record.json"
    record.write_text(json.dumps({"version": "2.0.0", "reason": "the new version failed its self-test (broker: ...)"}))
    run_guard(site, Boot())
    assert json.loads(record.read_text())["reason"].startswith("the new version failed its self-test")


def test_an_unreadable_configuration_falls_back_to_the_defaults(site) -> None:
    site["config"].write_text("[update]\nhealth_timeout_s = 'soon'\n")
    boot = Boot()
    assert run_guard(site, boot) == "rebooted"
    assert boot.now == pytest.approx(trial_guard.DEFAULT_HEALTH_TIMEOUT_S + trial_guard.GRACE_S)


def serve_status(path: Path, state: str) -> threading.Thread:
    """One real answer on a Unix socket, as the daemon's control server gives it."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            assert json.loads(connection.makefile().readline()) == {"cmd": "status"}
            connection.sendall(json.dumps({"ok": True, "status": {"state": state}}).encode() + b"\n")
        server.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("state", "busy"), [("in_meeting", True), ("joining", True), ("idle", False)])
def test_busy_asks_the_daemon_over_its_control_socket(site, state: str, busy: bool) -> None:
    thread = serve_status(site["socket"], state)
    assert trial_guard.daemon_busy(str(site["socket"])) is busy
    thread.join(5)


def test_a_silent_daemon_is_not_busy(site) -> None:
    assert trial_guard.daemon_busy(str(site["socket"])) is False
