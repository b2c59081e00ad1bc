"""Remote operations on a site: `reboot` (refused in a meeting unless forced), `logs` and `screenshot`
answered in bounded chunks on the reply topic, reassembled as the console does (core/replies.py)."""

from __future__ import annotations

import io as bytes_io
import json
from pathlib import Path

from PIL import Image

from appliance.core import io, replies
from appliance.core.transitions import IN_MEETING
from tests.core_helpers import announce, command, make_core, published


def _replies(effects: list, command_id: str) -> list[dict]:
    return [e.payload for e in effects if isinstance(e, io.Publish) and e.topic.endswith(f"/reply/{command_id}")]


def test_a_reboot_waits_for_no_meeting_unless_forced() -> None:
    core, _ = make_core(camera=True)
    assert announce(core)["ok"] and command(core, "join")[0]["ok"]
    core.handle(io.MediaStatus("uplink", "live"))
    assert core.state == IN_MEETING
    ack, effects = command(core, "reboot")
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_state" and "force" in ack["error"]["message"]
    assert not [e for e in effects if isinstance(e, io.RequestReboot)]
    ack, effects = command(core, "reboot", {"force": True})
    assert ack["ok"] and [e for e in effects if isinstance(e, io.RequestReboot)] == [io.RequestReboot("normal")]
    assert [p for p in published(effects, "/event") if p["type"] == "reboot.requested"][0]["forced"] is True


def test_logs_come_back_in_bounded_chunks_that_reassemble() -> None:
    core, _ = make_core()
    ack, effects = command(core, "logs", {"since": "2026-12-01T00:00:00Z", "lines": 3000}, command_id="logs-1")
    assert ack["ok"] and [e for e in effects if isinstance(e, io.ReadLogs)] == [
        io.ReadLogs("logs-1", "2026-12-01T00:00:00Z", 3000)]
    lines = tuple(f"2026-12-02T10:{i // 60:02d}:{i % 60:02d} rapat appliance[412]: line {i} " + "x" * 80
                  for i in range(3000))
    chunks = _replies(core.handle(io.ReplyData("logs-1", "logs", lines=lines)), "logs-1")
    assert len(chunks) > 1 and all(len(json.dumps(c).encode()) <= replies.MAX_CHUNK_BYTES for c in chunks)
    assert replies.reassemble(list(reversed(chunks)))["lines"] == list(lines)


def test_bad_logs_bodies_are_refused_naming_the_field() -> None:
    core, _ = make_core()
    for body, words in (({"lines": 0}, "body.lines"), ({"since": "yesterday"}, "body.since")):
        ack = command(core, "logs", body)[0]
        assert ack["error"]["code"] == "bad_schema" and words in ack["error"]["message"], ack


def test_a_site_without_a_display_says_so_instead_of_a_picture() -> None:
    core, _ = make_core(display=False)
    effects = command(core, "screenshot", command_id="shot-1")[1]
    answer = replies.reassemble(_replies(effects, "shot-1"))
    assert "no display" in answer["error"]


def test_a_real_site_sends_the_picture_on_its_screen(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A whole site in-process with its real VLC display (headless frames): the screenshot is what it shows."""
    from appliance.config import load
    from appliance_dev.inprocess import InProcessSite
    from appliance_dev.waiting import wait_until

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    config_path = tmp_path / "site.toml"
    config_path.write_text(f"""[site]\nid = "kalibaru"\nname = "Kecamatan Kalibaru"\n[broker]\nurl = "mqtt://127.0.0.1:1"
[security]\nallow_unsigned = true\nallowed_media_hosts = ["127.0.0.1"]\n[panel]\nbackend = "mock"\n[camera]\nbackend = "none"
[display]\nbackend = "vlc"\noutput = "headless"\nwidth = 640\nheight = 360\n[paths]\nstate_dir = "{tmp_path}/state"
control_socket = "{tmp_path}/control.sock"\n""")
    site = InProcessSite(load([str(config_path)]))
    try:
        wait_until(lambda: site.health.get("display") == "ok", 15, what=lambda: f"display ok: {site.health}")
        import time

        from appliance.core.protocol import build_command
        shot = build_command("screenshot", {}, to=["kalibaru"], issued_at=time.time(), ttl_s=60, command_id="shot-2")
        site.daemon.post(io.MessageReceived(site.daemon.core.topics.cmd, json.dumps(shot).encode()))

        def answered() -> list[dict]:
            chunks = [p for t, p, _ in list(site.daemon.mqtt.published) if t.endswith("/reply/shot-2")]
            return chunks if any(c.get("last") for c in chunks) else []

        chunks = wait_until(answered, 15, what="the screenshot's chunks")
    finally:
        site.close()
    answer = replies.reassemble(chunks)
    assert answer["content_type"] == "image/jpeg", answer.get("error")
    picture = Image.open(bytes_io.BytesIO(answer["data"]))
    assert picture.size == (640, 360)
    assert len(picture.getcolors(maxcolors=1 << 20) or []) > 50  # the idle screen's text, not a blank frame


def test_the_reboot_request_is_written_after_the_ack_had_time_to_leave(tmp_path: Path) -> None:
    import time

    from appliance.adapters.remote_ops import RemoteOps, journal_command

    config = {"paths": {"control_socket": str(tmp_path / "control.sock")}}
    ops = RemoteOps(config, lambda event: None)
    ops.reboot(io.RequestReboot("normal", delay_s=0.3))
    assert not ops.reboot_request.exists()
    time.sleep(0.6)
    assert ops.reboot_request.read_text() == "normal\n"
    argv = journal_command("2026-12-02T08:00:00Z", 200)
    assert "--since=2026-12-02 08:00:00" in argv and "--lines=200" in argv and "appliance.service" in argv


def test_logs_the_journal_cannot_give_are_an_error_reply(tmp_path: Path) -> None:
    from appliance.adapters.remote_ops import RemoteOps

    posted: list = []

    def broken(since: str | None, lines: int) -> list[str]:
        raise ValueError("No journal files were found.")

    ops = RemoteOps({"paths": {"control_socket": str(tmp_path / "c.sock")}}, posted.append, journal=broken)
    ops.read_logs(io.ReadLogs("logs-9", None, 10))
    import time
    deadline = time.monotonic() + 5
    while not posted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert posted and "No journal files" in posted[0].error


def test_logs_since_an_hour_are_the_newest_lines_in_time_order(tmp_path: Path) -> None:
    """On a real journal file (systemd-journal-remote writes it, the real journalctl reads it): with
    `--since`, journalctl's `--lines` alone gives the oldest lines of the hour."""
    import subprocess
    import time

    from appliance.adapters.remote_ops import journal_command, journal_lines
    from appliance.console.remote_cli import since_time
    from appliance_dev.journal_file import export_entry, write_journal

    now = time.time()
    entries = [export_entry(now - 7200 + i, "appliance.service", f"old {i}", boot="0" * 32, monotonic_s=i + 1)
               for i in range(5)]
    entries += [export_entry(now - 1800 + i, "appliance.service", f"line {i}", boot="0" * 32, monotonic_s=i + 10)
                for i in range(50)]
    entries.append(export_entry(now - 1000, "ssh.service", "not ours", boot="0" * 32, monotonic_s=100))
    write_journal(tmp_path / "journal", "".join(entries))
    argv = journal_command(since_time("1h"), 10) + [f"--directory={tmp_path / 'journal'}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20)
    lines = journal_lines(result.stdout)
    assert [line.rsplit(": ", 1)[1] for line in lines] == [f"line {i}" for i in range(40, 50)], lines
