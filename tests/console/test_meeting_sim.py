"""Meeting control against many light simulated sites (real MQTT connections, the real device core)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.console.context import Context
from appliance.console.home import Home
from appliance_dev.simulate import SimFleet, SimSite, SiteSpec
from tests.console.conftest import Console

START = ("meeting", "start", "--title", "Musrenbang Kecamatan", "--program-url", "rtmp://127.0.0.1/live/program",
         "--ingest-url", "rtmp://127.0.0.1/live/{site}")


@pytest.fixture
def fleet(fleet_broker: Console, tmp_path: Path):
    console = fleet_broker
    sheet = tmp_path / "desa.csv"
    sheet.write_text("id,name,kind\n" + "".join(f"desa-{n:02d},Desa {n},desa\n" for n in range(20)))
    console.ok("sites", "import", str(sheet))
    console.broker.reload()  # reread the passwd and acl the import rewrote
    ctx = Context(Home(console.home))
    credentials = ctx.store.credentials()
    public_key = ctx.store.get_meta("console_public_key")
    sites = [SimSite(SiteSpec(site.id, site.kind, credentials[site.id][0]), "localhost", console.port,
                     str(ctx.home.ca_cert), public_key, ("127.0.0.1",)) for site in ctx.store.sites()]
    ctx.close()
    with SimFleet(sites):
        yield console


def states(console: Console) -> dict[str, str]:
    return {row["site"]: row["state"] for row in console.ok("status", "--json").json}


def test_group_meeting_reaches_exactly_the_group(fleet: Console) -> None:
    result = fleet.ok(*START, "--group", "kecamatan", "--timeout", "10", "--json").json
    assert result["summary"] == {"targeted": 25, "ok": 25, "refused": 0, "no_answer": 0}
    assert result["command"]["to"] == ["*"] and result["command"]["sig"]
    assert {row["state"] for row in result["results"]} == {"meeting_available"}
    fleet.wait_states({"kalibaru": "meeting_available", **{f"desa-{n:02d}": "idle" for n in range(20)}})

    joined = fleet.ok("join", "--sites", "kalibaru,muncar", "--json").json
    assert [row["state"] for row in joined["results"]] == ["in_meeting", "in_meeting"]
    table = fleet.ok("status").out
    assert "2 in a meeting" in table and "musrenbang-kecamatan-" in table

    ended = fleet.ok("meeting", "end", "--json").json  # the last meeting, on the same sites
    assert ended["target"] == "group:kecamatan" and ended["summary"]["ok"] == 25
    fleet.wait_states({site: "idle" for site in states(fleet)})


def test_refusals_are_shown_and_exit_1(fleet: Console) -> None:
    fleet.ok(*START, "--meeting-id", "rapat-a", "--sites", "kalibaru")
    fleet.ok("join", "--sites", "kalibaru")
    other = fleet.run(*START, "--meeting-id", "rapat-b", "--sites", "kalibaru,licin")
    assert other.code == 1
    lines = {line.split()[0]: line for line in other.out.splitlines()[2:4]}
    assert "refused" in lines["kalibaru"] and "invalid_state" in lines["kalibaru"]
    assert " ok " in lines["licin"]
    assert "1 ok, 1 refused" in other.out


def test_bad_input_sends_nothing(fleet: Console) -> None:
    cases = [
        (("--program-url", "ftp://127.0.0.1/x"), "scheme"),
        (("--program-url", "rtmp:///nohost"), "names no host"),
        (("--program-url", "rtmp://media.elsewhere.example/x"), "not one of the media hosts"),
        (("--expires", "soon"), "not a duration"),
        (("--expires", "3d"), "at most 24 h"),
        (("--sites", "kalibaru,atlantis"), "unknown site: atlantis"),
        (("--group", "all", "--sites", "kalibaru"), "either --sites or --group"),
        ((), "say which sites"),
    ]
    for extra, message in cases:
        args = list(START) + list(extra)
        if "--sites" not in extra and "--group" not in extra and extra:
            args += ["--group", "all"]
        result = fleet.run(*args)
        assert result.code == 2 and message in result.err, (extra, result.err)
    assert set(states(fleet).values()) == {"idle"}
    end = fleet.run("meeting", "end")
    assert end.code == 2 and "no meeting was started" in end.err


def test_watch_prints_changes(fleet: Console) -> None:
    result = fleet.ok("watch", "--duration", "0.5", "--json")
    lines = result.out.splitlines()
    assert len(lines) == 45 and '"state": "idle"' in lines[0]
