"""Rollouts over the real broker: `update start` in rings, `collect` sending the next ring by itself, halts,
and `update status`. The sites are MQTT clients logged in with their own provisioning files that check each
command with the device's own `check_command` and answer as the contract says (the device's update engine
is not needed to see what the console does with the answers)."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

from appliance.console import records
from appliance.core.clock import rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, CommandPolicy, check_command, group_command_topic, site_topic
from appliance.core.signing import public_key_from_base64
from appliance_dev.recorder import Message, MqttRecorder
from appliance_dev.waiting import wait_until
from tests.console.conftest import Console
from tests.console.test_collect import start_collect
from tests.console.update_helpers import build_bundle

P = DEFAULT_TOPIC_PREFIX
OLD, NEW = "1.2.0", "1.3.0"
BUNDLE_URL = f"http://127.0.0.1/releases/{NEW}.raucb"  # the media host given to init: the sites' allowed host


class FakeSite:
    """A site's MQTT side: checks each command like a device, acks it, reports state and events."""

    def __init__(self, console: Console, site: str, tmp: Path) -> None:
        card = tmp / f"card-{site}"
        console.ok("provision", site, "--out", str(card))
        config = tomllib.loads((card / "appliance-site.toml").read_text())
        self.site, self.commands = site, []
        self.policy = CommandPolicy(site, public_key_from_base64(config["security"]["console_public_key"]),
                                    allowed_media_hosts=tuple(config["security"]["allowed_media_hosts"]))
        self.mqtt = MqttRecorder(console.port, site_topic(P, site, "cmd"), group_command_topic(P, "all"),
                                 host="localhost", username=config["broker"]["username"],
                                 password=config["broker"]["password"], tls_ca=str(card / "ca.pem"),
                                 client_id=f"appliance-{site}", on_message=self._command)
        self.state(OLD)

    def _command(self, message: Message) -> None:  # paho's thread: publish without waiting
        command = check_command(json.dumps(message.payload).encode(), self.policy, time.time(), lambda _: False)
        self.commands.append(command)
        self.mqtt.publish_nowait(site_topic(P, self.site, "ack"), {
            "v": 1, "site": self.site, "id": command.id, "type": command.type, "ok": True, "state": "idle",
            "at": rfc3339(time.time())})

    def state(self, running: str, other: str | None = None, update: dict | None = None) -> None:
        self.mqtt.publish(site_topic(P, self.site, "state"), {
            "v": 1, "site": self.site, "at": rfc3339(time.time()), "online": True, "state": "idle",
            "software": {"running": running, "other_slot": other, "update": update}}, retain=True)

    def event(self, kind: str, **fields: object) -> None:
        self.mqtt.publish(site_topic(P, self.site, "event"), {
            "v": 1, "site": self.site, "at": rfc3339(time.time()), "type": f"update.{kind}", "version": NEW, **fields})

    def commit(self) -> None:
        for kind in ("downloaded", "installed"):
            self.event(kind)
        self.state(NEW, OLD, {"version": NEW, "phase": "trying", "progress": 100})
        self.event("committed", previous=OLD)
        self.state(NEW, OLD)


def published(console: Console, tmp: Path) -> dict:
    console.ok("update", "keys")
    update = console.home / "update"
    bundle = build_bundle(tmp / "release.raucb", update / "signing.pem", update / "signing-key.pem", NEW)
    return console.ok("update", "publish", str(bundle), "--url", BUNDLE_URL, "--json").json["release"]


def collecting(console: Console, sites: list[FakeSite]) -> None:
    """`collect` started and subscribed (its retained copies of the sites' states are in): it misses nothing after."""
    start_collect(console)

    def stored() -> bool:
        db = records.connect(console.home / "console.db")
        try:
            return db.execute("SELECT count(*) FROM site_state").fetchone()[0] >= len(sites)
        finally:
            db.close()

    wait_until(stored, 15, what="collect connected")


def stored_events(console: Console, site: str) -> int:
    db = records.connect(console.home / "console.db")
    try:
        return db.execute("SELECT count(*) FROM events WHERE site = ? AND type LIKE 'update.%'", (site,)).fetchone()[0]
    finally:
        db.close()


def status(console: Console) -> dict:
    return console.run("update", "status", NEW, "--json").json


def test_canary_commits_then_collect_sends_the_main_ring_which_halts_on_a_rollback(fleet_broker: Console,
                                                                                     tmp_path: Path) -> None:
    console = fleet_broker
    release = published(console, tmp_path)
    rings = tmp_path / "rings.csv"
    rings.write_text("id;name;kind;ring\nkalibaru;Kecamatan Kalibaru;kecamatan;canary\n"
                     "muncar;Kecamatan Muncar;kecamatan;\n")
    console.ok("sites", "import", str(rings))
    console.ok("update", "ring", "licin", "canary")
    assert console.ok("update", "ring", "--json").json["canary"] == ["kalibaru", "licin"]
    kalibaru, licin, muncar = (FakeSite(console, site, tmp_path) for site in ("kalibaru", "licin", "muncar"))
    collecting(console, [kalibaru, licin, muncar])

    started = console.run("update", "start", NEW, "--ring", "all", "--timeout", "5")
    assert started.code == 0, started.err
    assert "sent to 2 site(s) (ring canary)" in started.out and "ring main (23 sites) follows by itself" in started.out
    for site in (kalibaru, licin):
        (command,) = site.commands  # checked like a device does: signed by the console, for this site, in date
        assert command.type == "update" and site.site in command.to
        assert command.body == {"version": NEW, "url": BUNDLE_URL, "sha256": release["sha256"],
                                "size": release["size"], "allow_downgrade": False}
        assert command.expires_at - command.issued_at == 3600
    kalibaru.commit()
    licin.state(OLD, None, {"version": NEW, "phase": "downloading", "progress": 40})
    wait_until(lambda: stored_events(console, "kalibaru") == 3, 10, what="kalibaru's events stored by collect")
    time.sleep(1.0)
    assert muncar.commands == [], "the main ring waits for every canary site"
    row = {site["site"]: site for site in status(console)["sites"]}["licin"]
    assert (row["outcome"], row["phase"], row["progress"]) == ("updating", "downloading", 40)

    licin.commit()
    wait_until(lambda: muncar.commands, 15, what="collect sending the main ring once the canary ring committed")
    assert muncar.commands[0].body["sha256"] == release["sha256"]
    assert [site.commands[-1].id for site in (kalibaru, licin)] != [muncar.commands[0].id] * 2

    muncar.event("downloaded")
    muncar.event("installed")
    muncar.event("rolled_back", running=OLD, reason="the new version failed its self-test (broker: not connected)")
    muncar.state(OLD, NEW)
    report = wait_until(lambda: (doc := status(console))["halted"] and doc, 15, what="the rollout halted")
    assert report["reason"].startswith("ring main: 1 failed, more than the 0 allowed (muncar: rolled back: "
                                       "the new version failed its self-test")
    assert report["counts"]["canary"]["committed"] == 2 and report["counts"]["main"]["failed"] == 1
    rows = {site["site"]: site for site in report["sites"]}
    assert rows["kalibaru"]["committed"] and rows["kalibaru"]["running"] == NEW and rows["kalibaru"]["other_slot"] == OLD
    assert rows["muncar"]["rolled_back"] and rows["muncar"]["installed"] and not rows["muncar"]["committed"]
    assert rows["muncar"]["other_slot"] == NEW and rows["muncar"]["running"] == OLD
    text = console.run("update", "status").out
    assert "halted (ring main: 1 failed" in text and "ring canary: 2/2 committed" in text
    assert "rolled back: the new version failed its self-test (broker: not connected)" in text


def test_a_canary_failure_halts_and_the_main_ring_gets_nothing(fleet_broker: Console, tmp_path: Path) -> None:
    console = fleet_broker
    published(console, tmp_path)
    assert console.run("update", "start", "9.9.9", "--ring", "all").code == 2
    assert "no site is in the canary ring" in console.run("update", "start", NEW, "--ring", "canary").err
    console.ok("update", "ring", "kalibaru", "canary")
    kalibaru, muncar = FakeSite(console, "kalibaru", tmp_path), FakeSite(console, "muncar", tmp_path)
    collecting(console, [kalibaru, muncar])

    console.ok("update", "start", NEW, "--ring", "all", "--allow-downgrade", "--timeout", "5")
    assert kalibaru.commands[0].body["allow_downgrade"] is True
    again = console.run("update", "start", NEW, "--sites", "kalibaru")
    assert again.code == 1 and "is still active" in again.err

    kalibaru.event("failed", step="download", reason="sha256 of the download does not match")
    report = wait_until(lambda: (doc := status(console))["halted"] and doc, 15, what="the rollout halted")
    assert report["reason"] == ("ring canary: 1 failed, more than the 0 allowed (kalibaru: failed at download: "
                                "sha256 of the download does not match)")
    muncar.mqtt.settle(1.0)
    assert muncar.commands == [], "a halted rollout sends no further ring"
    # Halted is final: a new rollout (after a fix) is how it goes on; the old one no longer blocks it.
    console.ok("update", "start", NEW, "--sites", "kalibaru", "--timeout", "5")
    assert len(kalibaru.commands) == 2
    assert console.ok("update", "stop", NEW).out.startswith("stopped rollout 2")
