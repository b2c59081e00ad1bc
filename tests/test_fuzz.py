"""Property-based fuzzing of the command path: nothing crashes, every message is answered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core import io
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, Topics
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.core_helpers import KEY, SITE, make_core, published
from tests.support.site import meeting_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = list(KEY.command("ping"))  # every envelope field the builder writes, `sig` included
TOPICS = Topics(DEFAULT_TOPIC_PREFIX, SITE, "kecamatan")


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["ping", "join", "leave", "meeting.start", "meeting.end", "selftest"]))
    body = {"meeting.start": meeting_body(), "meeting.end": {"meeting_id": "m1"}}.get(kind, {})
    command: dict[str, Any] = KEY.command(kind, body, to=[SITE])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS + ["body.meeting_id", "body.program_url", "extra"]))
        value = draw(json_values)
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
    effects = core.handle(io.MessageReceived(core.topics.cmd, payload))
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
