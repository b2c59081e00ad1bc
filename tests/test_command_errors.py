"""Every error code of the contract, reached through a real broker and answered by an ack."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, Topics, group_command_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.site import ConsoleKey, meeting_body

SITE = "kalibaru"
TOPICS = Topics(DEFAULT_TOPIC_PREFIX, SITE, "kecamatan")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, console_key: ConsoleKey) -> Iterator[tuple]:
    workdir = tmp_path_factory.mktemp("errors")
    broker = Mosquitto(workdir / "broker").start()
    daemon = DaemonProcess(site_config(workdir, SITE, broker.url, console_key.public_b64)).start()
    daemon.wait_connected()
    observer = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    yield broker, daemon, observer
    observer.close()
    daemon.stop()
    broker.stop()


def send(observer: MqttRecorder, payload: object, topic: str = TOPICS.cmd) -> int:
    mark = observer.mark()
    observer.publish(topic, payload if isinstance(payload, (bytes, str)) else json.dumps(payload))
    return mark


def next_ack(observer: MqttRecorder, mark: int) -> dict:
    return observer.wait_for(lambda t, p: t == TOPICS.ack, after=mark)[1]


CASES = {  # case name: (expected code, payload maker)
    "too_large": ("too_large", lambda key: {**key.command("ping"), "padding": "x" * 17000}),
    "bad_json": ("bad_json", lambda key: "{not json"),
    "bad_json_array": ("bad_json", lambda key: "[1, 2, 3]"),
    "bad_json_not_utf8": ("bad_json", lambda key: b"\xff\xfe{}"),
    "unsupported_version": ("unsupported_version", lambda key: {**key.command("ping"), "v": 2}),
    "bad_schema": ("bad_schema", lambda key: {k: v for k, v in key.command("ping").items() if k != "to"}),
    "bad_schema_body": ("bad_schema", lambda key: key.command("meeting.start", {"title": "no urls"})),
    "unknown_type": ("unknown_type", lambda key: key.command("reboot")),
    "bad_signature_other_key": ("bad_signature", lambda key: ConsoleKey().command("ping")),
    "bad_signature_unsigned": ("bad_signature", lambda key: key.command("ping", signed=False)),
    "bad_signature_tampered": ("bad_signature", lambda key: {**key.command("ping", to=["pesanggaran"]), "to": [SITE]}),
    "not_for_this_site": ("not_for_this_site", lambda key: key.command("ping", to=["pesanggaran"])),
    "expired": ("expired", lambda key: key.command("ping", issued_at=time.time() - 700, ttl_s=600)),
    "expired_future": ("expired", lambda key: key.command("ping", issued_at=time.time() + 900)),
    "expired_span": ("expired", lambda key: key.command("ping", ttl_s=2 * 86400)),
    "url_not_allowed_host": ("url_not_allowed", lambda key: key.command(
        "meeting.start", {**meeting_body(), "program_url": "srt://evil.example:9000"})),
    "url_not_allowed_scheme": ("url_not_allowed", lambda key: key.command(
        "meeting.start", {**meeting_body(), "ingest_url": "file:///etc/passwd"})),
    "invalid_state": ("invalid_state", lambda key: key.command("join")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_code_is_acked_and_daemon_keeps_serving(running: tuple, console_key: ConsoleKey, case: str) -> None:
    _, daemon, observer = running
    expected, make = CASES[case]
    payload = make(console_key)
    ack = next_ack(observer, send(observer, payload))
    assert ack["ok"] is False
    assert ack["error"]["code"] == expected, ack
    assert ack["error"]["message"]
    assert ack["site"] == SITE and ack["v"] == 1 and ack["at"].endswith("Z")
    if isinstance(payload, dict) and expected != "too_large":
        assert ack["id"] == payload.get("id")
    # The next good command is still served.
    ping = console_key.command("ping", to=[SITE])
    send(observer, ping)
    good = observer.ack_for(ping["id"], SITE)
    assert good["ok"] is True and good["type"] == "ping"
    assert daemon.alive()


def test_replayed_command_is_refused(running: tuple, console_key: ConsoleKey) -> None:
    _, _, observer = running
    command = console_key.command("ping", to=[SITE])
    first = next_ack(observer, send(observer, command))
    second = next_ack(observer, send(observer, command))
    assert first["ok"] is True
    assert second["ok"] is False and second["error"]["code"] == "replayed"


def test_group_and_wildcard_commands_reach_the_site(running: tuple, console_key: ConsoleKey) -> None:
    _, _, observer = running
    for group in ("all", "kecamatan"):
        command = console_key.command("ping", to=["*"])
        send(observer, command, topic=group_command_topic(DEFAULT_TOPIC_PREFIX, group))
        assert observer.ack_for(command["id"], SITE)["ok"] is True
    desa_only = console_key.command("ping", to=["*"])
    mark = send(observer, desa_only, topic=group_command_topic(DEFAULT_TOPIC_PREFIX, "desa"))
    ping = console_key.command("ping", to=[SITE])
    send(observer, ping)
    observer.ack_for(ping["id"], SITE, after=mark)
    acks = [p for t, p, _ in observer.messages[mark:] if t.endswith("/ack") and p.get("id") == desa_only["id"]]
    assert acks == [], "a kecamatan site answered a command for the desa group"


def test_retained_command_is_ignored_and_answered(tmp_path, broker: Mosquitto, console_key: ConsoleKey) -> None:
    observer = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    try:
        command = console_key.command("meeting.start", meeting_body(), to=[SITE])
        observer.publish(TOPICS.cmd, json.dumps(command), retain=True)  # returns once the broker holds it
        daemon = DaemonProcess(site_config(tmp_path, SITE, broker.url, console_key.public_b64)).start()
        ack = observer.ack_for(command["id"], SITE)
        assert ack["ok"] is False and ack["error"]["code"] == "retained_command"
        assert daemon.status()["state"] == "idle"
        daemon.stop()
    finally:
        observer.publish(TOPICS.cmd, b"", retain=True)
        observer.close()
