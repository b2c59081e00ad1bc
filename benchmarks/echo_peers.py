"""Yardsticks for the daemon's command -> ack round trip, on the same broker in the same run.

- `BareEcho`: a paho client that answers every message at once. The floor: what the broker and the
  loopback cost, and nothing else.
- `VerifyingEcho`: the fair peer. Before it answers it does the two things the contract makes the
  daemon do before its ack: verify the command's Ed25519 signature with the console's key, and put
  the command id on disk with `fdatasync` (the replay memory must survive a power cut). It answers
  from paho's own callback, with no event loop, no state machine and no retained state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.console.fleet import no_delay  # TCP_NODELAY, as the daemon sets it
from appliance.core.signing import verify_command


class BareEcho:
    def __init__(self, port: int, listen: str, answer: str) -> None:
        self.answer = answer
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_socket_open = no_delay
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(listen, qos=1)
        self.client.loop_start()

    def on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        client.publish(self.answer, message.payload, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class VerifyingEcho(BareEcho):
    def __init__(self, port: int, listen: str, answer: str, public_key: Ed25519PublicKey, journal: Path) -> None:
        self.public_key = public_key
        self.journal = open(journal, "ab", buffering=0)  # noqa: SIM115 - kept open, as the daemon's journal is
        self.refused = 0
        super().__init__(port, listen, answer)

    def on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        command = json.loads(message.payload)
        if not verify_command(command, self.public_key):
            self.refused += 1  # counted, so a benchmark whose peer skipped the work would show it
            return
        self.journal.write(f"{command['id']} {command['expires_at']}\n".encode())
        os.fdatasync(self.journal.fileno())
        ack = {"v": 1, "id": command["id"], "type": command["type"], "ok": True}
        client.publish(self.answer, json.dumps(ack).encode(), qos=1)

    def close(self) -> None:
        super().close()
        self.journal.close()
