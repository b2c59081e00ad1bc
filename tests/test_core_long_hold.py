"""The technician's way into the interactive self-test, with no laptop and no login: hold the button
for 10 s while the site is idle (issue: remote operations and the field kit)."""

from __future__ import annotations

from appliance.core import io
from appliance.core.transitions import IN_MEETING
from tests.core_helpers import announce, command, events, make_core, press


def test_a_ten_second_hold_while_idle_starts_the_interactive_self_test() -> None:
    core, clock = make_core(camera=True)
    effects = press(core, clock, seconds=10.5)
    assert core.selftest is not None and core.selftest.interactive and core.selftest.waiting_press
    holds = [e.payload for e in effects if isinstance(e, io.Publish) and e.payload.get("type") == "button.hold"]
    assert holds[-1]["result"] == "selftest"
    assert core.status()["screen"] == "selftest"
    # The release of that hold is not the self-test's press: the test still waits for one.
    assert core.selftest.waiting_press
    press(core, clock, seconds=0.2)
    assert "panel" in core.selftest.checks if core.selftest else True


def test_a_shorter_hold_or_a_hold_in_a_meeting_does_not_start_it() -> None:
    core, clock = make_core(camera=True)
    press(core, clock, seconds=9.0)
    assert core.selftest is None
    assert announce(core)["ok"] and command(core, "join")[0]["ok"]
    core.handle(io.MediaStatus("uplink", "live"))
    assert core.state == IN_MEETING
    effects = press(core, clock, seconds=11.0)
    assert core.selftest is None and "selftest.started" not in events(effects)
