"""A real daemon against a real broker: last will, broker restarts, replay memory across restarts."""

from __future__ import annotations

import json
import time

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, Topics
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.site import ConsoleKey, meeting_body

SITE = "kalibaru"
TOPICS = Topics(DEFAULT_TOPIC_PREFIX, SITE, "kecamatan")
CMD, STATE = TOPICS.cmd, TOPICS.state


def test_sigkill_leaves_retained_offline_will(start_site, broker: Mosquitto, observer: MqttRecorder) -> None:
    daemon = start_site(SITE)
    observer.wait_for(lambda t, p: t == STATE and p.get("online") is True)
    daemon.kill()
    _, will = observer.wait_for(lambda t, p: t == STATE and p.get("online") is False, timeout=5)
    assert will == {"v": 1, "site": SITE, "online": False, "state": "offline"}
    late = MqttRecorder(broker.port, STATE)  # a console that connects later still sees it, retained
    try:
        _, retained = late.wait_for(lambda t, p: True, timeout=5)
        assert retained["state"] == "offline" and late.messages[0][2] is True
    finally:
        late.close()


def test_clean_stop_also_publishes_offline(start_site, observer: MqttRecorder) -> None:
    daemon = start_site(SITE)
    observer.wait_for(lambda t, p: t == STATE and p.get("online") is True)
    assert daemon.stop() == 0
    observer.wait_for(lambda t, p: t == STATE and p.get("state") == "offline", timeout=5)


def test_state_republished_after_broker_restart(start_site, broker: Mosquitto, console_key: ConsoleKey) -> None:
    daemon = start_site(SITE)
    first = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    first.publish(CMD, json.dumps(console_key.command("meeting.start", meeting_body(), to=[SITE])))
    first.wait_for(lambda t, p: t == STATE and p.get("state") == "meeting_available")
    first.close()
    broker.restart()  # persistence is off: the broker forgets every retained message
    assert daemon.wait_status(lambda s: not s["broker_connected"], timeout=10)["led"] == "slow_blink"
    second = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    try:
        _, state = second.wait_for(lambda t, p: t == STATE and p.get("online") is True, timeout=70)
        assert state["state"] == "meeting_available" and state["health"]["broker"] == "ok"
        assert daemon.status()["broker_connected"] is True
    finally:
        second.close()


def test_replay_refused_after_daemon_restart(start_site, observer: MqttRecorder, console_key: ConsoleKey) -> None:
    daemon = start_site(SITE)
    command = console_key.command("ping", to=[SITE])
    observer.publish(CMD, json.dumps(command))
    assert observer.ack_for(command["id"], SITE)["ok"] is True
    daemon.stop()
    daemon.start().wait_connected()
    mark = observer.mark()
    observer.publish(CMD, json.dumps(command))
    ack = observer.ack_for(command["id"], SITE, after=mark)
    assert ack["ok"] is False and ack["error"]["code"] == "replayed"


def test_broker_unreachable_at_start_then_arrives(tmp_path, console_key: ConsoleKey) -> None:
    broker = Mosquitto(tmp_path / "late-broker")
    daemon = DaemonProcess(site_config(tmp_path, SITE, broker.url, console_key.public_b64)).start()
    try:
        status = daemon.wait_status(lambda s: s["led"] == "blip", timeout=5)
        assert status["broker_connected"] is False and status["screen"] == "broker_unreachable"
        assert status["health"]["broker"] == "error"
        broker.start()
        status = daemon.wait_status(lambda s: s["broker_connected"], timeout=70)
        assert status["broker_connected"] and status["led"] == "off"
        assert "refused the connection" in daemon.log()
    finally:
        daemon.stop()
        broker.stop()


def test_mock_button_through_gpiozero_joins_and_holds_to_leave(start_site, observer: MqttRecorder,
                                                               console_key: ConsoleKey) -> None:
    daemon = start_site(SITE)
    observer.publish(CMD, json.dumps(console_key.command("meeting.start", meeting_body(), to=[SITE])))
    daemon.wait_status(lambda s: s["state"] == "meeting_available")
    reply = daemon.control({"cmd": "press"})
    assert reply["ok"] and reply["state"] == "in_meeting"
    _, event = observer.wait_for(lambda t, p: t.endswith("/event") and p.get("type") == "button.press")
    assert event["result"] == "joining"
    start = time.monotonic()
    reply = daemon.control({"cmd": "press", "hold": 3.3})
    assert time.monotonic() - start >= 3.3
    assert reply["state"] == "meeting_available"
    observer.wait_for(lambda t, p: t.endswith("/event") and p.get("type") == "button.hold" and p["result"] == "leaving")
    observer.wait_for(lambda t, p: t.endswith("/event") and p.get("type") == "meeting.left")


def test_rejected_site_file_reaches_screen_and_centre(tmp_path, broker: Mosquitto, observer: MqttRecorder,
                                                      console_key: ConsoleKey) -> None:
    state_dir = tmp_path / f"{SITE}-state"
    state_dir.mkdir()
    (state_dir / "provision-error.txt").write_text(
        "site file rejected, previous configuration kept: /boot/firmware/appliance-site.toml\n"
        "/boot/firmware/appliance-site.toml: site.kind: must be one of kecamatan, desa, other, not 'kota'\n")
    daemon = DaemonProcess(site_config(tmp_path, SITE, broker.url, console_key.public_b64)).start()
    try:
        daemon.wait_connected()
        status = daemon.status()
        assert status["screen"] == "provision_error" and status["led"] == "double_blink"
        _, event = observer.wait_for(lambda t, p: t.endswith("/event") and p.get("type") == "provision.rejected")
        assert "site.kind" in event["problems"][1]
    finally:
        daemon.stop()


def test_simulate_runs_a_whole_site_without_hardware(tmp_path, broker: Mosquitto, console_key: ConsoleKey) -> None:
    """`appliance run --simulate`: mock panel, test-pattern camera, headless display, as the contract says."""
    config = tmp_path / "plain.toml"
    config.write_text(f"""[site]
id = "{SITE}"
kind = "kecamatan"
[broker]
url = "{broker.url}"
[security]
console_public_key = "{console_key.public_b64}"
[paths]
state_dir = "{tmp_path / 'state'}"
control_socket = "{tmp_path / 'sim.sock'}"
""")
    daemon = DaemonProcess(config, options=["--simulate"]).start(wait=False)
    try:
        daemon.wait_ready(timeout=15)
        status = daemon.wait_status(lambda s: s["broker_connected"] and s["health"]["display"] != "missing", timeout=15)
        assert status["health"]["panel"] == "ok" and status["health"]["camera"] == "ok"
        assert status["health"]["display"] == "ok"
        assert daemon.control({"cmd": "press"})["state"] == "idle"  # the mock button works
    finally:
        daemon.stop()
