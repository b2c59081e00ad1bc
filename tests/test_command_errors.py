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
    "unknown_type": ("unknown_type", lambda key: key.command("format-disk")),
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
# Media URLs that passed Python's forgiving parse while ffmpeg and VLC get the raw text (issue 15):
# ffmpeg wrote " rtmp://..." to a local file, and a NUL crashed the uplink.
HOSTILE_URLS = {
    "leading_space": ("ingest_url", " rtmp://127.0.0.1/live/{site}"),
    "nul": ("ingest_url", "rtmp://127.0.0.1/live/{site}\x00"),
    "tab": ("ingest_url", "rtmp://127.0.0.1/li\tve/{site}"),
    "newline": ("program_url", "srt://127.0.0.1:9000\n"),
    "control": ("program_url", "\x1bsrt://127.0.0.1:9000"),
    "non_ascii": ("ingest_url", "rtmp://127.0.0.1/live/{site}\u00e9"),
    "srt_listener": ("ingest_url", "srt://127.0.0.1:9000?mode=listener"),
    "srt_listener_program": ("program_url", "srt://127.0.0.1:9000?streamid=read:p&mode=listener"),
    "rtmp_listen": ("ingest_url", "rtmp://127.0.0.1/live/{site}?listen=1"),
    "rtsp_push": ("ingest_url", "rtsp://127.0.0.1/live/{site}"),
    "http_push": ("ingest_url", "http://127.0.0.1/live/{site}"),
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


@pytest.mark.parametrize("name", sorted(HOSTILE_URLS))
def test_hostile_media_url_is_refused_naming_the_field(running: tuple, console_key: ConsoleKey, name: str) -> None:
    _, daemon, observer = running
    field, url = HOSTILE_URLS[name]
    command = console_key.command("meeting.start", {**meeting_body(auto_join=True), field: url})
    ack = observer.ack_for(command["id"], SITE, after=send(observer, command))
    assert ack["error"]["code"] == "url_not_allowed"
    assert ack["error"]["message"].startswith(f"body.{field}: "), ack
    assert daemon.status()["state"] == "idle" and daemon.alive()


def one_ack_each(broker: Mosquitto, console_key: ConsoleKey, payloads: list[bytes]) -> list[dict]:
    """Send `payloads`, then a ping; once the ping is answered, each payload must have had one ack, no more.

    Its own broker and recorder, on the ack topic only: the module's recorder (on `rapat/v1/#`) also
    receives commands, and one nested 990 deep is too deep for its JSON decoder on paho's thread."""
    observer = MqttRecorder(broker.port, TOPICS.ack)
    try:
        for payload in payloads:
            observer.publish_nowait(TOPICS.cmd, payload)
        ping = console_key.command("ping", to=[SITE])
        observer.publish(TOPICS.cmd, json.dumps(ping))
        observer.ack_for(ping["id"], SITE)
        acks = [p for _, p, _ in observer.messages if p.get("id") != ping["id"]]
    finally:
        observer.close()
    assert len(acks) == len(payloads), acks
    return acks


def test_990_deep_array_in_an_unknown_key_gets_one_ack(start_site, broker: Mosquitto, console_key: ConsoleKey) -> None:
    """At 990 levels it raised RecursionError while re-encoding the command for the signature check, so
    no ack at all. Where parsing stops and re-encoding fails depends on the daemon's own stack depth:
    every depth around it is sent, each must be answered `bad_json`."""
    daemon = start_site(SITE)
    commands = {depth: console_key.command("ping", to=[SITE]) for depth in range(940, 1001, 2)}
    payloads = [(json.dumps(command)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}").encode()
                for depth, command in commands.items()]
    acks = one_ack_each(broker, console_key, payloads)
    assert {ack["error"]["code"] for ack in acks} == {"bad_json"}, acks
    named = {ack["id"] for ack in acks} - {None}  # too deep to parse at all: the ack cannot name it
    assert named <= {command["id"] for command in commands.values()}
    assert daemon.alive()


def test_lone_surrogate_type_gets_one_ack(start_site, broker: Mosquitto, console_key: ConsoleKey) -> None:
    """`"type": "\\ud800"` made the ack impossible to encode as UTF-8: no ack at all."""
    daemon = start_site(SITE)
    command = console_key.command("ping", to=[SITE])
    payload = json.dumps({**command, "type": "\ud800"}).encode()  # the JSON escape, as a console could send it
    [ack] = one_ack_each(broker, console_key, [payload])
    assert ack["id"] == command["id"] and ack["type"] is None, ack
    assert ack["ok"] is False and ack["error"]["code"] == "unknown_type", ack
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
