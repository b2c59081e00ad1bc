"""Replay protection fails closed on a real daemon whose state directory is a tiny, full tmpfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.recorder import MqttRecorder
from tests.support.disk import fill, tmpfs
from tests.support.site import ConsoleKey

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
SITE = "kalibaru"


def test_a_command_whose_id_cannot_be_saved_is_refused_and_can_be_sent_again(
        tmp_path: Path, start_site, observer: MqttRecorder, console_key: ConsoleKey) -> None:  # noqa: ANN001
    with tmpfs(tmp_path / f"{SITE}-state") as state:
        daemon = start_site(SITE)
        filler = fill(state)
        command = console_key.command("ping", to=[SITE], command_id="ping-on-a-full-card")
        cmd_topic = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd")
        mark = observer.mark()
        observer.publish(cmd_topic, command)
        ack = observer.ack_for(command["id"], SITE, after=mark)
        assert ack["ok"] is False and ack["error"]["code"] == "storage_failed", ack
        assert "No space left" in ack["error"]["message"]
        assert daemon.alive()
        filler.unlink()
        mark = observer.mark()
        observer.publish(cmd_topic, command)  # the same command again, once there is room
        assert observer.ack_for(command["id"], SITE, after=mark)["ok"] is True
        daemon.stop()
        assert "ping-on-a-full-card" in (state / "accepted-commands.log").read_text()
