"""Media URL checks, redaction, and commands that must still get their one ack (issue 15, items 5 and 6).

Unit level: urls.clean_url / redact_url, check_command through the core, the ack encoder, the
signature path, and the uplink's own refusal. The same inputs through a real broker and daemon are in
tests/test_command_errors.py; random ones in tests/test_fuzz.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest

from appliance.adapters.mqtt import encode
from appliance.core import io
from appliance.core.protocol import MAX_JSON_DEPTH, identify
from appliance.core.signing import verify_command
from appliance.core.urls import INGEST_SCHEMES, PROGRAM_SCHEMES, clean_url, redact_text, redact_url, url_problem
from appliance.media.uplink import FfmpegUplink, PermanentError, output_args
from tests.core_helpers import KEY, SITE, command, make_core, published, receive
from tests.support.site import meeting_body

HOSTS = ("media.example.go.id", "127.0.0.1")
GOOD = "rtmp://media.example.go.id/live/kalibaru"

# (what is wrong, URL): every one was accepted before; a device must refuse each as url_not_allowed.
HOSTILE_INGEST = {
    "leading space": " rtmp://media.example.go.id/live/kalibaru",
    "trailing newline": "rtmp://media.example.go.id/live/kalibaru\n",
    "tab in the host": "rtmp://media.example\t.go.id/live/kalibaru",
    "newline in the path": "rtmp://media.example.go.id/live/\nkalibaru",
    "NUL": "rtmp://media.example.go.id/live/kalibaru\x00",
    "carriage return": "\rrtmp://media.example.go.id/live/kalibaru",
    "leading control character": "\x01rtmp://media.example.go.id/live/kalibaru",
    "DEL": "rtmp://media.example.go.id/live/kalibaru\x7f",
    "non-ASCII": "rtmp://media.example.go.id/live/kalibaru\u00e9",
    "space inside (librtmp-style options)": "rtmp://media.example.go.id/live/kalibaru live=1",
    "backslash": "rtmp://media.example.go.id\\@evil.example/live",
    "srt listener": "srt://media.example.go.id:9000?mode=listener",
    "srt rendezvous": "srt://media.example.go.id:9000?streamid=x&mode=rendezvous",
    "rtmp listen": "rtmp://media.example.go.id/live/kalibaru?listen=1",
    "bare listen option": "srt://media.example.go.id:9000?listen",
    "rtmp_listen": "rtmp://media.example.go.id/live/kalibaru?rtmp_listen=1",
    "rtsp push": "rtsp://media.example.go.id/live/kalibaru",
    "http push": "http://media.example.go.id/live/kalibaru",
    "fragment": "rtmp://media.example.go.id/live/kalibaru#x",
    "two @": "rtmp://user@evil.example@media.example.go.id/live",
    "bad escape": "rtmp://media.example.go.id/live/%zz",
    "no //": "rtmp:media.example.go.id/live/kalibaru",
    "port 0": "rtmp://media.example.go.id:0/live",
    "other host": "rtmp://evil.example/live/kalibaru",
}


# --- clean_url ------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", sorted(HOSTILE_INGEST))
def test_hostile_ingest_urls_are_refused(what: str) -> None:
    with pytest.raises(ValueError) as refused:
        clean_url(HOSTILE_INGEST[what], HOSTS, INGEST_SCHEMES)
    message = str(refused.value)
    assert message and "\n" not in message and "\x00" not in message
    assert url_problem(HOSTILE_INGEST[what], HOSTS, INGEST_SCHEMES) == message


@pytest.mark.parametrize("url, expected", [
    (GOOD, GOOD),
    ("RTMP://Media.Example.GO.ID/live/Kalibaru", "rtmp://media.example.go.id/live/Kalibaru"),  # path case kept
    ("rtmp://media.example.go.id:/live/x?", "rtmp://media.example.go.id/live/x"),
    ("rtmp://media.example.go.id:01935/live/x", "rtmp://media.example.go.id:1935/live/x"),
    ("srt://media.example.go.id:9000?mode=caller&passphrase=s3cret-pass&streamid=publish:kalibaru",
     "srt://media.example.go.id:9000?mode=caller&passphrase=s3cret-pass&streamid=publish:kalibaru"),
    ("rtmps://user:p%40ss@media.example.go.id/live/x", "rtmps://user:p%40ss@media.example.go.id/live/x"),
    ("rtmp://[::1]:1935/live/x", "rtmp://[::1]:1935/live/x"),
])
def test_accepted_urls_are_rebuilt_from_their_parts(url: str, expected: str) -> None:
    hosts = (*HOSTS, "::1")
    assert clean_url(url, hosts, INGEST_SCHEMES) == expected
    assert clean_url(expected, hosts, INGEST_SCHEMES) == expected


def test_program_url_may_be_pulled_over_more_schemes_than_ingest_is_pushed() -> None:
    for url in ("rtsp://media.example.go.id/program", "https://media.example.go.id/hls/program.m3u8"):
        assert clean_url(url, HOSTS, PROGRAM_SCHEMES) == url
        assert "is not one of rtmp, rtmps, srt" in url_problem(url, HOSTS, INGEST_SCHEMES)
    assert "listen" in url_problem("srt://media.example.go.id:9000?mode=listener", HOSTS, PROGRAM_SCHEMES)


def test_messages_never_repeat_the_url() -> None:
    secret = "srt://media.example.go.id:9000?passphrase=topsecret&mode=listener"
    assert "topsecret" not in url_problem(secret, HOSTS, INGEST_SCHEMES)
    assert "topsecret" not in url_problem(secret.replace("?", "\x00?"), HOSTS, INGEST_SCHEMES)


# --- redaction ------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("rtmp://media.example.go.id/live/streamkey123", "rtmp://media.example.go.id/live/***"),
    ("rtmps://media.example.go.id:443/app/inst/streamkey123/", "rtmps://media.example.go.id:443/app/inst/***/"),
    ("rtmp://media.example.go.id/live", "rtmp://media.example.go.id/live"),  # only an application: nothing secret
    ("srt://media.example.go.id:9000?streamid=publish:k&passphrase=topsecret&latency=200&pkt_size=1316",
     "srt://media.example.go.id:9000?streamid=***&passphrase=***&latency=200&pkt_size=1316"),
    ("rtmp://user:topsecret@media.example.go.id/live", "rtmp://***@media.example.go.id/live"),
    ("rtmp://token123@media.example.go.id/live", "rtmp://***@media.example.go.id/live"),
    ("https://media.example.go.id/hls/p.m3u8?token=topsecret#frag", "https://media.example.go.id/hls/p.m3u8?token=***#***"),
    # no authority: the scheme "a" and the path "@://…" (the property test found `a://@://…` coming back, which
    # the next redaction read as a user part)
    ("A:@://media.example.go.id?passphrase=topsecret", "a:@://media.example.go.id?passphrase=***"),
])
def test_redaction_hides_keys_passphrases_and_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # redacting twice changes nothing


def test_redaction_of_text_finds_every_url_and_never_raises() -> None:
    line = ("[srt @ 0x55] Connection to srt://h:9000?passphrase=topsecret&pkt_size=1316 failed: "
            "rtmp://h/live/streamkey123: Connection refused")
    shown = redact_text(line)
    assert "topsecret" not in shown and "streamkey123" not in shown
    assert shown.endswith("rtmp://h/live/***: Connection refused")
    assert redact_text("Error opening output 'rtmp://h/live/streamkey123'.") == "Error opening output 'rtmp://h/live/***'."
    assert "topsecret" not in redact_text("rtmp://'@h/live?passphrase=topsecret")  # "'" is a URL character
    assert redact_url("rtmp://[::1/live/key").startswith("(a URL that does not parse")
    assert redact_text("no URL here") == "no URL here"


# --- through the core: refusals, and what the media backends are handed ---------------------------
def meeting(**urls: str) -> dict[str, Any]:
    return {**meeting_body(auto_join=True), **urls}


@pytest.mark.parametrize("what", sorted(HOSTILE_INGEST))
def test_the_core_refuses_hostile_ingest_urls_and_starts_nothing(what: str) -> None:
    core, _ = make_core(camera=True, display=True)
    url = HOSTILE_INGEST[what].replace("media.example.go.id", "127.0.0.1")
    ack, effects = command(core, "meeting.start", meeting(ingest_url=url))
    assert ack["ok"] is False and ack["error"]["code"] == "url_not_allowed", ack
    assert ack["error"]["message"].startswith("body.ingest_url: ")
    assert not [e for e in effects if isinstance(e, (io.StartUplink, io.StartProgram))]
    assert core.meeting is None
    encode(ack)  # and the answer can be sent


@pytest.mark.parametrize("url", [" srt://127.0.0.1:9000", "srt://127.0.0.1:9000?mode=listener", "srt://127.0.0.1:9000\x00",
                                 "rtsp://127.0.0.1/p\t"])
def test_the_core_refuses_hostile_program_urls(url: str) -> None:
    core, _ = make_core(camera=True, display=True)
    ack, _ = command(core, "meeting.start", meeting(program_url=url))
    assert ack["error"]["code"] == "url_not_allowed" and ack["error"]["message"].startswith("body.program_url: ")


def test_uplink_and_program_get_the_rebuilt_urls() -> None:
    core, _ = make_core(camera=True, display=True)
    ack, effects = command(core, "meeting.start", meeting(
        program_url="SRT://127.0.0.1:9000?streamid=read:program", ingest_url="RTMP://127.0.0.1:/live/{site}?"))
    assert ack["ok"] is True, ack
    uplink = [e.url for e in effects if isinstance(e, io.StartUplink)]
    program = [e.url for e in effects if isinstance(e, io.StartProgram)]
    assert uplink == [f"rtmp://127.0.0.1/live/{SITE}"]
    assert program == ["srt://127.0.0.1:9000?streamid=read:program"]
    assert core.meeting is not None and core.meeting.ingest_url == uplink[0]


# --- item 6: every input gets exactly one ack that can be sent --------------------------------------
def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_unknown_key_is_bad_json_with_the_command_named() -> None:
    core, _ = make_core()
    signed = KEY.command("ping", to=[SITE], issued_at=core.clock.wall())
    text = json.dumps(signed)
    payload = (text[:-1] + ', "extra": ' + nested(MAX_JSON_DEPTH + 1) + "}").encode()
    acks = published(receive(core, payload), "/ack")
    assert len(acks) == 1 and acks[0]["error"]["code"] == "bad_json", acks
    assert acks[0]["id"] == signed["id"] and "deeper" in acks[0]["error"]["message"]
    shallow = (text[:-1] + ', "extra": ' + nested(MAX_JSON_DEPTH - 2) + "}").encode()
    assert published(receive(core, shallow), "/ack")[0]["error"]["code"] == "bad_signature"  # extra key not signed


def test_the_signature_check_survives_a_document_too_deep_to_encode() -> None:
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    signed = KEY.command("ping", to=[SITE])
    assert verify_command({**signed, "extra": deep}, KEY.private.public_key()) is False


def test_a_lone_surrogate_type_is_not_echoed_and_the_ack_encodes() -> None:
    signed = KEY.command("ping", to=[SITE])
    payload = json.dumps({**signed, "type": "\ud800"}).encode()  # ASCII text: "\ud800" as a JSON escape
    assert identify(payload) == (signed["id"], None)
    core, _ = make_core()
    acks = published(receive(core, payload), "/ack")
    assert len(acks) == 1 and acks[0]["error"]["code"] == "unknown_type"
    assert acks[0]["type"] is None
    assert json.loads(encode(acks[0]).decode("utf-8")) == acks[0]


def test_encode_sends_what_utf8_cannot_carry_as_an_escape() -> None:
    payload = {"v": 1, "type": "\ud800", "title": "Rapat \u00e9"}
    data = encode(payload)
    data.decode("utf-8")  # strict: valid UTF-8
    assert json.loads(data) == payload
    assert encode({"title": "Rapat \u00e9"}) == '{"title":"Rapat \u00e9"}'.encode()  # UTF-8, not escapes, when it can


# --- the uplink hands ffmpeg only rebuilt URLs, and its reports hide keys ----------------------------
class ScriptUplink(FfmpegUplink):
    """An FfmpegUplink whose "ffmpeg" is a shell script: it says what ffmpeg says when the server is
    not there (the URL, then the error) and exits. Records every argument list it was given."""

    def __init__(self, post: Any) -> None:
        super().__init__({"site": {"id": SITE, "name": "Kalibaru"}, "camera": {"audio_device": ""},
                          "audio": {"echo": "off"}}, post)
        self.commands: list[list[str]] = []

    def command_with(self, output: list[str], audio_filters: str = "") -> list[str]:
        cmd = ["sh", "-c", 'echo "$1: Connection refused" >&2; sleep 0.3; exit 1', "sh", output[-1]]
        self.commands.append(cmd)
        return cmd


class Posted:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_status(self, status: str, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for event in self.events:
                    if isinstance(event, io.MediaStatus) and event.status == status:
                        return event
                assert time.monotonic() < deadline, f"no uplink {status!r}; saw {self.events}"
                self.changed.wait(0.1)


@pytest.mark.parametrize("url", [" rtmp://127.0.0.1:1/live/kalibaru", "rtmp://127.0.0.1:1/live/kalibaru\x00",
                                 "rtsp://127.0.0.1:1/live/kalibaru", "srt://127.0.0.1:1?mode=listener"])
def test_the_uplink_refuses_what_the_core_would_refuse_and_runs_nothing(url: str) -> None:
    with pytest.raises(PermanentError):
        output_args(url)
    posted = Posted()
    uplink = ScriptUplink(posted)
    try:
        uplink.start(url)
        failed = posted.wait_status("failed")
        assert "rtmp://" in failed.detail and failed.detail.isprintable()
        assert uplink.commands == []
    finally:
        uplink.close()


def test_ffmpeg_gets_the_rebuilt_url() -> None:
    assert output_args("RTMP://127.0.0.1:/live/kalibaru")[-1] == "rtmp://127.0.0.1/live/kalibaru"
    assert output_args("srt://127.0.0.1:9000?streamid=publish:k")[-1] == "srt://127.0.0.1:9000?streamid=publish:k&pkt_size=1316"


@pytest.mark.parametrize("url, secrets", [
    ("rtmp://127.0.0.1:1/live/streamkey123", ["streamkey123"]),
    ("srt://user:pw123@127.0.0.1:1?streamid=publish:sid456&passphrase=topsecret789", ["pw123", "sid456", "topsecret789"]),
    ("srt://127.0.0.1:1\x00?passphrase=topsecret789", ["topsecret789"]),  # refused, and reported without it
    (" rtmp://127.0.0.1:1/live/streamkey123", ["streamkey123"]),
])
def test_uplink_reports_and_logs_hide_stream_keys(url: str, secrets: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.uplink")
    posted = Posted()
    uplink = ScriptUplink(posted)
    try:
        uplink.start(url)
        reported = posted.wait_status("retrying" if url.isprintable() and url[0] != " " else "failed")
    finally:
        uplink.close()
    assert "***" in reported.detail and reported.detail.isprintable()
    if uplink.commands:
        assert "Connection refused" in reported.detail
        assert any(secret in " ".join(uplink.commands[0]) for secret in secrets)  # ffmpeg itself gets the key
    shown = [event.detail for event in posted.events if isinstance(event, io.MediaStatus)] + caplog.messages
    leaks = [text for text in shown for secret in secrets if secret in text]
    assert not leaks, leaks


def test_a_query_option_whose_name_is_no_name_is_hidden_whole() -> None:
    # Found by the property test below: after the first `?` everything is the query, stream key included.
    shown = redact_url("rtmp://0?@media.example.go.id/live/BBBBBBBBBBBB?mode=caller")
    assert "BBBBBBBBBBBB" not in shown and shown == "rtmp://0?***=***"
