"""What the person at the panel sees: the LED pattern and the screen, as pure functions of the state.

A meeting to join or a meeting in progress outranks "broken" and "unreachable", because that is
what the person has to act on.
"""

from __future__ import annotations

from collections.abc import Mapping

from appliance.core import led
from appliance.core.floor import REQUESTED
from appliance.core.transitions import IDLE, IN_MEETING, JOINING, LEAVING, MEETING_AVAILABLE

PROGRAM_LOST = ("retrying", "buffering", "failed")
# A device with no valid configuration runs no core (there is no site yet): the daemon's not-provisioned
# mode shows this screen with the LED double-blinking ("something is broken"), until the files are valid.
NOT_PROVISIONED = "not_provisioned"
NOT_PROVISIONED_LED = led.DOUBLE_BLINK


def led_pattern(state: str, broker_connected: bool, broken: bool, panel_test: bool = False,
                floor_status: str | None = None) -> led.LedPattern:
    # The self-test waiting for a press shows every kind of step, so the technician sees the LED work.
    if panel_test:
        return led.TEST
    if state == IN_MEETING:
        # Listening and speaking are both steady: speaking is told by the on-air LED and the screen.
        return led.REQUESTED if floor_status == REQUESTED else led.ON
    if state in (JOINING, LEAVING):
        return led.FAST_BLINK
    if state == MEETING_AVAILABLE:
        return led.SLOW_BLINK
    if broken:
        return led.DOUBLE_BLINK
    if not broker_connected:
        return led.BLIP
    return led.OFF


def screen_name(state: str, broker_connected: bool, camera_broken: bool, health: Mapping[str, str],
                provision_rejected: bool = False) -> str:
    # A rejected site file explains most other trouble (an old broker address, say): it goes first.
    if state == IDLE and provision_rejected:
        return "provision_error"
    if state == IDLE and not broker_connected:
        return "broker_unreachable"
    if state == IDLE and camera_broken:
        return "camera_missing"
    if state == IN_MEETING and health["program"] in PROGRAM_LOST:
        return "program_reconnecting"
    return state
