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
    assert in_order(lines["LED"], ["off", "slow_blink", "on", "slow_blink", "off"]), lines["LED"]
    assert "double_blink" not in lines["LED"]
    assert "REFUSED replayed" in result.stdout
    assert "events      : button.press, meeting.joined, button.hold, meeting.left" in result.stdout
    assert "'degraded': False" in result.stdout and "'publishing': True" in result.stdout
    for picture in ("program.jpg", "uplink.jpg"):
        with Image.open(output / picture) as image:
            assert image.size[0] >= 320 and image.getextrema() != ((0, 0), (0, 0), (0, 0))
