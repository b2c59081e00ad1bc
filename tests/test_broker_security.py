"""TLS with a private CA, per-site passwords and an ACL, against a real Mosquitto."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.pki import make_ca
from tests.support.site import ConsoleKey, DaemonProcess, Observer, site_config

PASSWORDS = {"kalibaru": "pw-kalibaru", "pesanggaran": "pw-pesanggaran", "console": "pw-console"}
ACL = """
user console
topic readwrite rapat/v1/#

pattern read rapat/v1/site/%u/cmd
pattern read rapat/v1/group/all/cmd
pattern read rapat/v1/group/kecamatan/cmd
pattern write rapat/v1/site/%u/state
pattern write rapat/v1/site/%u/ack
pattern write rapat/v1/site/%u/event
pattern write rapat/v1/site/%u/telemetry
pattern write rapat/v1/site/%u/uptime
pattern write rapat/v1/site/%u/selftest
"""


def tls_site(workdir: Path, broker: Mosquitto, key: ConsoleKey, ca: str, site: str = "kalibaru",
             password: str | None = None, topic_prefix: str = "rapat/v1") -> DaemonProcess:
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
    console = Observer(broker.port, username="console", password="pw-console", tls_ca=pki["ca"])
    daemon = tls_site(tmp_path, broker, console_key, pki["ca"]).start()
    try:
        status = daemon.wait_status(lambda s: s["broker_connected"], timeout=10)
        assert status["health"]["broker"] == "ok"
        command = console_key.command("ping", to=["kalibaru"])
        console.publish("rapat/v1/site/kalibaru/cmd", json.dumps(command))
        assert console.ack_for(command["id"], "kalibaru")["ok"] is True
    finally:
        daemon.stop()
        console.close()


def test_wrong_ca_is_refused_with_a_clear_error(tmp_path: Path, secure_broker, console_key: ConsoleKey) -> None:
    broker, _ = secure_broker
    other = make_ca(tmp_path / "other-pki", name="Some Other CA")
    daemon = tls_site(tmp_path, broker, console_key, other["ca"]).start()
    try:
        time.sleep(1.5)
        status = daemon.status()
        assert status["broker_connected"] is False and status["health"]["broker"] == "error"
        assert "not trusted" in daemon.log() and "broker.ca_file" in daemon.log()
        assert daemon.alive()
    finally:
        daemon.stop()


def test_wrong_password_is_reported_and_retried(tmp_path: Path, secure_broker, console_key: ConsoleKey) -> None:
    broker, pki = secure_broker
    daemon = tls_site(tmp_path, broker, console_key, pki["ca"], password="wrong").start()
    try:
        time.sleep(1.5)
        assert daemon.status()["broker_connected"] is False
        assert "refused the session" in daemon.log()
        assert daemon.alive()
    finally:
        daemon.stop()


def test_site_cannot_publish_into_another_sites_topics(tmp_path: Path, secure_broker) -> None:
    broker, pki = secure_broker
    intruder = Observer(broker.port, "rapat/v1/site/pesanggaran/#", username="kalibaru", password="pw-kalibaru",
                        tls_ca=pki["ca"])
    witness = Observer(broker.port, username="console", password="pw-console", tls_ca=pki["ca"])
    try:
        for topic in ("rapat/v1/site/pesanggaran/state", "rapat/v1/site/pesanggaran/cmd",
                      "rapat/v1/group/all/cmd", "rapat/v1/site/kalibaru/cmd"):
            reason = intruder.publish_reason(intruder.publish(topic, "{}"))
            assert reason is not None and reason.value == 135, (topic, reason)  # v5: Not authorized
        own = intruder.publish_reason(intruder.publish("rapat/v1/site/kalibaru/event", "{}"))
        assert own is not None and not own.is_failure
        witness.publish("rapat/v1/site/pesanggaran/event", json.dumps({"secret": 1}))
        time.sleep(0.5)
        assert not any(topic.startswith("rapat/v1/site/pesanggaran") for topic, _, _ in intruder.messages)
        assert not any(topic == "rapat/v1/site/pesanggaran/state" for topic, _, _ in witness.messages)
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
