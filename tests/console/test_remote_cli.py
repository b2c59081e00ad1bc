"""`appliance-console logs|screenshot|reboot SITE` against a real site: the daemon run as systemd runs it,
logged in with the provisioning file this console wrote, through the console's own broker (TLS, ACLs)."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from appliance_dev.waiting import wait_until
from tests.console.conftest import Console

HEADLESS = 'backend = "vlc"\noutput = "headless"\nwidth = 640\nheight = 360'


def test_a_screenshot_comes_back_through_the_broker_as_a_jpeg(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    daemon = console.start_daemon("kalibaru", tmp_path, display=HEADLESS)
    console.wait_online(["kalibaru"], timeout=20)
    wait_until(lambda: daemon.status()["health"]["display"] == "ok", 20, what="the site's screen")
    out = tmp_path / "kalibaru.jpg"
    result = console.ok("screenshot", "kalibaru", "--out", str(out), "--json")
    assert result.json["bytes"] == out.stat().st_size > 1000
    with Image.open(out) as picture:
        assert picture.format == "JPEG" and picture.size == (640, 360)


def test_a_reboot_is_refused_in_a_meeting_and_asked_for_with_force(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    daemon = console.start_daemon("kalibaru", tmp_path)
    console.wait_online(["kalibaru"], timeout=20)
    console.ok("meeting", "start", "--title", "Rapat", "--sites", "kalibaru", "--program-url", "srt://127.0.0.1:9/p",
               "--ingest-url", "rtmp://127.0.0.1:9/live/{site}", "--auto-join")
    daemon.wait_status(lambda status: status["state"] in ("joining", "in_meeting"), 10)
    refused = console.run("reboot", "kalibaru")
    assert refused.code == 1 and "in a meeting" in refused.err and "force" in refused.err, refused.err
    request = Path(daemon.socket).parent / "reboot-request"
    time.sleep(2.5)
    assert not request.exists()
    console.ok("reboot", "kalibaru", "--force")
    wait_until(request.exists, 5, what="the reboot request for the root unit")
    assert request.read_text() == "normal\n"


def test_logs_travel_the_whole_way_even_when_the_journal_is_empty(fleet_broker: Console, tmp_path: Path) -> None:
    """This machine has no systemd journal (PID 1 is not systemd): the site's journalctl finds no entries, the
    answer still comes back through the broker and the ACLs, and the console says so. Lines and their chunking:
    tests/test_remote_ops.py."""
    console = fleet_broker
    console.start_daemon("kalibaru", tmp_path)
    console.wait_online(["kalibaru"], timeout=20)
    result = console.run("logs", "kalibaru", "--since", "1h", "--lines", "50")
    assert result.code == 0 and "kalibaru: no journal lines since" in result.err, result.err
    as_json = console.ok("logs", "kalibaru", "--json").json
    assert as_json["site"] == "kalibaru" and as_json["lines"] == []
    bad = console.run("logs", "kalibaru", "--lines", "0")
    assert bad.code == 2 and "--lines" in bad.err


def test_the_centre_checks_a_site_file_a_technician_sends_in(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    console.ok("provision", "kalibaru", "--out", str(tmp_path / "card"))
    good = tmp_path / "card" / "appliance-site.toml"
    assert "perangkat akan menerimanya" in console.ok("provision", "--check", str(good)).out
    assert "a device would accept it" in console.ok("provision", "--check", str(good), "--lang", "en").out
    edited = tmp_path / "edited" / "appliance-site.toml"
    edited.parent.mkdir()
    text = good.read_text().replace('kind = "kecamatan"', 'kind = "kota"').replace('[broker]', '[broker]\nport = 1')
    edited.write_text(text.replace("mqtts://localhost", "mqtts://elsewhere"))
    result = console.run("provision", "--check", str(edited), "--json")
    problems = result.json["problems"]
    assert result.code == 1 and result.json["ok"] is False
    assert any("site.kind" in problem and "kota" in problem for problem in problems), problems
    assert any("broker.port" in problem for problem in problems), problems
    assert "config.choice" in result.json["codes"] and "console.other_broker" in result.json["codes"]
    said = console.run("provision", "--check", str(edited))  # Bahasa Indonesia first, one line per problem
    assert said.code == 1 and f"{edited}: site.kind: harus salah satu dari kecamatan, desa, other, bukan 'kota'" in said.err
    english = console.run("provision", "--check", str(edited), "--lang", "en")
    assert f"{edited}: broker.url: 'mqtts://elsewhere:" in english.err and "is not this fleet's broker" in english.err
    assert len(english.err.splitlines()) == len(said.err.splitlines()) == len(problems)
    assert console.run("provision", "--check", str(tmp_path / "missing.toml")).code == 2
