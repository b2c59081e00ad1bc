"""The console against real `appliance run` daemons, provisioned by the console, on the generated broker."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, build_command, site_topic
from appliance.core.signing import generate_private_key, sign_command
from tests.console.conftest import Console

START = ("meeting", "start", "--title", "Rapat Koordinasi", "--program-url", "rtmp://127.0.0.1/live/program",
         "--ingest-url", "rtmp://127.0.0.1/live/{site}", "--timeout", "5")
KECAMATAN = ["kalibaru", "licin", "muncar"]


@pytest.fixture
def devices(fleet_broker: Console, tmp_path: Path):
    console = fleet_broker
    for site in console.ok("sites", "list", "--json").json:
        if site["id"] not in KECAMATAN:
            console.ok("sites", "remove", site["id"])
    console.ok("sites", "add", "tamansari", "--name", "Desa Tamansari", "--kind", "desa")
    console.broker.reload()
    daemons = {site: console.start_daemon(site, tmp_path) for site in KECAMATAN + ["tamansari"]}
    console.wait_online(list(daemons))
    return console, daemons


def test_group_meeting_reaches_real_daemons_and_reports_an_offline_one(devices) -> None:
    console, daemons = devices
    first = console.ok(*START, "--group", "kecamatan", "--json").json
    assert first["summary"] == {"targeted": 3, "ok": 3, "refused": 0, "no_answer": 0}
    assert [row["site"] for row in first["results"]] == KECAMATAN
    status = console.wait_states({**{site: "meeting_available" for site in KECAMATAN}, "tamansari": "idle"})
    assert status["tamansari"]["meeting"] is None and status["kalibaru"]["meeting"].startswith("rapat-koordinasi-")

    daemons["licin"].kill()
    console.wait_states({"licin": "offline"})  # the broker has published licin's last will
    second = console.run(*START, "--group", "kecamatan", "--timeout", "1.5")
    assert second.code == 1, second.err
    rows = {line.split()[0]: line.split()[1] for line in second.out.splitlines()[2:5]}
    assert rows == {"kalibaru": "ok", "licin": "offline", "muncar": "ok"}, second.out + second.err
    assert "2 ok, 0 refused, 1 without answer of 3" in second.out
    assert "not every site accepted" in second.err
    status = console.wait_states({"licin": "offline"})
    assert status["licin"]["online"] is False
    assert status["licin"]["last_seen"]  # remembered from when it was online


def test_auto_join_then_end(devices) -> None:
    console, _ = devices
    console.ok(*START, "--sites", "kalibaru", "--auto-join", "--meeting-id", "musrenbang-2026")
    row = console.wait_states({"kalibaru": "in_meeting"})["kalibaru"]
    assert row["meeting"] == "musrenbang-2026"
    assert console.ok("meeting", "end", "--json").json["results"][0]["state"] in ("idle", "leaving")


def test_commands_signed_by_another_key_are_rejected_by_the_device(devices) -> None:
    console, _ = devices
    # Even with the console's own broker login, a command needs the console's signing key.
    client = console.console_client()
    try:
        client.subscribe(site_topic(DEFAULT_TOPIC_PREFIX, "kalibaru", "ack"))
        body = {"meeting_id": "forged", "title": "Forged", "program_url": "rtmp://127.0.0.1/p",
                "ingest_url": "rtmp://127.0.0.1/{site}"}
        command = build_command("meeting.start", body, to=["kalibaru"], issued_at=time.time(), ttl_s=600,
                                command_id="cmd-forged-1")
        forged = sign_command(command, generate_private_key())
        unsigned = {**command, "id": "cmd-unsigned-1"}
        bad_base64 = {**command, "id": "cmd-garbage-1", "sig": base64.b64encode(b"x" * 64).decode()}
        for payload in (forged, unsigned, bad_base64):
            assert client.publish(site_topic(DEFAULT_TOPIC_PREFIX, "kalibaru", "cmd"), json.dumps(payload)) < 128
        client.ack_for(bad_base64["id"], "kalibaru")  # the last one sent: the daemon answers in order
        # Keyed by id: QoS 1 is at-least-once, a reconnect may deliver an ack twice.
        acks = {message.payload["id"]: message.payload for message in client.messages}
        assert [(ack["id"], ack["ok"], ack["error"]["code"]) for ack in acks.values()] == [
            ("cmd-forged-1", False, "bad_signature"), ("cmd-unsigned-1", False, "bad_signature"),
            ("cmd-garbage-1", False, "bad_signature")]
    finally:
        client.close()
    assert console.wait_states({"kalibaru": "idle"})["kalibaru"]["meeting"] is None


def test_removing_a_site_clears_its_retained_state(devices) -> None:
    console, daemons = devices
    daemons["muncar"].stop()
    assert console.wait_states({"muncar": "offline"})["muncar"]["online"] is False
    removed = console.ok("sites", "remove", "muncar")
    assert "cleared muncar's retained state on the broker" in removed.out
    rows = {row["site"]: row for row in console.ok("status", "--json").json}
    assert "muncar" not in rows and rows["kalibaru"]["online"] is True
