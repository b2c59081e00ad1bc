"""A real `appliance run` process for one site, and a site file for it: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.adapters.control import NoDaemon, request
from appliance_dev.waiting import stop_process, wait_until

REPO = Path(__file__).resolve().parents[1]


def site_config(workdir: Path, site: str, broker_url: str, public_key: str, *, kind: str = "kecamatan",
                extra: str = "") -> Path:
    """A site file with no hardware (mock panel, no camera, no display), its state and socket in `workdir`."""
    state_dir = workdir / f"{site}-state"
    config = workdir / f"{site}.toml"
    config.write_text(f"""
[site]
id = "{site}"
name = "Kecamatan {site.title()}"
kind = "{kind}"
[broker]
url = "{broker_url}"
keepalive_s = 5
[security]
console_public_key = "{public_key}"
allowed_media_hosts = ["127.0.0.1"]
[panel]
backend = "mock"
[camera]
backend = "none"
[display]
backend = "none"
[paths]
state_dir = "{state_dir}"
control_socket = "{workdir / (site + '.sock')}"
{extra}
""")
    return config


def control_socket(configs: Sequence[Path]) -> str:
    """Where the daemon will listen: as in appliance.config, a later file wins."""
    named = [paths["control_socket"] for config in configs
             if "control_socket" in (paths := tomllib.loads(config.read_text()).get("paths", {}))]
    if not named:
        raise ValueError(f"none of {[str(config) for config in configs]} sets paths.control_socket")
    return named[-1]


class DaemonProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None, *, overlays: Sequence[Path] = (),
                 options: Sequence[str] = (), log_path: Path | None = None) -> None:
        """`overlays` are read after `config` (each a further `--config`); `options` are more `appliance run`
        arguments, such as --simulate. The output goes to `log_path`, by default beside `config`."""
        self.config = config
        self.configs = [config, *overlays]
        self.options = list(options)
        # Only what the caller hands over: a NOTIFY_SOCKET of the test runner's own must not leak in.
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.env.update(env or {})
        self.log_path = log_path or config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.socket = control_socket(self.configs)

    def start(self, wait: bool = True) -> DaemonProcess:
        files = [argument for config in self.configs for argument in ("--config", str(config))]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "appliance", "run", *files, *self.options],
                                            stdout=log, stderr=log, env=self.env, cwd=REPO)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the control socket answers."""
        wait_until(self._answers, timeout, what=lambda: f"the daemon's control socket:\n{self.log()}")

    def _answers(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
        try:
            request(self.socket, {"cmd": "version"}, timeout=1.0)
            return True
        except NoDaemon:
            return False

    def wait_connected(self, timeout: float = 10.0) -> dict[str, Any]:
        """Connected means subscribed too: a command published before this could be lost."""
        return self.wait_status(lambda status: status["broker_connected"], timeout)

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        return request(self.socket, body, timeout=30)

    def status(self) -> dict[str, Any]:
        return self.control({"cmd": "status"})["status"]

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def matching() -> dict[str, Any] | None:
            last.clear()
            last.update(self.status())
            return dict(last) if predicate(last) else None

        return wait_until(matching, timeout, what=lambda: f"daemon status to match; last: {last}")

    def alive(self) -> bool:
        return bool(self.process) and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, as systemd stops it; its exit code."""
        return stop_process(self.process, timeout=10) if self.process else None

    def kill(self) -> None:
        """SIGKILL: no goodbye, the broker publishes the last will."""
        if self.process:
            stop_process(self.process, signal.SIGKILL)
