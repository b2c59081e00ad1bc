"""The MQTT link against a hostile or careless publisher, through a real broker and a real daemon:
a command retained while the device is online, and payloads far beyond the 16 KiB command limit."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from appliance.adapters.mqtt import MAX_PACKET_BYTES
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, MAX_PAYLOAD_BYTES, Topics
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess
from appliance_dev.waiting import wait_until
from tests.support.site import ConsoleKey

SITE = "kalibaru"
TOPICS = Topics(DEFAULT_TOPIC_PREFIX, SITE, "kecamatan")
MiB = 1024 * 1024


def proc_status_kib(pid: int, field: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """VmHWM starts again from the current RSS (Linux ≥ 4.0), so a short-lived spike shows in it."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def test_retained_command_published_while_online_is_refused(start_site: Callable[..., DaemonProcess],
                                                            observer: MqttRecorder, console_key: ConsoleKey) -> None:
    daemon = start_site(SITE)
    command = console_key.command("ping", to=[SITE])
    try:
        mark = observer.mark()
        observer.publish(TOPICS.cmd, json.dumps(command), retain=True)
        ack = observer.ack_for(command["id"], SITE, after=mark)
        assert ack["ok"] is False and ack["error"]["code"] == "retained_command", ack
        # The same command sent properly is still served (a refused one is not remembered as a replay).
        again = observer.mark()
        observer.publish(TOPICS.cmd, json.dumps(command))
        assert observer.ack_for(command["id"], SITE, after=again)["ok"] is True
    finally:
        observer.publish(TOPICS.cmd, b"", retain=True)  # the broker forgets the retained command
    assert daemon.alive()


@pytest.mark.parametrize("size", [MAX_PAYLOAD_BYTES + 1, MAX_PACKET_BYTES - 1024])
def test_oversize_payload_within_the_packet_limit_is_answered_too_large(
        start_site: Callable[..., DaemonProcess], observer: MqttRecorder, size: int) -> None:
    start_site(SITE)
    mark = observer.mark()
    observer.publish(TOPICS.cmd, b"x" * size)
    ack = observer.wait_for(lambda topic, payload: topic == TOPICS.ack, after=mark)[1]
    assert ack["ok"] is False and ack["error"]["code"] == "too_large", ack


def test_huge_payload_is_kept_out_of_the_daemons_memory(start_site: Callable[..., DaemonProcess], broker: Mosquitto,
                                                        observer: MqttRecorder, console_key: ConsoleKey) -> None:
    daemon = start_site(SITE)
    assert daemon.process is not None
    pid = daemon.process.pid
    warm_up = console_key.command("ping", to=[SITE])  # the command path's first use allocates too
    observer.publish(TOPICS.cmd, json.dumps(warm_up))
    observer.ack_for(warm_up["id"], SITE)
    idle_rss = proc_status_kib(pid, "VmRSS")
    reset_peak_rss(pid)

    mark = observer.mark()
    assert observer.publish(TOPICS.cmd, b"x" * (8 * MiB), timeout=20) == 0  # the broker took it
    # Delivery to the site is in order: once this ping is answered, the huge message was either
    # delivered before it or dropped by the broker.
    ping = console_key.command("ping", to=[SITE])
    observer.publish(TOPICS.cmd, json.dumps(ping))
    assert observer.ack_for(ping["id"], SITE, after=mark)["ok"] is True

    peak_growth_mib = (proc_status_kib(pid, "VmHWM") - idle_rss) / 1024
    rss_growth_mib = (proc_status_kib(pid, "VmRSS") - idle_rss) / 1024
    assert peak_growth_mib < 3 and rss_growth_mib < 3, (peak_growth_mib, rss_growth_mib)
    # Beyond the maximum packet size the broker drops the message for this site: no ack at all.
    acks = [payload for topic, payload, _ in observer.messages[mark:] if topic == TOPICS.ack]
    assert [ack["error"]["code"] for ack in acks if not ack["ok"]] == []
    assert f"Dropping too large outgoing PUBLISH for appliance-{SITE}" in broker.log()
    assert daemon.alive()
    wait_until(lambda: daemon.status()["broker_connected"], 5, what="the site still connected")
