"""A device with no valid configuration (issue 15, finding 3: the unprovisioned reboot loop).

Before: `appliance run` exited 2, appliance.service restarted it five times in ten minutes and then
rebooted the Pi, forever, and the screen stayed dark: the "site file rejected" screen needs a running
site. Now, under systemd, it waits in a not-provisioned mode that the person at the site can see
(screen, LED, `appliance status`, systemd's STATUS=), and becomes the site as soon as the files are
valid; and the unit does not restart a configuration exit (2) anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import fallback_config
from appliance.config import load
from appliance.core import led
from appliance.core.messages import problem
from appliance.media import screens
from appliance.not_provisioned import NotProvisioned
from appliance_dev.broker import Mosquitto
from appliance_dev.waiting import stop_process, wait_until
from tests.support.site import ConsoleKey
from tests.test_systemd_units import UNITS, VENV_BIN, NotifySocket, control, exec_start_argv, unit_environment, unit_values


def image_defaults(tmp_path: Path) -> Path:
    """What an image carries in /etc/appliance/appliance.toml: hardware and paths, no site, no broker."""
    base = tmp_path / "appliance.toml"
    base.write_text(f"""[panel]\nbackend = "mock"\n[camera]\nbackend = "none"\n[display]\nbackend = "none"\n
language = "en"\n[paths]\nstate_dir = "{tmp_path / 'state'}"\ncontrol_socket = "{tmp_path / 'run' / 'control.sock'}"\n""")
    return base


def site_file(path: Path, broker: Mosquitto, console_key: ConsoleKey) -> None:
    path.write_text(f"""[site]\nid = "kalibaru"\nkind = "kecamatan"\n[broker]\nurl = "{broker.url}"\nkeepalive_s = 5\n
[security]\nconsole_public_key = "{console_key.public_b64}"\n""")


def connected(socket_path: Path) -> bool:
    """The site's daemon answers and is connected (between exec and its socket nothing answers)."""
    try:
        return bool(control(socket_path, {"cmd": "status"}).get("status", {}).get("broker_connected"))
    except (OSError, ValueError):
        return False


def statuses(notify: NotifySocket) -> list[str]:
    return [line for _, line in notify.messages if line.startswith("STATUS=")]


@pytest.mark.skipif(not (VENV_BIN / "appliance").exists(), reason="appliance not installed in the venv (make setup)")
def test_started_as_the_unit_starts_it_it_waits_showing_not_provisioned_then_becomes_the_site(
        tmp_path: Path, broker: Mosquitto, console_key: ConsoleKey) -> None:
    base, site = image_defaults(tmp_path), tmp_path / "site.toml"  # site.toml: not written yet, as on a new card
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "provision-error.txt").write_text(
        "site file rejected, previous configuration kept: /boot/firmware/appliance-site.toml\n"
        "/boot/firmware/appliance-site.toml: site.kind: must be one of kecamatan, desa, other, not 'kota'\n")
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000",
           "APPLIANCE_CONFIG": f"{base}:{site}", **unit_environment()}
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(exec_start_argv(), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    socket_path = tmp_path / "run" / "control.sock"
    try:
        notify.wait_for("READY=1", 30)
        status = control(socket_path, {"cmd": "status"})["status"]
        assert status["state"] == "not_provisioned" and status["screen"] == "not_provisioned"
        assert status["led"] == led.DOUBLE_BLINK.name
        # The technician's own file's fault first, then what is missing on the device.
        assert status["problems"][0].endswith("site.kind: must be one of kecamatan, desa, other, not 'kota'")
        assert any(f"{site}: berkas tidak bisa dibaca" in problem for problem in status["problems"])
        assert any("site.id: wajib diisi, tetapi tidak ada" in problem for problem in status["problems"])
        notify.collect(6.0)  # longer than a re-check: still there, and systemd hears it is alive
        assert process.poll() is None, log_path.read_text()
        assert statuses(notify) and statuses(notify)[0].startswith("STATUS=not provisioned: ")
        assert [line for _, line in notify.messages if line == "WATCHDOG=1"]
        refused = control(socket_path, {"cmd": "join"})
        assert refused["ok"] is False and "not provisioned" in refused["error"]
        cli = subprocess.run([str(VENV_BIN / "appliance"), "status", "--config", str(base)], capture_output=True,
                             text=True, timeout=30)
        assert cli.returncode == 0 and "not_provisioned" in cli.stdout and "site.kind" in cli.stdout, cli

        site_file(site, broker, console_key)  # what provisioning writes once a valid site file comes
        pid = process.pid
        wait_until(lambda: connected(socket_path), 30, what=lambda: log_path.read_text())
        assert process.pid == pid and process.poll() is None  # the same process, as systemd follows it
        assert control(socket_path, {"cmd": "version"})["site"] == "kalibaru"
    finally:
        code = stop_process(process, timeout=20)
    assert code in (0, -15), log_path.read_text()


def test_from_a_terminal_an_invalid_configuration_still_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "appliance", "run", "--config", str(image_defaults(tmp_path))],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "NOTIFY_SOCKET": ""})
    assert result.returncode == 2 and "site.id: wajib diisi, tetapi tidak ada" in result.stderr


class Screen:
    def __init__(self, config: Any, post: Any) -> None:
        self.shown: list[tuple[str, dict[str, Any]]] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def show_screen(self, screen: str, info: dict[str, Any]) -> None:
        self.shown.append((screen, info))

    def close(self) -> None:
        self.closed = True


def test_the_screen_and_the_led_say_not_provisioned_and_follow_the_files(tmp_path: Path, broker: Mosquitto,
                                                                         console_key: ConsoleKey) -> None:
    base = image_defaults(tmp_path)
    site = tmp_path / "site.toml"
    fallback = fallback_config([str(base), str(site)])
    assert fallback["panel"]["backend"] == "mock" and fallback["display"]["language"] == "en"
    # The problems as load() gives them (said in Bahasa Indonesia as strings); this screen speaks English.
    answers: list[tuple[Any, list[str]]] = [(None, [problem("site.toml", "site.id", "config.required")]),
                                            (None, [problem("site.toml", "broker.url", "config.required")])]

    def check() -> tuple[Any, list[str]]:
        if answers:
            return answers.pop(0)
        site_file(site, broker, console_key)
        return load([str(base), str(site)]), []

    screen: list[Screen] = []
    waiting = NotProvisioned(fallback, ["(none): no configuration file found"], check, recheck_s=0.05,
                             display=lambda config, post: screen.append(Screen(config, post)) or screen[-1])
    valid = waiting.run()
    assert valid is not None and valid["site"]["id"] == "kalibaru"
    shown = screen[0].shown
    assert [name for name, _ in shown] == ["not_provisioned"] * 3  # once, then once per change of the problems
    assert [info["problems"] for _, info in shown] == [["(none): no configuration file found"],
                                                       ["site.toml: site.id: required but missing"],
                                                       ["site.toml: broker.url: required but missing"]]
    assert screen[0].opened and screen[0].closed
    assert waiting.panel.pattern == led.DOUBLE_BLINK
    assert not (tmp_path / "run" / "control.sock").exists()  # released for the site's daemon

    english = screens.render("not_provisioned", shown[-1][1], "en").all_text()
    assert "Not provisioned" in english and "broker.url: required but missing" in english
    indonesian = screens.render("not_provisioned", shown[-1][1], "id").all_text()
    assert "Belum disiapkan" in indonesian and "appliance check-config" in indonesian


def test_the_unit_does_not_restart_a_configuration_exit() -> None:
    unit = UNITS / "appliance.service"
    assert unit_values(unit, "Service", "RestartPreventExitStatus") == ["2"]
    assert unit_values(unit, "Unit", "StartLimitAction") == ["reboot"]  # a crash loop still ends in a reboot



def test_the_site_file_cannot_move_the_socket_even_while_not_provisioned(tmp_path: Path) -> None:
    image, site = tmp_path / "appliance.toml", tmp_path / "site.toml"
    image.write_text(f'[paths]\ncontrol_socket = "{tmp_path}/control.sock"\n[display]\nlanguage = "en"\n')
    site.write_text('[site]\nname = "Desa Kemiren"\n[paths]\ncontrol_socket = "/tmp/elsewhere.sock"\n'
                    '[display]\nlanguage = "id"\n')
    fallback = fallback_config([str(image), str(site)], site_file=str(site))
    assert fallback["paths"]["control_socket"] == f"{tmp_path}/control.sock"
    assert fallback["display"]["language"] == "en" and fallback["site"]["name"] == "Desa Kemiren"
