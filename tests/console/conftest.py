"""Harness for the console's tests: the CLI in-process, a real Mosquitto from the generated config,
real daemons as subprocesses. Loopback only, free ports, everything stopped at the end."""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.console.cli import main
from appliance_dev.localnet import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):  # noqa: ANN201
        return json.loads(self.out)


@dataclass
class Console:
    home: Path
    port: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--home", str(self.home), *args])
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.code == 0, f"{args} exited {result.code}: {result.err}{result.out}"
        return result

    def start_broker(self) -> subprocess.Popen:
        log = open(self.home / "mosquitto.log", "ab")
        process = subprocess.Popen(["mosquitto", "-c", str(self.home / "broker" / "mosquitto.conf")],
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_for_port(self.port, process)
        return process

    def broker_log(self) -> str:
        path = self.home / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_daemon(self, site: str, tmp: Path) -> subprocess.Popen:
        """A real `appliance run` with the provisioning file this console wrote for `site`."""
        directory = tmp / f"device-{site}"
        self.ok("provision", site, "--out", str(directory / "boot"))
        overlay = directory / "test.toml"
        overlay.write_text(
            f'[broker]\nca_file = "{directory / "boot" / "ca.pem"}"\n'
            '[panel]\nbackend = "mock"\n[camera]\nbackend = "none"\n[display]\nbackend = "none"\n'
            f'[paths]\nstate_dir = "{directory / "state"}"\ncontrol_socket = "{directory / "control.sock"}"\n'
        )
        log = open(directory / "daemon.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(directory / "boot" / "appliance-site.toml"),
             "--config", str(overlay)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.processes.append(process)
        return process

    def wait_online(self, sites: list[str], timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            rows = {row["site"]: row for row in self.ok("status", "--json").json}
            if all(rows[site]["online"] for site in sites):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"sites not online after {timeout} s: {[s for s in sites if not rows[s]['online']]}")
            time.sleep(0.2)


    def wait_states(self, expected: dict[str, str], timeout: float = 5.0) -> dict:
        """Status rows once every site's retained state is as expected (a site that reconnects
        republishes its state, so the broker's view converges rather than being instant)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = {row["site"]: row for row in self.ok("status", "--json").json}
            if all(rows[site]["state"] == state for site, state in expected.items()):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"states after {timeout} s: { {site: rows[site]['state'] for site in expected} }")
            time.sleep(0.1)


@pytest.fixture
def console(tmp_path: Path):
    harness = Console(tmp_path / "home")
    yield harness
    for process in reversed(harness.processes):
        stop(process)


@pytest.fixture
def fleet_broker(console: Console) -> Console:
    """An initialised console whose generated broker configuration is running."""
    console.port = free_port()
    console.ok("init", "--broker-url", f"mqtts://localhost:{console.port}", "--media-host", "127.0.0.1")
    # Run as ourselves: mosquitto otherwise drops to user `mosquitto`, who cannot read the key.
    console.ok("broker-config", "--out", str(console.home / "broker"), "--bind", "127.0.0.1",
               "--run-as", getpass.getuser())
    console.start_broker()
    return console


@pytest.fixture(autouse=True)
def _no_console_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_CONSOLE_HOME", raising=False)
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))
