"""`make demo` really runs end to end: broker, daemon, signed commands, button, summary."""

from __future__ import annotations

import subprocess
import sys

from tests.support.site import REPO


def test_demo_runs_the_whole_story() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance.demo"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "states seen : idle -> meeting_available -> in_meeting -> meeting_available -> idle -> offline" in out
    assert "LED         : off -> slow_blink -> on -> slow_blink -> off" in out
    assert "REFUSED replayed" in out
    assert "events      : button.press, meeting.joined, button.hold, meeting.left" in out
