"""The generated Mosquitto configuration, run by a real Mosquitto: TLS, passwords, ACL."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from appliance.config import load
from appliance.console.passwords import check_password
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, group_command_topic, site_topic
from appliance_dev.recorder import MqttRecorder
from appliance_dev.waiting import wait_until
from tests.console.conftest import Console

NOT_AUTHORIZED = 135
NAMED_EVIL = "as appliance-evil (p5, c1, k30, u'appliance-evil')"  # mosquitto's log line for that login
PREFIX = DEFAULT_TOPIC_PREFIX


def provision(console: Console, site: str, tmp_path: Path) -> Path:
    out = tmp_path / f"prov-{site}"
    console.ok("provision", site, "--out", str(out))
    return out


def test_generated_config_serves_tls_to_the_console_and_a_provisioned_site(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    assert len(console.ok("status", "--json").json) == 25
    site = console.site_client(provision(console, "kalibaru", tmp_path))
    try:
        assert site.connack.value == 0
        state = {"v": 1, "site": "kalibaru", "online": True, "state": "idle"}
        assert site.publish(site_topic(PREFIX, "kalibaru", "state"), json.dumps(state), retain=True) < 128
    finally:
        site.close()
    row = next(row for row in console.ok("status", "--json").json if row["site"] == "kalibaru")
    assert row["online"] is True and row["state"] == "idle" and row["last_seen"]


def test_status_shows_what_a_site_sends_without_acting_on_control_characters(fleet_broker: Console, tmp_path: Path) -> None:
    """A site's state is the site's to write: escape sequences in it are shown escaped, not run by the terminal."""
    console = fleet_broker
    site = console.site_client(provision(console, "kalibaru", tmp_path))
    try:
        state = {"v": 1, "site": "kalibaru", "online": True, "state": "in_meeting\x1b[2J",
                 "meeting": {"meeting_id": "m\x1b]0;owned\x07", "title": "T"}}
        assert site.publish(site_topic(PREFIX, "kalibaru", "state"), json.dumps(state), retain=True) < 128
    finally:
        site.close()
    out = console.ok("status").out
    assert "\x1b" not in out and "\x07" not in out
    assert "in_meeting\\x1b[2J" in out and "m\\x1b]0;owned\\x07" in out


def test_wrong_or_missing_credentials_are_refused(fleet_broker: Console, tmp_path: Path) -> None:
    prov = provision(fleet_broker, "kalibaru", tmp_path)
    wrong = fleet_broker.site_client(prov, password="not-the-password", refused_ok=True)
    anonymous = fleet_broker.client(ca_file=prov / "ca.pem", refused_ok=True)
    try:
        assert wrong.connack.is_failure and anonymous.connack.is_failure
    finally:
        wrong.close()
        anonymous.close()


def test_a_site_cannot_touch_other_sites_or_commands(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    a = console.site_client(provision(console, "kalibaru", tmp_path))
    b = console.site_client(provision(console, "muncar", tmp_path))
    try:
        # Publishing to B's topics, to any cmd topic, or outside the tree: refused with a v5 reason code.
        for topic in (site_topic(PREFIX, "muncar", "state"), site_topic(PREFIX, "muncar", "ack"),
                      site_topic(PREFIX, "muncar", "cmd"), site_topic(PREFIX, "kalibaru", "cmd"),
                      group_command_topic(PREFIX, "all"), group_command_topic(PREFIX, "kecamatan"), f"{PREFIX}/elsewhere"):
            assert a.publish(topic, b"{}") == NOT_AUTHORIZED, topic
        for kind in ("state", "ack", "event", "telemetry", "uptime", "selftest"):
            assert a.publish(site_topic(PREFIX, "kalibaru", kind), b"{}") < 128, kind  # 0 or 16 "no subscribers"

        # Subscribing to B's topics is granted by mosquitto but delivers nothing...
        a.subscribe(site_topic(PREFIX, "muncar", "#"))
        a.subscribe(group_command_topic(PREFIX, "kecamatan"))
        assert b.publish(site_topic(PREFIX, "muncar", "state"), b'{"v":1}', retain=True) < 128
        assert b.publish(site_topic(PREFIX, "muncar", "ack"), b'{"v":1}') < 128
        console.run("ping", "--sites", "muncar", "--timeout", "0.3")
        # ...while the same subscription to its own group's commands does deliver (so the silence above means something).
        console.run("ping", "--group", "kecamatan", "--timeout", "0.3")
        # The broker keeps the order: anything of B's would have come before this.
        a.wait_for(lambda topic, _: topic == group_command_topic(PREFIX, "kecamatan"))
        assert [message.topic for message in a.messages] == [group_command_topic(PREFIX, "kecamatan")]
    finally:
        a.close()
        b.close()


def _count_disconnects(client: MqttRecorder) -> list:
    reasons: list = []
    recorder_hook = client.client.on_disconnect
    client.client.on_disconnect = lambda *args: (reasons.append(args[3]), recorder_hook(*args))
    return reasons


def test_a_stolen_site_password_cannot_knock_another_site_or_the_console_off(fleet_broker: Console,
                                                                            tmp_path: Path) -> None:
    """Issue 15: logged in as site `evil` with client id `appliance-kalibaru`, the broker used to close
    Kalibaru's connection ("already connected, closing old connection"). Now the sites' listener forces the
    client id to the login (appliance-<site>), and the console logs in on a listener of its own."""
    console = fleet_broker
    console.ok("sites", "add", "evil", "--name", "Desa Evil", "--kind", "desa")
    console.broker.reload()
    console.start_daemon("kalibaru", tmp_path)  # the real device, logging in as its provisioning file says
    console.wait_online(["kalibaru"])
    states = console.console_client(site_topic(PREFIX, "kalibaru", "state"))  # would see the last will
    collector = console.console_client(client_id="console-collect-main")      # the id `collect` uses
    collector_drops = _count_disconnects(collector)
    evil_card = provision(console, "evil", tmp_path)
    evil_password = tomllib.loads((evil_card / "appliance-site.toml").read_text())["broker"]["password"]
    try:
        for stolen_id in ("appliance-kalibaru", "console-collect-main"):
            before = console.broker.log().count(NAMED_EVIL)
            evil = console.site_client(evil_card, client_id=stolen_id, refused_ok=True)
            try:
                # Logged in, but under its own name: the broker replaced the client id it asked for.
                assert evil.connack.value == 0
                wait_until(lambda count=before: console.broker.log().count(NAMED_EVIL) > count, 2.0,
                           what=lambda: f"the broker to name the connection appliance-evil:\n{console.broker.log()}")
                offline = {"v": 1, "site": "kalibaru", "online": False, "state": "offline"}
                assert evil.publish(site_topic(PREFIX, "kalibaru", "state"), json.dumps(offline), retain=True) == NOT_AUTHORIZED
            finally:
                evil.close()
            # Where the console logs in, a site's password is refused outright, whatever the client id.
            elsewhere = console.client(username="appliance-evil", password=evil_password, ca_file=evil_card / "ca.pem",
                                       client_id=stolen_id, refused_ok=True, port=console.console_port)
            elsewhere.close()
            assert elsewhere.connack.is_failure
        # And the console's login does not work on the sites' listener (it could pick any client id there).
        console_on_sites = console.client(username="_console", password=console.console_password(),
                                          client_id="appliance-kalibaru", refused_ok=True)
        console_on_sites.close()
        assert console_on_sites.connack.is_failure

        # Kalibaru never went away: it answers, its state never showed the last will, nothing was taken over.
        ping = console.ok("ping", "--sites", "kalibaru", "--timeout", "5", "--json").json
        assert ping["summary"]["ok"] == 1
        assert states.messages and all(message.payload["online"] for message in states.messages), states.messages
        log = console.broker.log()
        for taken in ("appliance-kalibaru", "console-collect-main"):
            assert f"Client {taken} already connected, closing old connection" not in log, log
        assert not collector_drops
    finally:
        states.close()
        collector.close()


def test_desa_and_kecamatan_read_only_their_own_group(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    console.ok("sites", "add", "tamansari", "--name", "Desa Tamansari", "--kind", "desa")
    console.broker.reload()  # the config was regenerated by `sites add`
    desa = console.site_client(provision(console, "tamansari", tmp_path))
    try:
        assert desa.connack.value == 0
        assert desa.subscribe(group_command_topic(PREFIX, "kecamatan")) in (0, 1)
        assert desa.subscribe(group_command_topic(PREFIX, "desa")) in (0, 1)
        console.run("ping", "--group", "kecamatan", "--timeout", "0.3")
        console.run("ping", "--group", "desa", "--timeout", "0.3")
        desa.wait_for(lambda topic, _: topic == group_command_topic(PREFIX, "desa"))  # sent after kecamatan's
        assert [message.topic for message in desa.messages] == [group_command_topic(PREFIX, "desa")]
    finally:
        desa.close()


def test_rotate_password_updates_the_broker_config(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    old = provision(console, "kalibaru", tmp_path)
    thief = console.site_client(old, refused_ok=True)  # connected with the password of a stolen card
    thief_drops = _count_disconnects(thief)
    passwd = console.home / "broker" / "passwd"
    before = passwd.read_text()
    result = console.ok("sites", "rotate-password", "kalibaru")
    assert "updated" in result.out
    assert passwd.read_text() != before
    console.broker.reload()
    # The reload also closes a connection made with the old password: revoking takes effect at once.
    wait_until(lambda: thief_drops, 5.0, what="the broker to drop the connection made with the old password")
    thief.close()
    stale = console.site_client(old, refused_ok=True)
    fresh = console.site_client(provision(console, "kalibaru", tmp_path / "new"))
    try:
        assert stale.connack.is_failure
        assert fresh.connack.value == 0
    finally:
        stale.close()
        fresh.close()
    line = next(line for line in passwd.read_text().splitlines() if line.startswith("appliance-kalibaru:"))
    password = load([str(tmp_path / "new" / "prov-kalibaru" / "appliance-site.toml")])["broker"]["password"]
    assert check_password(password, line.split(":", 1)[1])


def test_unreachable_broker_is_reported_and_nothing_is_recorded(fleet_broker: Console) -> None:
    console = fleet_broker
    console.broker.stop()
    status = console.run("status")
    assert status.code == 1 and "cannot reach the broker at mqtts://localhost:" in status.err
    start = console.run("meeting", "start", "--title", "T", "--program-url", "rtmp://127.0.0.1/live/p",
                        "--ingest-url", "rtmp://127.0.0.1/live/{site}", "--group", "all")
    assert start.code == 1 and "cannot reach the broker" in start.err
    end = console.run("meeting", "end")
    assert end.code == 2 and "no meeting was started" in end.err
