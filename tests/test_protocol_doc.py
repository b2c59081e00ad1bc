"""The worked example of docs/protocol.md really drives a site: openssl + jq + mosquitto_pub."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.site import REPO

SCRIPT = REPO / "docs" / "examples" / "sign-and-send.sh"


def openssl_key(workdir: Path) -> tuple[Path, str]:
    key = workdir / "console.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return key, base64.b64encode(der[-32:]).decode()


def test_shell_recipe_announces_a_meeting(tmp_path: Path, broker: Mosquitto, observer: MqttRecorder) -> None:
    key, public = openssl_key(tmp_path)
    daemon = DaemonProcess(site_config(tmp_path, "kalibaru", broker.url, public)).start()
    try:
        daemon.wait_connected()
        body = ('{"meeting_id":"musrenbang-2026","title":"Musrenbang Kecamatan ✓",'
                '"program_url":"srt://127.0.0.1:9000","ingest_url":"rtmp://127.0.0.1/live/{site}"}')
        sent = subprocess.run([str(SCRIPT), str(key), "kalibaru", "meeting.start", body, "-h", "127.0.0.1",
                               "-p", str(broker.port)], capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        _, ack = observer.wait_for(lambda t, p: t.endswith("/ack"))
        assert ack["ok"] is True and ack["type"] == "meeting.start", ack
        assert daemon.status()["meeting"]["title"] == "Musrenbang Kecamatan ✓"
    finally:
        daemon.stop()
