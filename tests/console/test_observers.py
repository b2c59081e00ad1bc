"""`observers add|remove|list`: a read-only broker login (Home Assistant, Node-RED, Grafana), against the
real broker the console's configuration describes."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.console.store import site_username
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, group_command_topic, site_topic
from appliance_dev.waiting import wait_until
from tests.console.conftest import Console

PREFIX = DEFAULT_TOPIC_PREFIX
NOT_AUTHORIZED = 135  # MQTT v5 PUBACK reason codes
ACCEPTED = (0, 16)  # 16: accepted, nobody subscribed yet


def state(site: str, online: bool = True, current: str = "idle") -> dict:
    return {"v": 1, "site": site, "online": online, "state": current, "at": "2026-11-27T02:00:00Z"}


def telemetry(site: str) -> dict:
    return {"v": 1, "site": site, "at": "2026-11-27T02:00:30Z", "uptime_s": 30, "mqtt_reconnects": 2,
            "cpu_temp_c": 51.5, "state": "idle"}


def test_an_observer_reads_the_sites_and_can_publish_nothing(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    added = console.ok("observers", "add", "home-assistant", "--json")
    login = json.loads(added.out)
    assert list(login) == ["username", "password"] and login["username"] == "observer-home-assistant"
    assert len(login["password"]) >= 20
    assert "reload the broker" in added.err  # the broker files were rewritten; the operator reloads
    console.broker.reload()

    # A site publishes as it does: retained state (and uptime), telemetry, an event, an ack.
    console.ok("provision", "kalibaru", "--out", str(tmp_path / "card"))
    site = console.site_client(tmp_path / "card")
    assert site.publish(site_topic(PREFIX, "kalibaru", "state"), state("kalibaru"), retain=True) in ACCEPTED
    assert site.publish(site_topic(PREFIX, "kalibaru", "uptime"), {"v": 1, "site": "kalibaru", "days": []},
                        retain=True) in ACCEPTED

    observer = console.client(f"{PREFIX}/#", username=login["username"], password=login["password"])
    topic, payload = observer.wait_for(lambda t, p: t == site_topic(PREFIX, "kalibaru", "state"))
    assert payload["online"] is True  # the retained state, delivered at subscription
    observer.wait_for(lambda t, p: t == site_topic(PREFIX, "kalibaru", "uptime"))
    mark = observer.mark()
    site.publish(site_topic(PREFIX, "kalibaru", "telemetry"), telemetry("kalibaru"))
    observer.wait_for(lambda t, p: t.endswith("/telemetry") and p["cpu_temp_c"] == 51.5, after=mark)

    # Everything else on the broker stays out of its `#` subscription: events, acks, commands.
    console_side = console.console_client()
    site.publish(site_topic(PREFIX, "kalibaru", "event"), {"v": 1, "site": "kalibaru", "type": "button.press"})
    site.publish(site_topic(PREFIX, "kalibaru", "ack"), {"v": 1, "site": "kalibaru", "id": None, "ok": False})
    console_side.publish(site_topic(PREFIX, "kalibaru", "cmd"), {"v": 1, "type": "ping"})
    site.publish(site_topic(PREFIX, "kalibaru", "telemetry"), {**telemetry("kalibaru"), "cpu_temp_c": 52.0})
    observer.wait_for(lambda t, p: t.endswith("/telemetry") and p["cpu_temp_c"] == 52.0, after=mark)
    leaves = {message.topic.rsplit("/", 1)[1] for message in observer.messages}
    assert leaves == {"state", "uptime", "telemetry"}

    # Its publishes: refused with 135 everywhere, and nobody receives them.
    watcher = console.console_client(f"{PREFIX}/#")
    targets = [site_topic(PREFIX, "kalibaru", "cmd"), group_command_topic(PREFIX, "all"),
               site_topic(PREFIX, "kalibaru", "state"), site_topic(PREFIX, "kalibaru", "telemetry"),
               site_topic(PREFIX, "kalibaru", "event"), f"{PREFIX}/console/x", "spoof/anything"]
    for target in targets:
        assert observer.publish(target, {"v": 1, "spoofed": True}) == NOT_AUTHORIZED, target
    assert observer.publish(site_topic(PREFIX, "kalibaru", "state"), state("kalibaru", current="in_meeting"),
                            retain=True) == NOT_AUTHORIZED
    watcher.publish(f"{PREFIX}/console/marker", "end")  # the console's own arrives: the earlier ones would have too
    watcher.wait_for(lambda t, p: t == f"{PREFIX}/console/marker")
    assert not [m for m in watcher.messages if isinstance(m.payload, dict) and m.payload.get("spoofed")]
    fresh = console.console_client(site_topic(PREFIX, "kalibaru", "state"))
    _, retained = fresh.wait_for(lambda t, p: True)
    assert retained["state"] == "idle"  # the retained state is still the site's own
    for client in (fresh, watcher, console_side, site, observer):
        client.close()


def test_wrong_password_other_listener_and_removal_are_refused(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    console.ok("provision", "kalibaru", "--out", str(tmp_path / "card"))
    site = console.site_client(tmp_path / "card")
    login = console.ok("observers", "add", "grafana", "--json").json
    console.broker.reload()
    wrong = console.client(username=login["username"], password=login["password"] + "x", refused_ok=True)
    assert wrong.refused
    wrong.close()
    # Not on the console's listener, which knows the console's login only.
    elsewhere = console.client(username=login["username"], password=login["password"], port=console.console_port,
                               refused_ok=True)
    assert elsewhere.refused
    elsewhere.close()
    # The client id is its login, whatever it asks for: it cannot take over a site's connection.
    connected = console.client(f"{PREFIX}/site/+/state", username=login["username"], password=login["password"],
                               client_id=site_username("kalibaru"))
    assert site.publish(site_topic(PREFIX, "kalibaru", "telemetry"), telemetry("kalibaru")) in ACCEPTED
    assert "closing old connection" not in console.broker.log() and site.client.is_connected()
    site.close()
    assert [row["name"] for row in console.ok("observers", "list", "--json").json] == ["grafana"]
    assert "password" not in console.ok("observers", "list", "--json").out

    removed = console.ok("observers", "remove", "grafana")
    assert "removed observer grafana" in removed.out
    console.broker.reload()
    wait_until(lambda: not connected.client.is_connected(), 5, what="the removed observer's connection closed")
    connected.close()
    again = console.client(username=login["username"], password=login["password"], refused_ok=True)
    assert again.refused
    again.close()
    assert "observer-grafana" not in (console.home / "broker" / "passwd").read_text()
    assert "observer-grafana" not in (console.home / "broker" / "acl").read_text()
    assert console.ok("observers", "list", "--json").json == []


def test_bad_names_and_duplicates_change_nothing(fleet_broker: Console) -> None:
    console = fleet_broker
    for name in ("Home", "-x", "a" * 33, "x_y", ""):
        assert console.run("observers", "add", name).code == 2, name
    first = console.ok("observers", "add", "node-red")
    assert "observer-node-red" in first.out and "shown only this once" in first.out
    passwd = (console.home / "broker" / "passwd").read_text()
    assert console.run("observers", "add", "node-red").code == 2
    assert (console.home / "broker" / "passwd").read_text() == passwd  # the first password still works
    assert console.run("observers", "remove", "nobody").code == 2
