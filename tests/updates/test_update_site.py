"""A whole site updating itself: real daemons (as processes, the way systemd runs them) on a real
Mosquitto, a signed `update` command, nginx serving the bundle, RAUC installing into slot B, the
daemon asking for the trial reboot, the new version booted on trial and kept once healthy, or given
back by itself when it is not. The reboot is played by the test: stop the daemon, restart RAUC as
the firmware's choice of slot would boot it (RaucDevice.boot), start the daemon again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from appliance_dev.waiting import wait_until

SITE = "kalibaru"


def _event(observer, kind: str, after: int, timeout: float = 60) -> dict:  # noqa: ANN001
    return observer.wait_for(lambda topic, payload: topic.endswith("/event") and payload.get("type") == kind,
                             timeout=timeout, after=after)[1]


def _site(tmp_path: Path, broker, console_key, device, health_timeout_s: int = 300) -> DaemonProcess:  # noqa: ANN001
    extra = f'[update]\nrauc_config = "{device.system_conf}"\nhealth_timeout_s = {health_timeout_s}\n'
    config = site_config(tmp_path, SITE, broker.url, console_key.public_b64, extra=extra)
    env = {"DBUS_SYSTEM_BUS_ADDRESS": device.env["DBUS_SYSTEM_BUS_ADDRESS"], "RAPAT_CMDLINE": str(device.cmdline)}
    return DaemonProcess(config, env)


def _installed_and_rebooting(tmp_path, broker, console_key, observer, device, server, bundles,  # noqa: ANN001
                             health_timeout_s: int = 300) -> DaemonProcess:
    site = _site(tmp_path, broker, console_key, device, health_timeout_s).start()
    site.wait_connected()
    data = (bundles / "rapat-1.1.0.raucb").read_bytes()
    body = {"version": "1.1.0", "url": server.url("rapat-1.1.0.raucb"), "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "allow_downgrade": False}
    command = console_key.command("update", body, to=[SITE])
    mark = observer.mark()
    observer.publish(site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd"), command)
    assert observer.ack_for(command["id"], SITE, after=mark)["ok"]
    assert _event(observer, "update.downloaded", mark)["version"] == "1.1.0"
    assert _event(observer, "update.installed", mark)["version"] == "1.1.0"
    request = Path(site.socket).parent / "reboot-request"
    wait_until(lambda: request.exists() and request.read_text().strip() == "tryboot", 20,
               what=lambda: f"the trial reboot request:\n{site.log()[-2000:]}")
    state = site.status()
    assert state["software"]["update"] == {"version": "1.1.0", "phase": "rebooting", "progress": 100}
    assert state["software"]["other_slot"] == "1.1.0"
    assert device.slot_version("B") == "1.1.0"
    site.stop()  # the reboot (appliance-reboot.service would act on the request)
    request.unlink()
    return site


def test_a_site_installs_reboots_on_trial_and_keeps_a_healthy_version(tmp_path, broker, console_key, observer, device,
                                                                      server, bundles) -> None:  # noqa: ANN001
    _installed_and_rebooting(tmp_path, broker, console_key, observer, device, server, bundles)
    device.boot(device.firmware_boots(tryboot_flag=True), trial=True)
    assert device.booted == "B"
    mark = observer.mark()
    trial = _site(tmp_path, broker, console_key, device).start()
    try:
        committed = _event(observer, "update.committed", mark)
        assert committed["version"] == "1.1.0"
        status = trial.wait_status(lambda status: status["software"]["update"] is None, 10)
        assert status["software"]["running"] == "1.1.0"
    finally:
        trial.stop()
    assert (device.firmware_boots(tryboot_flag=False), device.firmware_boots(tryboot_flag=True)) == ("B", "B")


@pytest.mark.slow  # a minute: the shortest health_timeout_s a site accepts
def test_a_version_that_cannot_reach_the_centre_is_given_back_by_itself(tmp_path, broker, console_key, observer,
                                                                        device, server, bundles) -> None:  # noqa: ANN001
    _installed_and_rebooting(tmp_path, broker, console_key, observer, device, server, bundles, health_timeout_s=60)
    device.boot("B", trial=True)
    broker.stop()  # the new version never reaches the centre (as a broken network stack would)
    trial = _site(tmp_path, broker, console_key, device, health_timeout_s=60).start()
    request = Path(trial.socket).parent / "reboot-request"
    try:
        wait_until(lambda: request.exists(), 90, what=lambda: f"the rollback's reboot request:\n{trial.log()[-2000:]}")
        assert request.read_text().strip() == "normal"
    finally:
        trial.stop()
    assert device.firmware_boots(tryboot_flag=False) == "A"  # what the normal reboot boots
    request.unlink()
    device.boot("A")
    broker.start()
    listener = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")  # subscribed before the old version starts
    old = _site(tmp_path, broker, console_key, device).start()
    try:
        back = _event(listener, "update.rolled_back", 0, timeout=30)
        assert back["version"] == "1.1.0" and "broker never connected" in back["reason"], back
        status = old.wait_status(lambda status: status["broker_connected"], 10)
        assert status["software"]["running"] == "0.1.0" and status["software"]["update"] is None
    finally:
        old.stop()
        listener.close()
