"""console-systemd/appliance-console-collect.service: systemd-analyze verify and security, and `collect` started
the way the unit starts it, with a real NOTIFY_SOCKET: READY=1 once subscribed, WATCHDOG=1, STOPPING=1."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.console import records
from appliance.core.clock import rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.localnet import free_port
from appliance_dev.waiting import stop_process, wait_until
from tests.console.conftest import ROOT, Console
from tests.test_systemd_units import NotifySocket, unit_values

UNIT = ROOT / "console-systemd" / "appliance-console-collect.service"
SECURITY_THRESHOLD = 2.5  # as for the Pi's units (tests/test_systemd_units.py)

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (Debian package systemd)")


def test_the_unit_is_shipped_for_the_console_not_the_pi() -> None:
    assert not (ROOT / "systemd" / UNIT.name).exists()  # image-build installs everything in systemd/ on the Pi
    assert unit_values(UNIT, "Service", "Type") == ["notify"]
    assert unit_values(UNIT, "Service", "Restart") == ["always"]
    assert unit_values(UNIT, "Service", "WatchdogSec") == ["60s"]
    assert unit_values(UNIT, "Service", "CapabilityBoundingSet") == [""]
    argv = shlex.split(unit_values(UNIT, "Service", "ExecStart")[0])
    assert argv[1:3] == ["collect", "--metrics"] and argv[3].startswith("127.0.0.1:")  # metrics on loopback


@needs_systemd_analyze
def test_verify_prints_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy(UNIT, root / "usr/lib/systemd/system" / UNIT.name)
    program = root / shlex.split(unit_values(UNIT, "Service", "ExecStart")[0])[0].lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", UNIT.name], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")  # verify only prints its complaints
    (root / "usr/lib/systemd/system" / UNIT.name).write_text(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", UNIT.name], capture_output=True, text=True)
    assert "WatchdogSecs" in result.stdout + result.stderr  # and it does complain


@needs_systemd_analyze
def test_security_score_holds_threshold() -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true",
                             f"--threshold={int(SECURITY_THRESHOLD * 10)}", str(UNIT)], capture_output=True, text=True)
    score = re.search(rf"Overall exposure level for {re.escape(UNIT.name)}: ([0-9.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= SECURITY_THRESHOLD and result.returncode == 0


def unit_command(console: Console, metrics_port: int) -> tuple[list[str], dict[str, str]]:
    """ExecStart= and Environment= of the unit, with this checkout's Python, the test's home and a free port."""
    argv = shlex.split(unit_values(UNIT, "Service", "ExecStart")[0])
    assert argv[0].endswith("/appliance-console")
    argv = [sys.executable, "-m", "appliance.console", *argv[1:]]
    argv[argv.index("--metrics") + 1] = f"127.0.0.1:{metrics_port}"
    env = {}
    for value in unit_values(UNIT, "Service", "Environment"):
        env.update(item.split("=", 1) for item in shlex.split(value))
    assert env["APPLIANCE_CONSOLE_HOME"] == "/var/lib/appliance-console"
    assert unit_values(UNIT, "Service", "StateDirectory") == ["appliance-console"]
    env["APPLIANCE_CONSOLE_HOME"] = str(console.home)
    return argv, env


def test_collect_notifies_ready_once_subscribed_then_watchdog_and_stopping(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    notify = NotifySocket(tmp_path / "notify.sock")
    argv, unit_env = unit_command(console, free_port())
    env = {**os.environ, **unit_env, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
           "INVOCATION_ID": "0123456789abcdef"}
    log = tmp_path / "collect.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
    console.processes.append(process)
    notify.wait_for("READY=1", 20)
    # Subscribed when READY=1 came: a message published right now is stored.
    console.ok("provision", "kalibaru", "--out", str(tmp_path / "card"))
    site = console.site_client(tmp_path / "card")
    site.publish(site_topic(DEFAULT_TOPIC_PREFIX, "kalibaru", "event"),
                 {"v": 1, "site": "kalibaru", "at": rfc3339(time.time()), "type": "button.press"})
    site.close()
    db = records.connect(console.home / "console.db")
    try:
        wait_until(lambda: db.execute("SELECT count(*) FROM events").fetchone()[0] == 1, 10, what="the event stored")
    finally:
        db.close()
    pings = [stamp for stamp, line in notify.collect(2.2) if line == "WATCHDOG=1"]
    assert len(pings) >= 3, notify.messages  # every WATCHDOG_USEC / 2
    assert max(later - earlier for earlier, later in zip(pings, pings[1:], strict=False)) < 0.8
    assert any(line.startswith("STATUS=collecting from") for _, line in notify.messages)
    assert stop_process(process) == 0
    notify.collect(0.2)
    assert notify.messages[-1][1] == "STOPPING=1"
    text = log.read_text()
    assert "connected to" in text and " INFO appliance.console.collect" not in text  # the journal stamps the time


def test_collect_without_its_broker_never_says_ready(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    console.broker.stop()
    notify = NotifySocket(tmp_path / "notify.sock")
    argv, unit_env = unit_command(console, free_port())
    process = subprocess.run(argv, env={**os.environ, **unit_env, "NOTIFY_SOCKET": str(notify.path)},
                             capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert process.returncode == 1 and "cannot reach the broker" in process.stderr  # Restart= tries again
    assert [line for _, line in notify.collect(0.1) if line == "READY=1"] == []
