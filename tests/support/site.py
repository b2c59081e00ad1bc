"""Signed commands as the console makes them, and meeting bodies, for tests.

The broker, the daemon process and the MQTT recorder the tests use are in appliance_dev
(broker.Mosquitto, site_process.DaemonProcess, recorder.MqttRecorder), shared with the demo and benchmarks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.core.protocol import build_command
from appliance.core.signing import generate_private_key, public_key_to_base64

REPO = Path(__file__).resolve().parents[2]


class ConsoleKey:
    """A console's key pair for tests: commands signed as the console signs them (protocol.build_command)."""

    def __init__(self) -> None:
        self.private = generate_private_key()
        self.public_b64 = public_key_to_base64(self.private.public_key())

    def command(self, command_type: str, body: dict[str, Any] | None = None, *, to: list[str] | None = None,
                command_id: str | None = None, issued_at: float | None = None, ttl_s: float = 600,
                signed: bool = True) -> dict[str, Any]:
        """Defaults for tests: every site (`"*"`), issued now, valid 10 minutes, signed."""
        return build_command(command_type, body or {}, to=to or ["*"], command_id=command_id,
                             issued_at=time.time() if issued_at is None else issued_at, ttl_s=ttl_s,
                             signing_key=self.private if signed else None)


def meeting_body(meeting_id: str = "musrenbang-2026", host: str = "127.0.0.1", auto_join: bool = False) -> dict[str, Any]:
    return {"meeting_id": meeting_id, "title": "Musrenbang Kecamatan",
            "program_url": f"srt://{host}:9000", "ingest_url": f"rtmp://{host}/live/{{site}}", "auto_join": auto_join}

