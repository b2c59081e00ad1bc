"""Property-based fuzzing of the command path: nothing crashes, every message is answered."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.adapters.mqtt import encode
from appliance.core import io
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, Topics
from appliance.core.urls import INGEST_SCHEMES, PROGRAM_SCHEMES, clean_url, redact_text, redact_url
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.core_helpers import KEY, SITE, make_core, published, receive
from tests.support.site import meeting_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = list(KEY.command("ping"))  # every envelope field the builder writes, `sig` included
TOPICS = Topics(DEFAULT_TOPIC_PREFIX, SITE, "kecamatan")
MEDIA_HOSTS = ("media.example.go.id", "127.0.0.1")
# What Python's URL parser skips or strips and ffmpeg/VLC would not, and what a URL must escape.
HOSTILE_CHARACTERS = [" ", "\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\u00e9", "\u200b", "\ufeff", "\\", "#", "@", "%",
                      "[", "]", "{", "}", "?", "&", "=", ":", "/", "+", '"', "<"]
# Mostly what a URL may hold as it is; sometimes any printable ASCII character.
url_pieces = (st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$'()*+,;=:", max_size=10)
              | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10))


@st.composite
def media_urls(draw: st.DrawFn, secret: str = "", tame: bool = False) -> str:
    """URL-shaped text: schemes, user parts, hosts, ports, paths, SRT and listen options; unless `tame`,
    in half of them any piece may be random text, and some get characters that do not belong in a URL
    slipped in anywhere. `secret` goes where a stream key, passphrase or password would."""
    wild = not tame and draw(st.booleans())

    def pick(choices: list[str], random: st.SearchStrategy[str] = url_pieces) -> str:
        return draw(st.sampled_from(choices) | random if wild else st.sampled_from(choices))

    scheme = pick([*PROGRAM_SCHEMES, *PROGRAM_SCHEMES, "RTMP", "Srt", "file", "tcp", "udp", "", "rtmp "])
    userinfo = pick(["", "", "", "user@", "user:pass@", "u:p%40ss@", "a@b@"], url_pieces.map(lambda text: text + "@"))
    host = pick([*MEDIA_HOSTS, *MEDIA_HOSTS, "MEDIA.Example.go.id", "[::1]", "evil.example", ""])
    port = pick(["", "", "", "", ":1935", ":1935", ":", ":01935", ":0", ":99999", ":abc", ":+1"], st.just(""))
    path = pick(["", "/", "/live", "/live/kalibaru", "/live/kalibaru/", "/live/%41"], url_pieces.map(lambda text: "/" + text))
    keys = ["mode", "MODE", "listen", "rtmp_listen", "passphrase", "streamid", "latency", "pkt_size"]
    options = [(pick(keys), pick(["caller", "listener", "rendezvous", "Caller", "1", ""]))
               for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3])))]
    if secret:
        where = draw(st.sampled_from(["passphrase", "streamid", "token", "password", "stream"]))
        if where == "password":
            userinfo = f"user:{secret}@"
        elif where == "stream":
            scheme, path = draw(st.sampled_from(["rtmp", "rtmps"])), f"/live/{secret}"
        else:
            options.append((where, secret))
    query = "?" + "&".join(f"{key}={value}" for key, value in options) if options else ""
    url = f"{scheme}://{userinfo}{host}{port}{path}{query}"
    for _ in range(0 if secret or tame else draw(st.sampled_from([0, 0, 0, 1, 2]))):
        position = draw(st.integers(0, len(url)))
        url = url[:position] + draw(st.sampled_from(HOSTILE_CHARACTERS)) + url[position:]
    return url


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["ping", "join", "leave", "meeting.start", "meeting.end", "selftest"]))
    body = {"meeting.start": meeting_body(), "meeting.end": {"meeting_id": "m1"}}.get(kind, {})
    command: dict[str, Any] = KEY.command(kind, body, to=[SITE])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS + ["body.meeting_id", "body.program_url", "body.ingest_url", "extra"]))
        value = draw(media_urls() if field.endswith("_url") and draw(st.booleans()) else json_values)
        action = draw(st.sampled_from(["set", "delete"]))
        in_body = field.startswith("body.") and isinstance(command.get("body"), dict)
        target, key = (command["body"], field[5:]) if in_body else (command, field)
        if action == "delete":
            target.pop(key, None)
        else:
            target[key] = value
    return json.dumps(command).encode()


def answers(payload: bytes) -> list[dict]:
    core, _ = make_core()
    effects = receive(core, payload)
    return published(effects, "/ack")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_get_exactly_one_ack(payload: bytes) -> None:
    acks = answers(payload)
    assert len(acks) == 1 and acks[0]["ok"] in (True, False)
    if not acks[0]["ok"]:
        assert acks[0]["error"]["code"] and acks[0]["error"]["message"]


@settings(max_examples=400, deadline=None)
@given(mutated_commands())
def test_mutated_commands_get_exactly_one_ack(payload: bytes) -> None:
    acks = answers(payload)
    assert len(acks) == 1
    ack = acks[0]
    if not ack["ok"]:
        assert ack["error"]["code"] in {
            "too_large", "bad_json", "unsupported_version", "bad_schema", "unknown_type", "bad_signature",
            "not_for_this_site", "expired", "replayed", "url_not_allowed", "invalid_state"}
    json.dumps(ack)  # the answer itself is always valid JSON


@pytest.fixture(scope="module")
def live_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    workdir = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(workdir / "broker").start()
    daemon = DaemonProcess(site_config(workdir, SITE, broker.url, KEY.public_b64)).start()
    daemon.wait_connected()
    observer = MqttRecorder(broker.port, TOPICS.ack)
    yield daemon, observer
    observer.close()
    daemon.stop()
    broker.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=512), mutated_commands()))
def test_fuzzed_payloads_through_the_broker_are_all_answered(live_site: tuple, payload: bytes) -> None:
    daemon, observer = live_site
    mark = observer.mark()
    observer.publish(TOPICS.cmd, payload)
    observer.wait_for(lambda topic, ack: isinstance(ack, dict) and "ok" in ack, timeout=5, after=mark)
    assert daemon.alive()


# --- the local control socket -------------------------------------------------------------------

nested_lines = st.builds(lambda opener, depth, prefix: prefix + opener * depth,
                         st.sampled_from([b"[", b'{"a":', b'{"cmd":"status","x":[']), st.integers(1, 20_000),
                         st.sampled_from([b"", b'{"cmd":"status","x":']))
control_requests = st.fixed_dictionaries(
    {"cmd": st.text(max_size=12).filter(lambda cmd: cmd not in ("press", "selftest"))},  # no waiting for holds
    optional={"hold": json_values, "interactive": json_values, "extra": json_values},
).map(lambda request: json.dumps(request).encode())
socket_lines = st.one_of(st.binary(max_size=2048), json_values.map(lambda value: json.dumps(value).encode()),
                         control_requests, nested_lines)


def control_exchange(path: str, data: bytes, read: bool) -> bytes:
    """Send `data`, stop sending; then everything the daemon answers until it closes, or hang up at once."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(path)
        try:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):  # answered and closed mid-request (over 64 KiB)
            pass
        answer = b""
        while read:
            try:
                chunk = client.recv(65536)
            except ConnectionResetError:  # the daemon closed with bytes of ours unread, after its answer
                break
            if not chunk:
                break
            answer += chunk
        return answer


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=socket_lines, newline=st.booleans(), read=st.booleans())
def test_fuzzed_control_socket_requests_get_one_reply_or_a_clean_close(live_site: tuple, line: bytes, newline: bool,
                                                                      read: bool) -> None:
    daemon, _ = live_site
    answer = control_exchange(daemon.socket, line + (b"\n" if newline else b""), read)
    assert answer or not read, "every request is answered"  # without reading, the client hung up first
    if answer:
        assert answer.endswith(b"\n") and answer.count(b"\n") == 1, answer[:200]
        reply = json.loads(answer)
        assert isinstance(reply, dict) and isinstance(reply["ok"], bool), reply
    assert daemon.alive()
    assert "Traceback" not in daemon.log()


# --- media URLs: whatever arrives, the check never crashes, and what passes is clean ---------------
@settings(max_examples=1500, deadline=None)
@given(url=media_urls() | media_urls(tame=True) | st.text(max_size=60),
       schemes=st.sampled_from([INGEST_SCHEMES, PROGRAM_SCHEMES]), hosts=st.sampled_from([MEDIA_HOSTS, None]))
def test_random_media_urls_are_refused_or_come_back_clean(url: str, schemes: tuple, hosts: tuple | None) -> None:
    try:
        cleaned = clean_url(url, hosts, schemes)
    except ValueError as refused:
        assert str(refused) and str(refused).isprintable()
        return
    assert all("\x21" <= char <= "\x7e" for char in cleaned), cleaned  # printable ASCII, no spaces
    assert clean_url(cleaned, hosts, schemes) == cleaned  # re-parses to itself
    parts, raw = urlsplit(cleaned), urlsplit(url)
    assert parts.scheme in schemes and not parts.fragment
    assert parts.hostname and parts.hostname == raw.hostname and (hosts is None or parts.hostname in hosts)
    assert (parts.port, parts.path, parts.query) == (raw.port, raw.path, raw.query)
    options = parse_qsl(parts.query, keep_blank_values=True)
    assert not [key for key, _ in options if "listen" in key.lower()]
    if parts.scheme == "srt":
        assert {value.lower() for key, value in options if key.lower() == "mode"} <= {"caller"}


@settings(max_examples=500, deadline=None)
@given(data=st.data(), secret=st.text("BCDFGHJKLMNPQRSTVWXZ", min_size=12, max_size=16))
def test_redaction_hides_every_key_in_an_accepted_url(data: st.DataObject, secret: str) -> None:
    url = data.draw(media_urls(secret=secret))
    assert redact_url(url) == redact_url(redact_url(url))
    try:
        url = clean_url(url, None, PROGRAM_SCHEMES)
    except ValueError:
        return
    for shown in (redact_url(url), redact_text(f"[srt @ 0x55] Connection to {url} failed: {url}: I/O error")):
        assert secret not in shown, (url, shown)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_redaction_never_raises(text: str) -> None:
    redact_url(text)
    redact_text(text)


lone_surrogates = st.text(st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["type", "id", "extra", "body.title", "body.meeting_id", "body.ingest_url"]),
       value=lone_surrogates, unsigned=st.booleans())
def test_text_utf8_cannot_carry_still_gets_one_ack_that_can_be_sent(field: str, value: str, unsigned: bool) -> None:
    command = KEY.command("meeting.start", meeting_body(auto_join=True), to=[SITE])
    target, key = (command["body"], field[5:]) if field.startswith("body.") else (command, field)
    target[key] = value
    core, _ = make_core(allow_unsigned=unsigned)
    effects = receive(core, json.dumps(command).encode())  # ASCII: a lone surrogate arrives as a JSON escape
    assert len(published(effects, "/ack")) == 1
    for effect in effects:  # the ack, and the state and events an unsigned command may cause
        if isinstance(effect, io.Publish):
            data = encode(effect.payload)
            assert json.loads(data.decode("utf-8")) == effect.payload
