"""The two halves of an update together: the console's `update keys`, `publish` and `start`, and a real
site (the daemon as systemd runs it, logged in with this console's provisioning file, through the
console's TLS broker) that downloads the bundle from nginx, checks it against the console's update CA
with real RAUC, installs it into slot B and asks for the trial reboot; then the trial boot commits and
`update status` shows it."""

from __future__ import annotations

from pathlib import Path

from appliance_dev.bundle_server import BundleServer
from appliance_dev.rauc_rig import RaucDevice, build_bundle
from appliance_dev.waiting import stop_process, wait_until
from tests.console.conftest import Console
from tests.console.test_collect import start_collect


def test_the_console_publishes_and_starts_an_update_that_a_real_site_installs_and_keeps(
        fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    collector = start_collect(console)  # stores the site's events and states: `update status` reads them
    console.ok("update", "keys")
    keys = console.home / "update"
    releases = tmp_path / "releases"
    releases.mkdir()
    bundle = build_bundle(releases / "rapat-1.1.0.raucb", "1.1.0", keys / "signing.pem", keys / "signing-key.pem")
    with BundleServer(releases) as server, RaucDevice(keys / "ca.pem") as device:
        console.ok("update", "publish", str(bundle), "--url", server.url(bundle.name))
        env = {"DBUS_SYSTEM_BUS_ADDRESS": device.env["DBUS_SYSTEM_BUS_ADDRESS"], "RAPAT_CMDLINE": str(device.cmdline)}
        extra = f'[update]\nrauc_config = "{device.system_conf}"\n'
        daemon = console.start_daemon("kalibaru", tmp_path, extra=extra, env=env)
        console.wait_online(["kalibaru"], timeout=20)
        console.ok("update", "start", "1.1.0", "--sites", "kalibaru")
        request = Path(daemon.socket).parent / "reboot-request"
        wait_until(lambda: request.exists() and request.read_text() == "tryboot\n", 60,
                   what=lambda: f"the trial reboot request:\n{daemon.log()[-1500:]}")
        assert device.slot_version("B") == "1.1.0"
        daemon.stop()  # the reboot, played: the firmware's one tryboot into B
        request.unlink()
        device.boot(device.firmware_boots(tryboot_flag=True), trial=True)
        daemon.start(wait=False)
        wait_until(lambda: device.firmware_boots(tryboot_flag=False) == "B", 90,
                   what=lambda: f"the commit:\n{daemon.log()[-1500:]}")
        site = {}

        def committed() -> bool:
            site.update(console.ok("update", "status", "1.1.0", "--json").json["sites"][0])
            return site["committed"] is True

        wait_until(committed, 20, what=lambda: f"update status to show the commit: {site}")
    stop_process(collector)
    assert site["running"] == "1.1.0" and site["downloaded"] and site["installed"] and not site["rolled_back"], site
