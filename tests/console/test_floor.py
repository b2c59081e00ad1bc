"""The moderator's floor commands (`floor list|grant|revoke`, the FLOOR of `status` and `watch`,
`meeting start --floor`) against a real Mosquitto from the generated configuration and real device
cores: simulated sites (appliance_dev/simulate.py, real MQTT connections) and one real daemon."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from appliance.console.cli import main
from appliance.console.context import Context
from appliance.console.floor_desk import FloorDesk
from appliance.console.home import Home
from appliance.core.clock import parse_rfc3339
from appliance_dev.simulate import SimFleet, SimSite
from appliance_dev.waiting import wait_until
from tests.console.conftest import Console

SITES = ("kalibaru", "licin", "muncar", "pesanggaran", "genteng", "giri")
START = ("meeting", "start", "--title", "Musrenbang Kecamatan", "--program-url", "rtmp://127.0.0.1/live/program",
         "--ingest-url", "rtmp://127.0.0.1/live/{site}")
DEBOUNCE_S = 0.6  # the device takes a second press of the same button within 0.5 s as the same press


@pytest.fixture
def sims(fleet_broker: Console):
    sites = fleet_broker.sim_sites(SITES)
    with SimFleet(sites):
        yield {site.spec.id: site for site in sites}


@pytest.fixture
def fleet(fleet_broker: Console, sims: dict[str, SimSite]) -> Console:
    """The console with its broker, and the simulated sites connected."""
    return fleet_broker


def floors(fleet: Console) -> dict[str, dict | None]:
    return {row["site"]: row["floor"] for row in fleet.ok("status", "--json").json}


def wait_floor(fleet: Console, expected: dict[str, str | None], timeout: float = 5.0) -> dict[str, dict | None]:
    seen: dict[str, dict | None] = {}

    def matching() -> dict | None:
        seen.clear()
        seen.update(floors(fleet))
        return dict(seen) if all((seen.get(site) or {}).get("status") == status for site, status in expected.items()) else None

    return wait_until(matching, timeout, what=lambda: f"floors {expected}; seen { {s: seen.get(s) for s in expected} }",
                      interval=0.1)


def start_meeting(fleet: Console, sites: tuple[str, ...], floor: str | None = None, meeting_id: str = "rapat-a") -> dict:
    extra = ("--floor", floor) if floor else ()
    started = fleet.ok(*START, "--meeting-id", meeting_id, "--sites", ",".join(sites), "--auto-join", *extra,
                         "--json").json
    wait_floor(fleet, {site: "speaking" if floor == "open" else "listening" for site in sites})
    return started


def raise_hand(fleet: Console, site: SimSite) -> None:
    site.press()
    wait_floor(fleet, {site.spec.id: "requested"})


def test_list_shows_the_speaker_then_the_hands_in_order_with_their_wait(fleet: Console, sims: dict) -> None:
    started = start_meeting(fleet, SITES)
    assert started["command"]["body"]["floor"] == "moderated"  # the default, said explicitly
    fleet.ok("floor", "grant", "kalibaru")
    raise_hand(fleet, sims["licin"])
    time.sleep(1.2)
    raise_hand(fleet, sims["muncar"])

    document = fleet.ok("floor", "list", "--json").json
    [meeting] = document["meetings"]
    assert meeting["meeting_id"] == "rapat-a" and meeting["mode"] == "moderated"
    assert meeting["speaking"] == [{"site": "kalibaru", "name": "Kecamatan Kalibaru"}]
    assert [(hand["position"], hand["site"]) for hand in meeting["hands"]] == [(1, "licin"), (2, "muncar")]
    licin, muncar = meeting["hands"]
    assert licin["waited_s"] >= 1.0 and licin["waited_s"] > muncar["waited_s"] >= 0
    assert licin["requested_at"].endswith("Z")
    assert sorted(meeting["listening"]) == ["genteng", "giri", "pesanggaran"]
    assert meeting["counts"] == {"speaking": 1, "hands": 2, "listening": 3}

    text = fleet.ok("floor", "list").out
    assert "Musrenbang Kecamatan (rapat-a, moderated)" in text
    assert "speaking: kalibaru (Kecamatan Kalibaru)" in text
    hand_lines = [line for line in text.splitlines() if re.match(r"^[12] ", line)]
    assert [line.split()[1] for line in hand_lines] == ["licin", "muncar"]
    assert re.search(r"0:0[1-9]$", hand_lines[0]) and re.search(r"0:0\d$", hand_lines[1])
    assert "3 listening" in text

    other = fleet.ok("floor", "list", "--meeting-id", "rapat-b", "--json").json
    assert other["meetings"] == []


def test_grant_revokes_the_speaker_unless_keep_others(fleet: Console, sims: dict) -> None:
    start_meeting(fleet, SITES)
    first = fleet.ok("floor", "grant", "kalibaru", "--json").json
    assert first["plan"] == {"meeting_id": "rapat-a", "mode": "moderated", "grant": ["kalibaru"], "revoke": []}
    command = first["commands"][0]
    assert command["type"] == "floor.grant" and command["body"] == {"meeting_id": "rapat-a"}
    assert command["to"] == ["kalibaru"] and command["sig"]
    # The short default expiry: 30 s from issue.
    assert parse_rfc3339(command["expires_at"]) - parse_rfc3339(command["issued_at"]) == pytest.approx(30)

    raise_hand(fleet, sims["licin"])
    swap = fleet.ok("floor", "grant", "licin", "--json").json
    assert swap["plan"]["revoke"] == ["kalibaru"] and swap["plan"]["grant"] == ["licin"]
    assert [(row["site"], row["action"], row["result"], row["floor"]) for row in swap["results"]] == [
        ("kalibaru", "revoke", "ok", "listening"), ("licin", "grant", "ok", "speaking")]
    assert swap["summary"] == {"targeted": 2, "ok": 2, "refused": 0, "no_answer": 0}
    wait_floor(fleet, {"kalibaru": "listening", "licin": "speaking"})

    kept = fleet.ok("floor", "grant", "muncar", "--keep-others", "--json").json
    assert kept["plan"]["revoke"] == [] and [row["site"] for row in kept["results"]] == ["muncar"]
    wait_floor(fleet, {"licin": "speaking", "muncar": "speaking"})

    table = fleet.ok("floor", "grant", "pesanggaran").out  # both speakers go, in one go
    assert "meeting rapat-a: grant pesanggaran; revoke licin, muncar; valid 30 s" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:5]}
    assert rows["licin"][:4] == ["licin", "revoke", "ok", "listening"]
    assert rows["muncar"][:4] == ["muncar", "revoke", "ok", "listening"]
    assert rows["pesanggaran"][:4] == ["pesanggaran", "grant", "ok", "speaking"]
    assert "3 ok, 0 refused, 0 without answer of 3" in table
    wait_floor(fleet, {"licin": "listening", "muncar": "listening", "pesanggaran": "speaking"})

    db = sqlite3.connect(fleet.home / "console.db")
    stored = db.execute("SELECT type, target FROM commands WHERE type LIKE 'floor.%' ORDER BY rowid").fetchall()
    db.close()
    assert ("floor.revoke", "sites:licin,muncar") in stored and ("floor.grant", "sites:pesanggaran") in stored


def test_open_meeting_grant_revokes_nobody(fleet: Console, sims: dict) -> None:
    started = start_meeting(fleet, SITES[:3], floor="open")
    assert started["command"]["body"]["floor"] == "open"
    assert {site: floor["mode"] for site, floor in floors(fleet).items() if floor} == {
        "kalibaru": "open", "licin": "open", "muncar": "open"}

    fleet.ok("floor", "revoke", "licin")  # "mute participant"
    wait_floor(fleet, {"kalibaru": "speaking", "licin": "listening", "muncar": "speaking"})
    granted = fleet.ok("floor", "grant", "licin", "--json").json
    assert granted["plan"] == {"meeting_id": "rapat-a", "mode": "open", "grant": ["licin"], "revoke": []}
    assert [row["site"] for row in granted["results"]] == ["licin"]
    wait_floor(fleet, {"kalibaru": "speaking", "licin": "speaking", "muncar": "speaking"})

    out = fleet.ok("floor", "grant", "kalibaru").out
    assert "open meeting: nobody else is revoked" in out and "revoke" not in out.split("\n", 1)[1]
    listed = fleet.ok("floor", "list").out
    assert "(rapat-a, open)" in listed and "open meeting: every joined site speaks" in listed


def test_revoke_one_site_and_all(fleet: Console, sims: dict) -> None:
    start_meeting(fleet, SITES[:4])
    fleet.ok("floor", "grant", "kalibaru")
    raise_hand(fleet, sims["licin"])
    raise_hand(fleet, sims["muncar"])

    one = fleet.ok("floor", "revoke", "muncar", "--json").json
    assert one["plan"]["revoke"] == ["muncar"] and one["results"][0]["floor"] == "listening"
    wait_floor(fleet, {"kalibaru": "speaking", "licin": "requested", "muncar": "listening"})
    harmless = fleet.ok("floor", "revoke", "pesanggaran", "--json").json  # only listening: ok, nothing changes
    assert harmless["results"][0]["result"] == "ok"

    everyone = fleet.ok("floor", "revoke", "--all", "--json").json
    assert everyone["plan"]["revoke"] == ["kalibaru", "licin"]  # the speaker and the raised hand
    assert all(row["ok"] and row["floor"] == "listening" for row in everyone["results"])
    wait_floor(fleet, {site: "listening" for site in SITES[:4]})

    again = fleet.ok("floor", "revoke", "--all")
    assert "nobody speaks or has a hand up; nothing sent" in again.out
    neither = fleet.run("floor", "revoke")
    assert neither.code == 2 and "SITE, or --all" in neither.err


def test_bad_targets_exit_2_and_send_nothing(fleet: Console, sims: dict) -> None:
    start_meeting(fleet, ("kalibaru", "licin"))
    fleet.ok(*START, "--meeting-id", "rapat-b", "--sites", "giri")  # offered, not joined
    [gone] = fleet.sim_sites(("tegalsari",))
    with SimFleet([gone]):
        fleet.wait_online(["tegalsari"])
    fleet.wait_status_rows(lambda rows: rows["tegalsari"]["online"] is False, 5, lambda rows: "tegalsari offline")
    cases = [
        (("floor", "grant", "muncar"), "muncar is not in a meeting (state idle)"),
        (("floor", "grant", "giri"), "giri has not joined meeting 'rapat-b'"),
        (("floor", "grant", "atlantis"), "unknown site: atlantis"),
        (("floor", "grant", "glagah"), "glagah has never been seen on the broker"),
        (("floor", "grant", "tegalsari"), "tegalsari is offline"),
        (("floor", "grant", "kalibaru", "--meeting-id", "rapat-z"), "kalibaru is in meeting 'rapat-a', not 'rapat-z'"),
        (("floor", "revoke", "muncar"), "muncar is not in a meeting"),
        (("floor", "revoke", "--all", "--meeting-id", "rapat-z"), "no site is in meeting 'rapat-z'"),
        (("floor", "grant", "kalibaru", "--expires", "soon"), "not a duration"),
    ]
    for args, message in cases:
        result = fleet.run(*args)
        assert result.code == 2 and message in result.err, (args, result.err)

    fleet.ok("join", "--sites", "giri")  # now two meetings have joined sites
    wait_floor(fleet, {"giri": "listening"})
    several = fleet.run("floor", "revoke", "--all")
    assert several.code == 2 and "2 meetings are running (rapat-a, rapat-b): say which with --meeting-id" in several.err
    listed = fleet.ok("floor", "list", "--json").json
    assert [meeting["meeting_id"] for meeting in listed["meetings"]] == ["rapat-a", "rapat-b"]

    db = sqlite3.connect(fleet.home / "console.db")
    assert db.execute("SELECT COUNT(*) FROM commands WHERE type LIKE 'floor.%'").fetchone() == (0,)
    db.close()
    assert {site: (floor or {}).get("status") for site, floor in floors(fleet).items()
            if site in ("kalibaru", "licin")} == {"kalibaru": "listening", "licin": "listening"}


def test_a_refused_ack_exits_1(fleet: Console, sims: dict) -> None:
    start_meeting(fleet, ("kalibaru", "licin"))
    fleet.ok("floor", "grant", "kalibaru")
    raise_hand(fleet, sims["licin"])
    # The race: licin leaves (a hold at the panel) after the fleet read its state, just before
    # the grant arrives.
    licin = sims["licin"]

    def leave_first(client, userdata, message) -> None:  # noqa: ANN001
        if b'"floor.grant"' in message.payload:
            licin.perform(licin.core.local("leave").effects)
        licin._on_message(client, userdata, message)

    licin.client.on_message = leave_first
    result = fleet.run("floor", "grant", "licin")
    assert result.code == 1, result.err + result.out
    rows = {line.split()[0]: line for line in result.out.splitlines()[2:4]}
    assert "revoke" in rows["kalibaru"] and " ok " in rows["kalibaru"]
    assert "refused" in rows["licin"] and "invalid_state" in rows["licin"]
    assert "1 ok, 1 refused" in result.out and "not every site accepted" in result.err


def test_status_and_watch_show_the_floor(fleet: Console, sims: dict) -> None:
    start_meeting(fleet, ("kalibaru", "licin", "muncar"))
    fleet.ok("floor", "grant", "kalibaru")
    raise_hand(fleet, sims["licin"])

    rows = {row["site"]: row for row in fleet.ok("status", "--json").json}
    assert rows["kalibaru"]["floor"] == {"mode": "moderated", "status": "speaking", "requested_at": None}
    assert rows["licin"]["floor"]["status"] == "requested" and rows["licin"]["floor"]["requested_at"]
    assert rows["genteng"]["floor"] is None and rows["glagah"]["floor"] is None  # idle; never seen
    text = fleet.ok("status").out
    header = text.splitlines()[0]
    assert "FLOOR" in header
    line = {row.split()[0]: row for row in text.splitlines()[1:] if row}
    column = header.index("FLOOR")
    assert line["kalibaru"][column:].startswith("speaking")
    assert re.match(r"hand 0:0\d", line["licin"][column:])
    assert line["muncar"][column:].startswith("listening")
    assert not line["genteng"][column:column + 8].strip()
    assert re.search(r"^hands \(rapat-a\): 1\. licin 0:0\d$", text, re.M)

    watched = [json.loads(row) for row in fleet.ok("watch", "--duration", "0.5", "--json").out.splitlines()]
    by_site = {row["site"]: row for row in watched if "site" in row}
    assert by_site["kalibaru"]["floor"]["status"] == "speaking" and by_site["genteng"]["floor"] is None

    # The line mode, live: floor events in words, with the queue.
    out = io.StringIO()
    home = str(fleet.home)
    thread = threading.Thread(target=lambda: _capture(out, ["--home", home, "watch", "--duration", "6"]), daemon=True)
    thread.start()
    wait_until(lambda: "sites," in out.getvalue(), 5, what="watch's first table")
    sims["muncar"].press()
    wait_until(lambda: "muncar: raised a hand (2 waiting)" in out.getvalue(), 5, what=lambda: out.getvalue())
    ctx = Context(Home(fleet.home))
    try:
        with ctx.fleet() as fleet:
            desk = FloorDesk(fleet, ctx.signing_key())
            desk.load()
            assert desk.grant("licin").ok
    finally:
        ctx.close()
    wait_until(lambda: "licin: was given the floor (1 waiting)" in out.getvalue(), 5, what=lambda: out.getvalue())
    assert "kalibaru: floor taken back by the moderator" in out.getvalue()
    time.sleep(DEBOUNCE_S)
    sims["muncar"].press()
    wait_until(lambda: "muncar: lowered its hand (0 waiting)" in out.getvalue(), 5, what=lambda: out.getvalue())
    thread.join(10)


def _capture(out: io.StringIO, argv: list[str]) -> None:
    with contextlib.redirect_stdout(out):
        main(argv)


def test_meeting_start_floor_open_reaches_a_real_daemon(fleet_broker: Console, tmp_path: Path) -> None:
    fleet = fleet_broker
    daemon = fleet.start_daemon("wongsorejo", tmp_path)
    fleet.wait_online(["wongsorejo"])
    daemon.wait_ready()
    started = fleet.ok(*START, "--meeting-id", "rapat-open", "--sites", "wongsorejo", "--auto-join",
                         "--floor", "open", "--json").json
    assert started["command"]["body"]["floor"] == "open"
    floor = wait_floor(fleet, {"wongsorejo": "speaking"})["wongsorejo"]
    assert floor["mode"] == "open"

    assert daemon.control({"cmd": "press"})["ok"]  # in an open meeting a press mutes the site...
    wait_floor(fleet, {"wongsorejo": "listening"})
    time.sleep(DEBOUNCE_S)
    assert daemon.control({"cmd": "press"})["ok"]  # ...and the next asks to be heard again
    wait_floor(fleet, {"wongsorejo": "requested"})
    listed = fleet.ok("floor", "list", "--json").json["meetings"][0]
    assert [hand["site"] for hand in listed["hands"]] == ["wongsorejo"] and listed["mode"] == "open"

    granted = fleet.ok("floor", "grant", "wongsorejo", "--json").json
    assert granted["results"][0]["result"] == "ok" and granted["results"][0]["floor"] == "speaking"
