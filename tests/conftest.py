from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.site import ConsoleKey


def pytest_configure(config: pytest.Config) -> None:
    # A missing event or effect handler crashes the event loop (and so the test) instead of being
    # logged; daemons the tests start as processes inherit it.
    os.environ["APPLIANCE_STRICT"] = "1"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "broker").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def console_key() -> ConsoleKey:
    return ConsoleKey()


@pytest.fixture
def observer(broker: Mosquitto) -> Iterator[MqttRecorder]:
    """Records everything under the topic prefix on the test's broker, from before the test acts."""
    client = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    yield client
    client.close()


@pytest.fixture
def start_site(tmp_path: Path, broker: Mosquitto, console_key: ConsoleKey) -> Iterator:
    """Start real daemons for sites on the test's broker; every one is stopped afterwards."""
    started: list[DaemonProcess] = []

    def start(site: str = "kalibaru", kind: str = "kecamatan", extra: str = "", env: dict | None = None) -> DaemonProcess:
        config = site_config(tmp_path, site, broker.url, console_key.public_b64, kind=kind, extra=extra)
        daemon = DaemonProcess(config, env).start()
        started.append(daemon)
        daemon.wait_connected()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
