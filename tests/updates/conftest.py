"""Fixtures for the update tests: the fleet's update keys (made by the console's own code), a RAUC
device in a directory (appliance_dev/rauc_rig.py), signed bundles, and nginx serving them."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load
from appliance.console.update_keys import make_signing_cert, make_update_ca
from appliance_dev.bundle_server import BundleServer
from appliance_dev.rauc_rig import RaucDevice, build_bundle, missing_tools

if missing_tools():
    raise RuntimeError(f"tests/updates need {', '.join(missing_tools())} (make setup installs them)")


class Keys:
    def __init__(self, root: Path, name: str) -> None:
        ca_cert, ca_key = make_update_ca()
        cert, key = make_signing_cert(ca_cert, ca_key)
        root.mkdir(parents=True, exist_ok=True)
        self.ca = root / f"{name}-ca.pem"
        self.cert = root / f"{name}-signing.pem"
        self.key = root / f"{name}-signing.key"
        for path, data in ((self.ca, ca_cert), (self.cert, cert), (self.key, key)):
            path.write_bytes(data)


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory) -> Keys:  # noqa: ANN001
    return Keys(tmp_path_factory.mktemp("keys"), "fleet")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory) -> Keys:  # noqa: ANN001
    return Keys(tmp_path_factory.mktemp("other-keys"), "other")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, fleet_keys: Keys) -> Path:  # noqa: ANN001
    """A directory of bundles the tests share: rapat-<version>.raucb signed by the fleet."""
    root = tmp_path_factory.mktemp("bundles")
    for version in ("1.1.0", "0.9.0"):
        build_bundle(root / f"rapat-{version}.raucb", version, fleet_keys.cert, fleet_keys.key)
    return root


@pytest.fixture
def device(fleet_keys: Keys, monkeypatch) -> Iterator[RaucDevice]:  # noqa: ANN001
    with RaucDevice(fleet_keys.ca) as rig:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", rig.env["DBUS_SYSTEM_BUS_ADDRESS"])
        yield rig


@pytest.fixture
def server(bundles: Path) -> Iterator[BundleServer]:
    with BundleServer(bundles) as running:
        yield running


@pytest.fixture
def device_config(tmp_path: Path, device: RaucDevice) -> Any:
    path = tmp_path / "appliance.toml"
    path.write_text("\n".join([
        "[site]", 'id = "kalibaru"', "[broker]", 'url = "mqtt://127.0.0.1:1"', "[security]", "allow_unsigned = true",
        'allowed_media_hosts = ["127.0.0.1"]', "[panel]", 'backend = "mock"', "[camera]", 'backend = "none"',
        "[display]", 'backend = "none"', "[update]", f'rauc_config = "{device.system_conf}"', "[paths]",
        f'state_dir = "{tmp_path}/state"', f'control_socket = "{tmp_path}/run/control.sock"']) + "\n")
    (tmp_path / "run").mkdir()
    return load([str(path)])


class Events:
    """What an adapter posts, for a test to wait on."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.seen: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.queue.put(event)

    def wait(self, kind: type, timeout: float = 60) -> Any:
        while True:
            event = self.queue.get(timeout=timeout)
            self.seen.append(event)
            if isinstance(event, kind):
                return event


@pytest.fixture
def events() -> Events:
    return Events()
