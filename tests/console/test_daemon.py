"""The console against real `appliance run` daemons, provisioned by the console, on the generated broker."""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path

import pytest

from appliance.console.store import CONSOLE_USERNAME
from appliance.core.clock import rfc3339
from appliance.core.signing import generate_private_key, sign_command
from tests.console.conftest import Console
from tests.console.mqtt_helpers import Client

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
    console.processes[0].send_signal(signal.SIGHUP)
    time.sleep(0.2)
    processes = {site: console.start_daemon(site, tmp_path) for site in KECAMATAN + ["tamansari"]}
    console.wait_online(list(processes))
    return console, processes


def test_group_meeting_reaches_real_daemons_and_reports_an_offline_one(devices) -> None:
    console, processes = devices
    first = console.ok(*START, "--group", "kecamatan", "--json").json
    assert first["summary"] == {"targeted": 3, "ok": 3, "refused": 0, "no_answer": 0}
    assert [row["site"] for row in first["results"]] == KECAMATAN
    status = console.wait_states({**{site: "meeting_available" for site in KECAMATAN}, "tamansari": "idle"})
    assert status["tamansari"]["meeting"] is None and status["kalibaru"]["meeting"].startswith("rapat-koordinasi-")

    processes["licin"].send_signal(signal.SIGKILL)
    processes["licin"].wait()
    time.sleep(0.3)  # the broker publishes licin's last will
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
    from appliance.console.context import Context
    from appliance.console.home import Home

    ctx = Context(Home(console.home))
    password = ctx.store.get_meta("console_credentials")["password"]
    ctx.close()
    # Even with the console's own broker login, a command needs the console's signing key.
    client = Client(console.port, console.home / "ca" / "ca.pem", CONSOLE_USERNAME, password)
    try:
        client.subscribe("rapat/v1/site/kalibaru/ack")
        now = time.time()
        command = {"v": 1, "id": "cmd-forged-1", "type": "meeting.start", "issued_at": rfc3339(now),
                   "expires_at": rfc3339(now + 600), "to": ["kalibaru"],
                   "body": {"meeting_id": "forged", "title": "Forged", "program_url": "rtmp://127.0.0.1/p",
                            "ingest_url": "rtmp://127.0.0.1/{site}"}}
        forged = sign_command(command, generate_private_key())
        unsigned = {**command, "id": "cmd-unsigned-1"}
        bad_base64 = {**command, "id": "cmd-garbage-1", "sig": base64.b64encode(b"x" * 64).decode()}
        for payload in (forged, unsigned, bad_base64):
            assert client.publish("rapat/v1/site/kalibaru/cmd", json.dumps(payload)) < 128
        # Keyed by id: QoS 1 is at-least-once, a reconnect may deliver an ack twice.
        acks = {ack["id"]: ack for ack in (json.loads(body) for _, body in client.drain(1.0))}
        assert [(ack["id"], ack["ok"], ack["error"]["code"]) for ack in acks.values()] == [
            ("cmd-forged-1", False, "bad_signature"), ("cmd-unsigned-1", False, "bad_signature"),
            ("cmd-garbage-1", False, "bad_signature")]
    finally:
        client.close()
    assert console.wait_states({"kalibaru": "idle"})["kalibaru"]["meeting"] is None


def test_removing_a_site_clears_its_retained_state(devices) -> None:
    console, processes = devices
    processes["muncar"].send_signal(signal.SIGTERM)
    processes["muncar"].wait()
    assert console.wait_states({"muncar": "offline"})["muncar"]["online"] is False
    removed = console.ok("sites", "remove", "muncar")
    assert "cleared muncar's retained state on the broker" in removed.out
    rows = {row["site"]: row for row in console.ok("status", "--json").json}
    assert "muncar" not in rows and rows["kalibaru"]["online"] is True
