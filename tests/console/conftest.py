"""Harness for the console's tests: the CLI in-process, a real Mosquitto from the generated config,
real daemons as subprocesses. Loopback only, free ports, everything stopped at the end."""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.console.cli import main
from appliance.console.context import Context
from appliance.console.home import Home
from appliance.console.store import CONSOLE_USERNAME, Store
from appliance_dev.broker import Mosquitto
from appliance_dev.localnet import free_port
from appliance_dev.recorder import MqttRecorder
from appliance_dev.simulate import SimSite, SiteSpec
from appliance_dev.site_process import DaemonProcess
from appliance_dev.waiting import stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]


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
    port: int = 0          # the broker's listener for the sites
    console_port: int = 0  # and its listener for the console (init --console-port)
    broker: Mosquitto | None = None
    daemons: list[DaemonProcess] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)  # other programs, such as `collect`

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

    def start_broker(self) -> Mosquitto:
        """The broker as `broker-config` wrote it (TLS, passwords, ACL), run as it is."""
        self.broker = Mosquitto(self.home / "mosquitto", config=self.home / "broker" / "mosquitto.conf",
                                port=self.port).start()
        return self.broker

    def start_daemon(self, site: str, tmp: Path, extra: str = "", display: str = 'backend = "none"',
                     env: dict[str, str] | None = None) -> DaemonProcess:
        """A real `appliance run` with the provisioning file this console wrote for `site`, and no hardware.
        `extra` is more TOML for the test's overlay. Not waited for: wait_online() says when it is up."""
        directory = tmp / f"device-{site}"
        self.ok("provision", site, "--out", str(directory / "boot"))
        overlay = directory / "test.toml"
        overlay.write_text(
            f'[broker]\nca_file = "{directory / "boot" / "ca.pem"}"\n'
            '[panel]\nbackend = "mock"\n[camera]\nbackend = "none"\n'
            f'[display]\n{display}\n'
            f'[paths]\nstate_dir = "{directory / "state"}"\ncontrol_socket = "{directory / "control.sock"}"\n{extra}'
        )
        daemon = DaemonProcess(directory / "boot" / "appliance-site.toml", env, overlays=[overlay],
                               log_path=directory / "daemon.log")
        self.daemons.append(daemon)
        return daemon.start(wait=False)

    def client(self, *topics: str, username: str | None = None, password: str | None = None,
               ca_file: Path | None = None, client_id: str | None = None, refused_ok: bool = False,
               port: int | None = None) -> MqttRecorder:
        """An MQTT v5 client of the generated broker, over TLS to `localhost` (the server certificate's name),
        on the sites' listener unless `port` says otherwise."""
        return MqttRecorder(port or self.port, *topics, host="localhost", username=username, password=password,
                            tls_ca=str(ca_file or self.home / "ca" / "ca.pem"), client_id=client_id,
                            refused_ok=refused_ok)

    def console_password(self) -> str:
        store = Store(self.home / "console.db")
        try:
            return store.get_meta("console_credentials")["password"]
        finally:
            store.close()

    def console_client(self, *topics: str, client_id: str | None = None) -> MqttRecorder:
        """Logged in as the console on its own listener, as a plain client (not a collector: it joins no share group)."""
        return self.client(*topics, username=CONSOLE_USERNAME, password=self.console_password(), client_id=client_id,
                           port=self.console_port)

    def site_client(self, provision_dir: Path, password: str | None = None, refused_ok: bool = False,
                    client_id: str | None = None) -> MqttRecorder:
        """Logged in exactly as the provisioning file in `provision_dir` says (CA taken from beside it), with the
        contract's client id appliance-<site> unless `client_id` says otherwise."""
        config = tomllib.loads((provision_dir / "appliance-site.toml").read_text())
        broker = config["broker"]
        return self.client(username=broker["username"], password=broker["password"] if password is None else password,
                           ca_file=provision_dir / "ca.pem", client_id=client_id or f"appliance-{config['site']['id']}",
                           refused_ok=refused_ok)

    def status_rows(self) -> dict[str, dict]:
        return {row["site"]: row for row in self.ok("status", "--json").json}

    def wait_status_rows(self, done: Callable[[dict[str, dict]], bool], timeout: float,
                         describe: Callable[[dict[str, dict]], str]) -> dict[str, dict]:
        rows: dict[str, dict] = {}

        def matching() -> dict[str, dict] | None:
            rows.clear()
            rows.update(self.status_rows())
            return dict(rows) if done(rows) else None

        return wait_until(matching, timeout, what=lambda: describe(rows), interval=0.1)

    def wait_online(self, sites: list[str], timeout: float = 15.0) -> dict:
        return self.wait_status_rows(lambda rows: all(rows[site]["online"] for site in sites), timeout,
                                     lambda rows: f"sites online; not: {[s for s in sites if not rows[s]['online']]}")

    def wait_states(self, expected: dict[str, str], timeout: float = 5.0) -> dict:
        """Status rows once every site's retained state is as expected (a site that reconnects
        republishes its state, so the broker's view converges rather than being instant)."""
        return self.wait_status_rows(lambda rows: all(rows[site]["state"] == state for site, state in expected.items()),
                                     timeout, lambda rows: f"{expected}; states: { {s: rows[s]['state'] for s in expected} }")

    def with_fleet_broker(self) -> Console:
        """Initialise the console on free ports and run the broker configuration it generates."""
        self.port = free_port()
        self.console_port = next(port for port in iter(free_port, None) if port != self.port)
        self.ok("init", "--broker-url", f"mqtts://localhost:{self.port}", "--console-port", str(self.console_port),
                "--media-host", "127.0.0.1")
        # Run as ourselves: mosquitto otherwise drops to user `mosquitto`, who cannot read the key.
        self.ok("broker-config", "--out", str(self.home / "broker"), "--bind", "127.0.0.1", "--run-as", getpass.getuser())
        self.start_broker()
        return self

    def sim_sites(self, ids: tuple[str, ...]) -> list[SimSite]:
        """Simulated sites (appliance_dev/simulate.py) for `ids`, logged in with the credentials this
        console made, to be started with SimFleet."""
        ctx = Context(Home(self.home))
        try:
            credentials = ctx.store.credentials()
            public_key = ctx.store.get_meta("console_public_key")
            return [SimSite(SiteSpec(site.id, site.kind, credentials[site.id][0]), "localhost", self.port,
                            str(ctx.home.ca_cert), public_key, ("127.0.0.1",)) for site in ctx.store.sites(list(ids))]
        finally:
            ctx.close()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        for daemon in self.daemons:
            daemon.stop()
        if self.broker:
            self.broker.stop()


@pytest.fixture
def console(tmp_path: Path):
    harness = Console(tmp_path / "home")
    yield harness
    harness.stop_all()


@pytest.fixture
def fleet_broker(console: Console) -> Console:
    """An initialised console whose generated broker configuration is running."""
    return console.with_fleet_broker()


@pytest.fixture(autouse=True)
def _no_console_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_CONSOLE_HOME", raising=False)
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))
