"""`make demo` really runs end to end: broker, central media, daemon, signed commands, button, summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.support.site import REPO


def in_order(line: str, expected: list[str]) -> bool:
    seen = [part.strip() for part in line.split(":", 1)[1].split("->")]
    position = 0
    for item in seen:
        if position < len(expected) and item == expected[position]:
            position += 1
    return position == len(expected)


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    output = tmp_path / "pictures"
    result = subprocess.run([sys.executable, "-m", "appliance_dev.demo", "--output", str(output)],
                            capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines() if " : " in line}
    assert in_order(lines["states seen"], ["idle", "meeting_available", "joining", "in_meeting", "leaving",
                                           "meeting_available", "idle", "offline"]), lines["states seen"]
    assert in_order(lines["LED"], ["off", "slow_blink", "on", "requested", "on", "slow_blink", "off"]), lines["LED"]
    assert "double_blink" not in lines["LED"]
    assert "REFUSED replayed" in result.stdout
    assert ("events      : button.press, meeting.joined, floor.requested, button.press, floor.granted, floor.revoked, "
            "button.hold, meeting.left") in result.stdout
    # The moderated exchange as the centre heard it: muted, asked, speaking (loud), muted again.
    steps = [step.strip() for step in lines["floor"].split(":", 1)[1].split("->")]
    assert [step.split(" (")[0] for step in steps] == ["listening", "requested", "speaking", "listening"], steps
    levels = [float(step.split("(")[1].split(" dBFS")[0]) for step in steps if "dBFS" in step]
    assert levels[0] < -60 and levels[1] > -30 and levels[2] < -60, steps
    assert "the stream stayed unbroken throughout" in result.stdout
    assert "'degraded': False" in result.stdout and "'publishing': True" in result.stdout
    for picture in ("program.jpg", "uplink.jpg"):
        with Image.open(output / picture) as image:
            assert image.size[0] >= 320 and image.getextrema() != ((0, 0), (0, 0), (0, 0))
