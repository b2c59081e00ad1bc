"""The state machine's transitions as data: for each state, what each trigger leads to.

The machine first turns what happened into a trigger name (a command, a press, media becoming
ready, a timeout), then looks the pair (state, trigger) up here and does what the table says. A
pair that is missing is a programming error (`UnknownTransition`), never a silent no-op: the table
is complete over STATES x TRIGGERS, and a test checks that.

Some triggers carry a condition the machine has already resolved, so the table can name one next
state: `meeting.start` is `start_new` or `start_same` (the meeting the site already has),
`meeting.end` is `end_current` or `end_other`, `floor.grant`/`floor.revoke` are `floor_grant`/
`floor_revoke` for the current meeting and `floor_other` for any other, and the end of leaving (the
media stopped, or the leave timeout passed) is `left_meeting_goes_on` or `left_no_meeting`.

Within `in_meeting`, the floor (who may speak) has its own table in `floor.py`: this one only says
where floor inputs are taken at all.
"""

from __future__ import annotations

from dataclasses import dataclass

IDLE = "idle"
MEETING_AVAILABLE = "meeting_available"
JOINING = "joining"
IN_MEETING = "in_meeting"
LEAVING = "leaving"
STATES = (IDLE, MEETING_AVAILABLE, JOINING, IN_MEETING, LEAVING)

TRIGGERS = (
    "start_new", "start_same", "end_current", "end_other", "join", "leave", "selftest", "ping", "update",
    "press", "hold", "long_hold", "logs", "screenshot", "reboot", "reboot_forced",
    "media_ready", "media_degraded", "left_meeting_goes_on", "left_no_meeting",
    "floor_grant", "floor_revoke", "floor_other",
)


@dataclass(frozen=True)
class Step:
    """`target` is the next state (the same one for a step that stays); `action` names what the
    machine does on the way (see machine.ACTIONS); `refusal` makes it an invalid_state answer."""

    target: str
    action: str = ""
    refusal: str = ""

    @property
    def refused(self) -> bool:
        return bool(self.refusal)


class UnknownTransition(LookupError):
    pass


REBOOT_IN_MEETING = "the site is in a meeting; send force to reboot anyway"


def _stay(state: str, action: str = "") -> Step:
    return Step(state, action)


def _refuse(state: str, why: str) -> Step:
    return Step(state, refusal=why)


NOT_ANNOUNCED = "no meeting has been announced to this site"
BUSY_OTHER = "already in meeting {current!r}; end it first"
NOT_CURRENT = "meeting {requested!r} is not the current meeting (current: {current})"
NO_SELFTEST = "no self-test: not during a meeting; leave the meeting first"
STILL_LEAVING = "still leaving the previous meeting; try again in a moment"
FLOOR_NOT_JOINED = "not in meeting {requested!r}: the site has not joined it"
FLOOR_JOINING = "still joining meeting {requested!r}; the floor can be given once it has joined"
FLOOR_LEAVING = "leaving meeting {requested!r}"
FLOOR_OTHER = "not in meeting {requested!r} (current: {current})"

TRANSITIONS: dict[str, dict[str, Step]] = {
    IDLE: {
        "start_new": Step(MEETING_AVAILABLE, "announce"),
        "start_same": Step(MEETING_AVAILABLE, "announce"),
        "end_current": _refuse(IDLE, NOT_CURRENT),
        "end_other": _refuse(IDLE, NOT_CURRENT),
        "join": _refuse(IDLE, NOT_ANNOUNCED),
        "leave": _stay(IDLE),
        "selftest": _stay(IDLE, "selftest"),
        "ping": _stay(IDLE),
        # Taken in every state: the download waits for no meeting, the reboot for the idle state.
        "update": _stay(IDLE, "update"),
        "press": _stay(IDLE, "notice_no_meeting"),
        "hold": _stay(IDLE, "notice_nothing_to_leave"),
        # The technician's way in, no login, no laptop: hold the button 10 s while idle.
        "long_hold": _stay(IDLE, "selftest_interactive"),
        "logs": _stay(IDLE, "send_logs"),
        "screenshot": _stay(IDLE, "send_screenshot"),
        "reboot": _stay(IDLE, "reboot"),
        "reboot_forced": _stay(IDLE, "reboot"),
        "media_ready": _stay(IDLE),
        "media_degraded": _stay(IDLE),
        "left_meeting_goes_on": _stay(IDLE),
        "left_no_meeting": _stay(IDLE),
        "floor_grant": _refuse(IDLE, FLOOR_NOT_JOINED),
        "floor_revoke": _refuse(IDLE, FLOOR_NOT_JOINED),
        "floor_other": _refuse(IDLE, FLOOR_OTHER),
    },
    MEETING_AVAILABLE: {
        "start_new": Step(MEETING_AVAILABLE, "announce"),
        "start_same": Step(MEETING_AVAILABLE, "announce"),
        "end_current": Step(IDLE, "forget_meeting"),
        "end_other": _refuse(MEETING_AVAILABLE, NOT_CURRENT),
        "join": Step(JOINING, "begin_join"),
        "leave": _stay(MEETING_AVAILABLE),
        "selftest": _stay(MEETING_AVAILABLE, "selftest"),
        "ping": _stay(MEETING_AVAILABLE),
        "update": _stay(MEETING_AVAILABLE, "update"),
        "press": Step(JOINING, "begin_join"),
        "hold": _stay(MEETING_AVAILABLE, "notice_nothing_to_leave"),
        "long_hold": _stay(MEETING_AVAILABLE),
        "logs": _stay(MEETING_AVAILABLE, "send_logs"),
        "screenshot": _stay(MEETING_AVAILABLE, "send_screenshot"),
        "reboot": _stay(MEETING_AVAILABLE, "reboot"),
        "reboot_forced": _stay(MEETING_AVAILABLE, "reboot"),
        "media_ready": _stay(MEETING_AVAILABLE),
        "media_degraded": _stay(MEETING_AVAILABLE),
        "left_meeting_goes_on": _stay(MEETING_AVAILABLE),
        "left_no_meeting": _stay(MEETING_AVAILABLE),
        "floor_grant": _refuse(MEETING_AVAILABLE, FLOOR_NOT_JOINED),
        "floor_revoke": _refuse(MEETING_AVAILABLE, FLOOR_NOT_JOINED),
        "floor_other": _refuse(MEETING_AVAILABLE, FLOOR_OTHER),
    },
    JOINING: {
        "start_new": _refuse(JOINING, BUSY_OTHER),
        "start_same": _stay(JOINING),
        "end_current": Step(LEAVING, "forget_meeting_and_leave"),
        "end_other": _refuse(JOINING, NOT_CURRENT),
        "join": _stay(JOINING),
        "leave": Step(LEAVING, "begin_leave"),
        "selftest": _refuse(JOINING, NO_SELFTEST),
        "ping": _stay(JOINING),
        "update": _stay(JOINING, "update"),
        "press": _stay(JOINING, "notice_hold_to_leave"),
        "hold": Step(LEAVING, "begin_leave"),
        "long_hold": _stay(JOINING),
        "logs": _stay(JOINING, "send_logs"),
        "screenshot": _stay(JOINING, "send_screenshot"),
        "reboot": _refuse(JOINING, REBOOT_IN_MEETING),
        "reboot_forced": _stay(JOINING, "reboot"),
        "media_ready": Step(IN_MEETING, "enter_meeting"),
        "media_degraded": Step(IN_MEETING, "enter_meeting_degraded"),
        "left_meeting_goes_on": _stay(JOINING),
        "left_no_meeting": _stay(JOINING),
        "floor_grant": _refuse(JOINING, FLOOR_JOINING),
        "floor_revoke": _refuse(JOINING, FLOOR_JOINING),
        "floor_other": _refuse(JOINING, FLOOR_OTHER),
    },
    IN_MEETING: {
        "start_new": _refuse(IN_MEETING, BUSY_OTHER),
        "start_same": _stay(IN_MEETING),
        "end_current": Step(LEAVING, "forget_meeting_and_leave"),
        "end_other": _refuse(IN_MEETING, NOT_CURRENT),
        "join": _stay(IN_MEETING),
        "leave": Step(LEAVING, "begin_leave"),
        "selftest": _refuse(IN_MEETING, NO_SELFTEST),
        "ping": _stay(IN_MEETING),
        "update": _stay(IN_MEETING, "update"),
        "press": _stay(IN_MEETING, "floor_press"),  # ask for the floor, or withdraw: see floor.py
        "hold": Step(LEAVING, "begin_leave"),
        "long_hold": _stay(IN_MEETING),
        "logs": _stay(IN_MEETING, "send_logs"),
        "screenshot": _stay(IN_MEETING, "send_screenshot"),
        "reboot": _refuse(IN_MEETING, REBOOT_IN_MEETING),
        "reboot_forced": _stay(IN_MEETING, "reboot"),
        "media_ready": _stay(IN_MEETING),
        "media_degraded": _stay(IN_MEETING),
        "left_meeting_goes_on": _stay(IN_MEETING),
        "left_no_meeting": _stay(IN_MEETING),
        "floor_grant": _stay(IN_MEETING, "floor_grant"),
        "floor_revoke": _stay(IN_MEETING, "floor_revoke"),
        "floor_other": _refuse(IN_MEETING, FLOOR_OTHER),
    },
    LEAVING: {
        # Offered again as soon as the old meeting is left.
        "start_new": _stay(LEAVING, "queue_meeting"),
        "start_same": _stay(LEAVING, "queue_meeting"),
        "end_current": _stay(LEAVING, "forget_meeting"),
        "end_other": _refuse(LEAVING, NOT_CURRENT),
        "join": _refuse(LEAVING, STILL_LEAVING),
        "leave": _stay(LEAVING),
        "selftest": _refuse(LEAVING, NO_SELFTEST),
        "ping": _stay(LEAVING),
        "update": _stay(LEAVING, "update"),
        "press": _stay(LEAVING, "notice_please_wait"),
        "hold": _stay(LEAVING, "notice_nothing_to_leave"),
        "long_hold": _stay(LEAVING),
        "logs": _stay(LEAVING, "send_logs"),
        "screenshot": _stay(LEAVING, "send_screenshot"),
        "reboot": _refuse(LEAVING, REBOOT_IN_MEETING),
        "reboot_forced": _stay(LEAVING, "reboot"),
        "media_ready": _stay(LEAVING),
        "media_degraded": _stay(LEAVING),
        # The meeting goes on without this site: offer it again.
        "left_meeting_goes_on": Step(MEETING_AVAILABLE, "finish_leaving"),
        "left_no_meeting": Step(IDLE, "finish_leaving"),
        "floor_grant": _refuse(LEAVING, FLOOR_LEAVING),
        "floor_revoke": _refuse(LEAVING, FLOOR_LEAVING),
        "floor_other": _refuse(LEAVING, FLOOR_OTHER),
    },
}


def step(state: str, trigger: str) -> Step:
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        raise UnknownTransition(f"no transition for trigger {trigger!r} in state {state!r}") from None

