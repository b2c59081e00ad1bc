"""The ledger inside a real daemon: retained on connect, kept across a clean stop and a SIGKILL."""

from __future__ import annotations

from appliance.adapters.ledger import LedgerStore
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder

SITE = "kalibaru"
UPTIME = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "uptime")


def test_retained_uptime_survives_restart_and_kill(start_site, broker: Mosquitto, observer: MqttRecorder, tmp_path) -> None:
    daemon = start_site(SITE)
    _, first = observer.wait_for(lambda t, p: t == UPTIME, timeout=5)
    assert first["tz"] == "Asia/Jakarta" and len(first["days"]) == 1 and first["days"][0]["boots"] == 1
    mark = observer.mark()
    daemon.stop()  # SIGTERM: a final checkpoint is saved
    daemon.start().wait_connected()
    _, second = observer.wait_for(lambda t, p: t == UPTIME, timeout=5, after=mark)
    day = second["days"][-1]
    assert day["boots"] == 1  # the same kernel boot: a daemon restart is not a boot
    assert day["up_s"] >= first["days"][-1]["up_s"]
    daemon.kill()
    store = LedgerStore(tmp_path / f"{SITE}-state")
    store.open()
    days, state = store.load()
    store.close()
    assert days and state.last_boot_id and days[-1].up_s >= first["days"][-1]["up_s"]
    late = MqttRecorder(broker.port, UPTIME)
    try:
        _, retained = late.wait_for(lambda t, p: True, timeout=5)
        assert late.messages[0][2] is True and retained["days"][-1]["date"] == day["date"]
    finally:
        late.close()


def test_telemetry_has_the_contract_fields_and_no_invented_values(start_site, observer: MqttRecorder) -> None:
    from appliance.adapters import sysinfo  # noqa: PLC0415

    start_site(SITE, extra="[telemetry]\ninterval_s = 5\n")
    _, telemetry = observer.wait_for(lambda t, p: t.endswith(f"/{SITE}/telemetry"), timeout=10)
    assert set(telemetry) == {"v", "site", "at", "uptime_s", "system_uptime_s", "boot_id", "mqtt_reconnects", "state",
                              "disk", "cpu_temp_c", "load1", "mem_available_mb", "disk_free_mb", "throttled"}
    assert telemetry["disk"] == "ok"  # the state directory takes the ledger's saves (see test_uptime_disk.py)
    # Whatever this machine exposes, exactly that: null where it says nothing.
    assert telemetry["throttled"] == sysinfo.throttled()
    assert (telemetry["cpu_temp_c"] is None) == (sysinfo.cpu_temp_c() is None)
    assert telemetry["boot_id"] == sysinfo.boot_id() and telemetry["state"] == "idle"
    assert isinstance(telemetry["disk_free_mb"], float) and isinstance(telemetry["mem_available_mb"], float)
