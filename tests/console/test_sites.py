"""Sites, init and CLI conventions, without a broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.console.conftest import ROOT, Console

KECAMATAN = ("Bangorejo Banyuwangi Blimbingsari Cluring Gambiran Genteng Giri Glagah Glenmore Kabat Kalibaru "
             "Kalipuro Licin Muncar Pesanggaran Purwoharjo Rogojampi Sempu Siliragung Singojuruh Songgon Srono "
             "Tegaldlimo Tegalsari Wongsorejo").split()


def test_the_25_kecamatan_are_there_from_the_start(console: Console) -> None:
    sites = console.ok("sites", "list", "--json").json
    assert [site["id"] for site in sites] == [name.lower() for name in KECAMATAN]
    assert {site["kind"] for site in sites} == {"kecamatan"}
    distances = {site["id"]: site["distance_km"] for site in sites}
    assert (distances["kalibaru"], distances["pesanggaran"], distances["wongsorejo"]) == (60, 62, 27.9)
    table = console.ok("sites", "list").out
    assert "Kecamatan Kalibaru" in table and "25 sites" in table


def test_add_and_remove_a_site(console: Console) -> None:
    console.ok("sites", "add", "tamansari", "--name", "Desa Tamansari", "--kind", "desa", "--distance-km", "14.5")
    desa = console.ok("sites", "list", "--kind", "desa", "--json").json
    assert desa == [{"id": "tamansari", "name": "Desa Tamansari", "kind": "desa", "distance_km": 14.5}]
    again = console.run("sites", "add", "tamansari", "--name", "X", "--kind", "desa")
    assert again.code == 2 and "already exists" in again.err
    console.ok("sites", "remove", "tamansari")
    assert console.ok("sites", "list", "--kind", "desa", "--json").json == []
    unknown = console.run("sites", "remove", "tamansari")
    assert unknown.code == 2 and "unknown site: tamansari" in unknown.err


@pytest.mark.parametrize("args, message", [
    (("sites", "add", "Kalibaru-2", "--name", "X", "--kind", "desa"), "must match"),
    (("sites", "add", "x", "--name", "X", "--kind", "desa", "--distance-km", "far"), "not a number"),
    (("sites", "add", "x", "--name", " ", "--kind", "desa"), "name is empty"),
])
def test_bad_site_is_refused_and_nothing_changes(console: Console, args: tuple, message: str) -> None:
    before = console.ok("sites", "list", "--json").json
    result = console.run(*args)
    assert result.code == 2 and message in result.err
    assert console.ok("sites", "list", "--json").json == before


def test_import_adds_and_updates_with_semicolons_and_bom(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "desa.csv"
    sheet.write_bytes("\ufeffid;name;kind;distance_km;notes\n"
                      "tamansari;Desa Tamansari;desa;14.5;ijen\n"
                      "\n"
                      "kalibaru;Kecamatan Kalibaru;kecamatan;60.5;\n".encode("utf-8"))
    result = console.ok("sites", "import", str(sheet), "--json").json
    assert result["added"] == ["tamansari"] and result["updated"] == ["kalibaru"]
    sites = {site["id"]: site for site in console.ok("sites", "list", "--json").json}
    assert sites["tamansari"]["kind"] == "desa" and sites["kalibaru"]["distance_km"] == 60.5
    assert console.ok("sites", "import", str(sheet), "--json").json["unchanged"] == ["tamansari", "kalibaru"]


def test_bad_csv_names_every_bad_line_and_imports_nothing(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "bad.csv"
    sheet.write_text("id,name,kind,distance_km\n"
                     "tamansari,Desa Tamansari,desa,14\n"      # fine, but must not be imported
                     "Olehsari,Desa Olehsari,desa,\n"           # line 3: upper case id
                     "kemiren,,desa,\n"                         # line 4: no name
                     "kemiren,Desa Kemiren,dusun,\n"            # line 5: kind, and duplicate of line 4
                     "\"licin\nbaru\",x,desa\n"                 # lines 6-7: quoted newline, 3 fields
                     "glagah2,Desa Glagah,desa,-3\n")           # line 8: distance
    before = console.ok("sites", "list", "--json").json
    result = console.run("sites", "import", str(sheet))
    assert result.code == 2, result.err
    assert "nothing imported" in result.err
    for line, what in ((3, "'Olehsari'"), (4, "name is empty"), (5, "kind 'dusun'"), (5, "already appears on line 4"),
                       (6, "expected 4 fields"), (8, "distance_km")):
        problems = result.err.splitlines()
        assert any(text.strip().startswith(f"line {line}:") and what in text for text in problems), (line, what, result.err)
    assert "line 2:" not in result.err
    assert console.ok("sites", "list", "--json").json == before


@pytest.mark.parametrize("content, message", [
    ("name,kind\nx,desa\n", "missing column id"),
    ("", "empty"),
    ("id,name,kind\n", "no sites"),
])
def test_bad_csv_header_or_empty(console: Console, tmp_path: Path, content: str, message: str) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text(content)
    result = console.run("sites", "import", str(sheet))
    assert result.code == 2 and message in result.err


def test_missing_csv_file(console: Console, tmp_path: Path) -> None:
    result = console.run("sites", "import", str(tmp_path / "nope.csv"))
    assert result.code == 2 and "no such file" in result.err


@pytest.mark.parametrize("url", ["mqtt://broker:1883", "http://broker", "mqtts://", "mqtts://broker:99999",
                                 "broker.example", "mqtts://bro ker:8883"])
def test_init_refuses_a_bad_url_and_creates_nothing(console: Console, url: str) -> None:
    result = console.run("init", "--broker-url", url)
    assert result.code == 2 and "--broker-url" in result.err
    assert not (console.home / "console-key.pem").exists()
    assert not (console.home / "ca").exists()
    assert console.run("provision", "kalibaru", "--out", str(console.home / "p")).code == 1


def test_init_creates_keys_once(console: Console) -> None:
    first = console.ok("init", "--broker-url", "mqtts://broker.example.go.id", "--json").json
    assert first["broker_url"] == "mqtts://broker.example.go.id:8883"
    key = console.home / "console-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (console.home / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (console.home / "console.db").stat().st_mode & 0o777 == 0o600
    pem = key.read_bytes()
    again = console.run("init", "--broker-url", "mqtts://other.example:8883")
    assert again.code == 1 and "already initialised" in again.err
    assert key.read_bytes() == pem


def test_commands_before_init_say_how_to_start(console: Console, tmp_path: Path) -> None:
    for args in (("broker-config", "--out", str(tmp_path / "b")), ("status",),
                 ("ping", "--group", "all")):
        result = console.run(*args)
        assert result.code == 1 and "init --broker-url" in result.err, args


def test_every_command_has_help_and_the_entry_point_runs() -> None:
    commands = [[], ["init"], ["sites"], ["sites", "list"], ["sites", "import"], ["sites", "add"], ["sites", "remove"],
                ["sites", "rotate-password"], ["broker-config"], ["provision"], ["meeting"], ["meeting", "start"],
                ["meeting", "end"], ["meeting", "join"], ["join"], ["leave"], ["ping"], ["selftest"], ["status"], ["watch"]]
    script = ("import sys, contextlib, io\nfrom appliance.console.cli import main\n"
              f"for args in {commands!r}:\n"
              "    out = io.StringIO()\n"
              "    with contextlib.redirect_stdout(out):\n"
              "        try: main(args + ['--help'])\n"
              "        except SystemExit as e: assert e.code == 0, (args, e.code)\n"
              "    assert 'usage: appliance-console' in out.getvalue(), args\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    usage = subprocess.run([sys.executable, "-m", "appliance.console", "sites", "frobnicate"], cwd=ROOT,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_home_from_environment(tmp_path: Path) -> None:
    home = tmp_path / "envhome"
    done = subprocess.run([sys.executable, "-m", "appliance.console", "sites", "list", "--json"], cwd=ROOT,
                          capture_output=True, text=True, env={"APPLIANCE_CONSOLE_HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (home / "console.db").exists()


# Issue 15: a name is printed on terminals (`sites list`, `status`) and written into reports.
ESCAPE = "Desa \x1b[2J\x1b]0;owned\x07Tamansari"


@pytest.mark.parametrize("name, codes", [
    (ESCAPE, "U+001B at position 6, U+001B at position 10, U+0007 at position 19"),
    ("Desa\rTamansari", "U+000D at position 5"),
    ("Desa \u202eirasnamaT", "U+202E at position 6"),  # a right-to-left override reorders what follows
])
def test_sites_add_refuses_control_characters_in_a_name(console: Console, name: str, codes: str) -> None:
    before = console.ok("sites", "list", "--json").json
    result = console.run("sites", "add", "tamansari", "--name", name, "--kind", "desa")
    assert result.code == 2, result
    assert "site 'tamansari' not added" in result.err and f"name contains control characters ({codes})" in result.err
    assert "\x1b" not in result.err + result.out
    assert console.ok("sites", "list", "--json").json == before


def test_import_refuses_control_characters_naming_the_line(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "desa.csv"
    sheet.write_text('id,name,kind\ntamansari,Desa Tamansari,desa\nkandangan,"Desa\x1b[31m Kandangan",desa\n'
                     "sumberagung,Desa Sumber\x08agung,desa\n", encoding="utf-8")
    result = console.run("sites", "import", str(sheet))
    assert result.code == 2 and "2 problems; nothing imported" in result.err
    assert "line 3: name contains control characters (U+001B at position 5)" in result.err
    assert "line 4: name contains control characters (U+0008 at position 12)" in result.err
    assert "\x1b" not in result.err and "\x08" not in result.err
    assert console.ok("sites", "list", "--kind", "desa", "--json").json == []


def test_sites_list_shows_control_characters_without_acting_on_them(console: Console) -> None:
    """A name stored before names were checked (or by another tool) is shown escaped, not sent to the terminal."""
    from appliance.console.store import Site, Store  # noqa: PLC0415

    console.ok("sites", "list")
    store = Store(console.home / "console.db")
    try:
        store.upsert_sites([Site("tamansari", ESCAPE, "desa", None)])  # the store itself does not check
    finally:
        store.close()
    listing = console.ok("sites", "list", "--kind", "desa").out
    assert "\x1b" not in listing and "\x07" not in listing
    assert "Desa \\x1b[2J\\x1b]0;owned\\x07Tamansari" in listing
    assert console.ok("sites", "list", "--kind", "desa", "--json").json[0]["name"] == ESCAPE  # JSON escapes it itself


def test_the_console_gets_a_listener_of_its_own(console: Console, tmp_path: Path) -> None:
    for port, message in (("8883", "is the sites' port"), ("70000", "must be between 1 and 65535")):
        result = console.run("init", "--broker-url", "mqtts://broker.example:8883", "--console-port", port)
        assert result.code == 2 and f"--console-port {port} {message}" in result.err
        assert not (console.home / "console-key.pem").exists()
    init = console.ok("init", "--broker-url", "mqtts://broker.example:8883", "--json").json
    assert (init["broker_url"], init["console_url"]) == ("mqtts://broker.example:8883", "mqtts://broker.example:8884")
    same = console.run("broker-config", "--out", str(tmp_path / "b"), "--port", "8884")
    assert same.code == 2 and "--console-port 8884 is the sites' port" in same.err
    written = console.ok("broker-config", "--out", str(tmp_path / "b"), "--console-port", "9884", "--json").json
    assert (written["port"], written["console_port"]) == (8883, 9884)
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    sites, console_listener = conf.split("\nlistener 8883\n")[1].split("\nlistener 9884\n")
    assert "use_username_as_clientid true" in sites and f"password_file {tmp_path / 'b'}/passwd\n" in sites
    assert "use_username_as_clientid" not in console_listener
    assert f"password_file {tmp_path / 'b'}/console-passwd\n" in console_listener


def test_a_home_from_before_the_console_listener_gets_it_on_the_next_port(console: Console, tmp_path: Path) -> None:
    from appliance.console.store import Store  # noqa: PLC0415

    console.ok("init", "--broker-url", "mqtts://broker.example:8883")
    console.ok("broker-config", "--out", str(tmp_path / "b"))
    store = Store(console.home / "console.db")  # as an older console left it: no console URL or port
    try:
        with store.transaction():
            store.db.execute("DELETE FROM meta WHERE key = 'console_url'")
            saved = store.get_meta("broker_config")
            del saved["console_port"]
            store.set_meta("broker_config", saved)
    finally:
        store.close()
    console.ok("sites", "add", "tamansari", "--name", "Desa Tamansari", "--kind", "desa")  # rewrites the config
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "\nlistener 8883\n" in conf and "\nlistener 8884\n" in conf
    assert "appliance-tamansari:" in (tmp_path / "b" / "passwd").read_text()


def test_import_with_lat_lon_stores_the_map_positions(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "map.csv"
    sheet.write_text("id,name,kind,lat,lon\n"
                     "kalibaru,Kecamatan Kalibaru,kecamatan,-8.2936,113.9800\n"
                     "tamansari,Desa Tamansari,desa,-8.1125,114.2300\n"
                     "kemiren,Desa Kemiren,desa,,\n")  # both empty: no position, not an error
    result = console.ok("sites", "import", str(sheet), "--json").json
    assert result["added"] == ["tamansari", "kemiren"] and result["updated"] == ["kalibaru"]
    sites = {site["id"]: site for site in console.ok("sites", "list", "--json").json}
    assert (sites["kalibaru"]["lat"], sites["kalibaru"]["lon"]) == (-8.2936, 113.98)
    assert (sites["tamansari"]["lat"], sites["tamansari"]["lon"]) == (-8.1125, 114.23)
    assert "lat" not in sites["kemiren"] and "lat" not in sites["licin"]
    # A sheet without the columns leaves the positions alone; one with them and empty cells clears them.
    plain = tmp_path / "plain.csv"
    plain.write_text("id,name,kind\nkalibaru,Kecamatan Kalibaru,kecamatan\n")
    assert console.ok("sites", "import", str(plain), "--json").json["unchanged"] == ["kalibaru"]
    assert console.ok("sites", "list", "--json").json[10]["lat"] == -8.2936  # kalibaru, 11th of the 25
    cleared = tmp_path / "cleared.csv"
    cleared.write_text("id,name,kind,lat,lon\nkalibaru,Kecamatan Kalibaru,kecamatan,,\n")
    assert console.ok("sites", "import", str(cleared), "--json").json["updated"] == ["kalibaru"]
    assert "lat" not in console.ok("sites", "list", "--json").json[10]


def test_bad_lat_lon_names_the_line_and_column_and_imports_nothing(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "map.csv"
    sheet.write_text("id,name,kind,lat,lon\n"
                     "tamansari,Desa Tamansari,desa,-8.11,114.23\n"  # fine, but must not be imported
                     "kemiren,Desa Kemiren,desa,-8,2,114.3\n"         # line 3: decimal comma splits the cell
                     "olehsari,Desa Olehsari,desa,utara,114.3\n"      # line 4: not a number
                     "glagah,Desa Glagah,desa,-91,114.3\n"            # line 5: lat out of range
                     "licin2,Desa Licin,desa,-8.1,181\n"              # line 6: lon out of range
                     "bakungan,Desa Bakungan,desa,-8.1,\n"            # line 7: lat without lon
                     "boyolangu,Desa Boyolangu,desa,nan,114.3\n")     # line 8: NaN is no place
    before = console.ok("sites", "list", "--json").json
    result = console.run("sites", "import", str(sheet))
    assert result.code == 2, result.err
    assert "nothing imported" in result.err
    for line, what in ((3, "expected 5 fields"), (4, "lat 'utara' is not a number"), (5, "lat '-91' must be between -90 and 90"),
                       (6, "lon '181' must be between -180 and 180"), (7, "lon is empty but lat is not"),
                       (8, "lat 'nan' must be between")):
        problems = result.err.splitlines()
        assert any(text.strip().startswith(f"line {line}:") and what in text for text in problems), (line, what, result.err)
    assert "line 2:" not in result.err
    assert console.ok("sites", "list", "--json").json == before


def test_lat_without_lon_in_the_header_is_refused(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "map.csv"
    sheet.write_text("id,name,kind,lat\ntamansari,Desa Tamansari,desa,-8.11\n")
    result = console.run("sites", "import", str(sheet))
    assert result.code == 2 and "line 1: column lat without lon" in result.err
