"""The self-test: real daemon, real broker, mock panel; this machine has no camera, microphone or Pi flags."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.adapters import probes
from appliance.cli import _print_selftest
from appliance.core import selftest
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, Topics
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess
from tests.support.site import REPO, ConsoleKey

SITE = "kalibaru"
TOPICS = Topics(DEFAULT_TOPIC_PREFIX, SITE, "kecamatan")
SELFTEST = TOPICS.selftest


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "selftest", "--config", str(daemon.config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=80)


def test_unattended_selftest_reports_truthfully(start_site, observer: MqttRecorder, broker: Mosquitto) -> None:
    daemon = start_site(SITE)
    done = cli(daemon, "--json")
    report = json.loads(done.stdout)
    checks = report["checks"]
    assert set(checks) == set(selftest.CHECKS)
    assert checks["panel"]["ok"] is None and checks["panel"]["code"] == "selftest.panel.needs_person"
    assert "orang di lokasi" in checks["panel"]["detail"] and "person" in checks["panel"]["detail_en"]
    assert checks["camera"]["ok"] is None and checks["display"]["ok"] is None  # backend none here
    assert checks["broker"]["ok"] is True and "dijawab dalam" in checks["broker"]["detail"]
    assert "round trip" in checks["broker"]["detail_en"]
    assert checks["disk"]["ok"] is True
    assert checks["audio"]["ok"] is False  # no capture device on this machine: missing, never passed
    assert checks["power"]["ok"] is None  # no Pi throttling flags here: unknown, not made up
    assert checks["clock"]["ok"] in (True, False)
    assert report["ok"] is False and done.returncode == 1
    _, retained = observer.wait_for(lambda t, p: t == SELFTEST, timeout=5)
    assert retained == report
    late = MqttRecorder(broker.port, SELFTEST)
    try:
        late.wait_for(lambda t, p: p == report, timeout=5)
        assert late.messages[0][2] is True  # retained
    finally:
        late.close()


def test_interactive_panel_check_waits_for_a_press_without_blocking_the_loop(start_site, observer: MqttRecorder) -> None:
    daemon = start_site(SITE, extra='[telemetry]\ninterval_s = 5\n')
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(done=cli(daemon, "--interactive", "--json")))
    runner.start()
    # The event leaves in the same step that starts waiting for the press.
    observer.wait_for(lambda t, p: t.endswith("/event") and p.get("type") == "selftest.started" and p["interactive"],
                      timeout=30)
    started = time.monotonic()
    assert daemon.status()["state"] == "idle"  # the loop answers while the self-test waits
    assert time.monotonic() - started < 1.0
    pressed = daemon.control({"cmd": "press"})
    assert pressed["ok"] and pressed["state"] == "idle"  # the press went to the self-test, not the core
    runner.join(60)
    report = json.loads(outcome["done"].stdout)
    assert report["checks"]["panel"]["ok"] is True and "ditekan setelah" in report["checks"]["panel"]["detail"]
    events = [p for t, p, _ in observer.messages if t.endswith("/event")]
    assert not any(event.get("type") == "button.press" for event in events)
    assert any(event.get("type") == "selftest.started" and event["interactive"] for event in events)


def test_selftest_command_over_mqtt_publishes_retained_result(start_site, observer: MqttRecorder,
                                                             console_key: ConsoleKey) -> None:
    start_site(SITE)
    command = console_key.command("selftest", to=[SITE])
    observer.publish(TOPICS.cmd, json.dumps(command))
    assert observer.ack_for(command["id"], SITE)["ok"] is True
    _, report = observer.wait_for(lambda t, p: t == SELFTEST, timeout=15)
    assert report["checks"]["panel"]["ok"] is None and report["site"] == SITE and report["at"].endswith("Z")


def test_refused_during_a_meeting_and_without_daemon(start_site, observer: MqttRecorder, console_key: ConsoleKey,
                                                     tmp_path: Path) -> None:
    daemon = start_site(SITE)
    body = {"meeting_id": "m1", "title": "Rapat", "program_url": "srt://127.0.0.1:9000",
            "ingest_url": "rtmp://127.0.0.1/live/{site}", "auto_join": True}
    observer.publish(TOPICS.cmd, json.dumps(console_key.command("meeting.start", body, to=[SITE])))
    daemon.wait_status(lambda s: s["state"] == "in_meeting")
    done = cli(daemon)
    assert done.returncode == 1 and "not during a meeting" in done.stderr
    daemon.stop()
    assert cli(daemon).returncode == 3


def test_cli_exit_codes_and_text(capsys) -> None:  # noqa: ANN001
    checks = {name: selftest.result(None if name == "panel" else True, "selftest.crashed", error="x")
              for name in selftest.CHECKS}
    reply = {"result": {"ok": selftest.overall(checks), "checks": checks},
             "lines": selftest.summary_lines(checks, "id"), "language": "id"}
    assert _print_selftest(reply, False) == 0
    out = capsys.readouterr().out
    assert "Tombol: tidak diuji" in out and "Kamera: lulus" in out and "LULUS" in out
    checks["audio"] = selftest.result(False, "selftest.audio.no_device")
    assert _print_selftest({"result": {"ok": selftest.overall(checks)}, "lines": []}, False) == 1
    assert "=> GAGAL" in capsys.readouterr().out
    assert _print_selftest({"result": {"ok": False}, "lines": [], "language": "en"}, False) == 1
    assert "=> FAILED" in capsys.readouterr().out


def test_check_functions_never_pass_what_they_cannot_see(tmp_path: Path) -> None:
    assert probes.check_power(None)["ok"] is None
    assert probes.check_power({"raw": "0x50005", "under_voltage": True})["ok"] is False
    assert probes.check_power({"raw": "0x0"})["ok"] is True
    assert probes.check_clock(None)["ok"] is None
    assert probes.check_audio("")["ok"] is None
    assert probes.check_disk(str(tmp_path), 10.0)["ok"] is False
    assert probes.check_disk(str(tmp_path), 5000.0)["ok"] is True
    assert not list(tmp_path.iterdir())  # the write probe cleans up


def test_core_refuses_a_selftest_command_during_a_meeting() -> None:
    from tests.core_helpers import announce, command, make_core, press  # noqa: PLC0415

    core, clock = make_core()
    assert command(core, "selftest")[0]["ok"] is True
    announce(core)
    press(core, clock)
    ack, effects = command(core, "selftest")
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_state"
    assert not [effect for effect in effects if type(effect).__name__ == "RunProbes"]
