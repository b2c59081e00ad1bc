"""TLS with a private CA, per-site passwords and an ACL, against a real Mosquitto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, group_command_topic, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from appliance_dev.waiting import wait_until
from tests.support.pki import make_ca
from tests.support.site import ConsoleKey

PASSWORDS = {"kalibaru": "pw-kalibaru", "pesanggaran": "pw-pesanggaran", "console": "pw-console"}
PREFIX = DEFAULT_TOPIC_PREFIX
ACL = f"""
user console
topic readwrite {PREFIX}/#

pattern read {site_topic(PREFIX, "%u", "cmd")}
pattern read {group_command_topic(PREFIX, "all")}
pattern read {group_command_topic(PREFIX, "kecamatan")}
pattern write {site_topic(PREFIX, "%u", "state")}
pattern write {site_topic(PREFIX, "%u", "ack")}
pattern write {site_topic(PREFIX, "%u", "event")}
pattern write {site_topic(PREFIX, "%u", "telemetry")}
pattern write {site_topic(PREFIX, "%u", "uptime")}
pattern write {site_topic(PREFIX, "%u", "selftest")}
"""


def tls_site(workdir: Path, broker: Mosquitto, key: ConsoleKey, ca: str, site: str = "kalibaru",
             password: str | None = None, topic_prefix: str = PREFIX) -> DaemonProcess:
    password_file = workdir / f"{site}-password"
    password_file.write_text((password or PASSWORDS[site]) + "\n")
    extra_broker = f'username = "{site}"\npassword_file = "{password_file}"\nca_file = "{ca}"\n'
    config = site_config(workdir, site, broker.url.replace("127.0.0.1", "localhost"), key.public_b64)
    text = config.read_text().replace("keepalive_s = 5\n", f"keepalive_s = 5\n{extra_broker}"
                                      f'topic_prefix = "{topic_prefix}"\n')
    config.write_text(text)
    return DaemonProcess(config)


@pytest.fixture
def secure_broker(tmp_path: Path):
    pki = make_ca(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "broker", tls=pki, passwords=PASSWORDS, acl=ACL).start()
    yield broker, pki
    broker.stop()


def test_site_connects_over_tls_with_password(tmp_path: Path, secure_broker, console_key: ConsoleKey) -> None:
    broker, pki = secure_broker
    console = MqttRecorder(broker.port, f"{PREFIX}/#", username="console", password="pw-console", tls_ca=pki["ca"])
    daemon = tls_site(tmp_path, broker, console_key, pki["ca"]).start()
    try:
        status = daemon.wait_status(lambda s: s["broker_connected"], timeout=10)
        assert status["health"]["broker"] == "ok"
        command = console_key.command("ping", to=["kalibaru"])
        console.publish(site_topic(PREFIX, "kalibaru", "cmd"), json.dumps(command))
        assert console.ack_for(command["id"], "kalibaru")["ok"] is True
    finally:
        daemon.stop()
        console.close()


def test_wrong_ca_is_refused_with_a_clear_error(tmp_path: Path, secure_broker, console_key: ConsoleKey) -> None:
    broker, _ = secure_broker
    other = make_ca(tmp_path / "other-pki", name="Some Other CA")
    daemon = tls_site(tmp_path, broker, console_key, other["ca"]).start()
    try:
        wait_until(lambda: "not trusted" in daemon.log(), 10, what="the daemon to report the untrusted certificate")
        status = daemon.wait_status(lambda s: s["health"]["broker"] == "error")
        assert status["broker_connected"] is False and status["health"]["broker"] == "error"
        assert "not trusted" in daemon.log() and "broker.ca_file" in daemon.log()
        assert daemon.alive()
    finally:
        daemon.stop()


def test_wrong_password_is_reported_and_retried(tmp_path: Path, secure_broker, console_key: ConsoleKey) -> None:
    broker, pki = secure_broker
    daemon = tls_site(tmp_path, broker, console_key, pki["ca"], password="wrong").start()
    try:
        wait_until(lambda: "refused the session" in daemon.log(), 10, what="the daemon to report the refused login")
        assert daemon.status()["broker_connected"] is False
        assert daemon.alive()
    finally:
        daemon.stop()


def test_site_cannot_publish_into_another_sites_topics(tmp_path: Path, secure_broker) -> None:
    broker, pki = secure_broker
    intruder = MqttRecorder(broker.port, site_topic(PREFIX, "pesanggaran", "#"), username="kalibaru",
                            password="pw-kalibaru", tls_ca=pki["ca"])
    witness = MqttRecorder(broker.port, f"{PREFIX}/#", username="console", password="pw-console", tls_ca=pki["ca"])
    try:
        for topic in (site_topic(PREFIX, "pesanggaran", "state"), site_topic(PREFIX, "pesanggaran", "cmd"),
                      group_command_topic(PREFIX, "all"), site_topic(PREFIX, "kalibaru", "cmd")):
            assert intruder.publish(topic, "{}") == 135, topic  # v5: Not authorized
        assert intruder.publish(site_topic(PREFIX, "kalibaru", "event"), "{}") < 128
        witness.publish(site_topic(PREFIX, "pesanggaran", "event"), json.dumps({"secret": 1}))
        witness.wait_for(lambda t, p: p == {"secret": 1})  # the broker has routed it to every subscriber allowed
        intruder.settle(0.2)  # and the intruder's client had time to take it in, had it been sent
        assert not any(topic.startswith(site_topic(PREFIX, "pesanggaran", "")) for topic, _, _ in intruder.messages)
        assert not any(topic == site_topic(PREFIX, "pesanggaran", "state") for topic, _, _ in witness.messages)
    finally:
        intruder.close()
        witness.close()


def test_daemon_reports_denied_publishes_in_health(tmp_path: Path, secure_broker, console_key: ConsoleKey) -> None:
    """A site given the wrong topic prefix is connected but every publish is refused: health says so."""
    broker, pki = secure_broker
    daemon = tls_site(tmp_path, broker, console_key, pki["ca"], topic_prefix="wrong/v1").start()
    try:
        status = daemon.wait_status(lambda s: s["health"]["broker"] == "error" and s["broker_connected"], timeout=10)
        assert status["health"]["broker"] == "error" and status["led"] == "double_blink"
        assert "Not authorized" in daemon.log()
    finally:
        daemon.stop()
