"""What the person at the panel sees: the LED pattern and the screen, as pure functions of the state.

A meeting to join or a meeting in progress outranks "broken" and "unreachable", because that is
what the person has to act on.
"""

from __future__ import annotations

from collections.abc import Mapping

from appliance.core import led

IDLE = "idle"
MEETING_AVAILABLE = "meeting_available"
JOINING = "joining"
IN_MEETING = "in_meeting"
LEAVING = "leaving"
PROGRAM_LOST = ("retrying", "buffering", "failed")


def led_pattern(state: str, broker_connected: bool, broken: bool) -> led.LedPattern:
    if state == IN_MEETING:
        return led.ON
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
