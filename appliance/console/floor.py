"""The floor of a moderated meeting, at the centre: who speaks and whose hand is up.

- `FloorView`: the floor of every running meeting, from the sites' retained states; feed it every
  state message and it stays current.
- `plan_grant` / `plan_revoke`: which sites get revoked and which granted (`FloorPlan`), or
  `BadInput` saying why not (unknown site, offline, not in the meeting).
- `floor_cell`, `hands_line`, `describe_event`: the texts `status` and `watch` show.

Sending the commands is `floor_desk.py` (`FloorDesk`, also for a long-running process such as the
dashboard); the CLI's `floor list|grant|revoke` is `floor_cli.py`. The device's side of the floor
(statuses, events, the rules) is `appliance/core/floor.py`; its constants are used here, never
spelled again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.console.errors import BadInput
from appliance.console.fleet import decode
from appliance.console.output import printable
from appliance.core import floor as fl
from appliance.core.clock import parse_rfc3339, rfc3339
from appliance.core.protocol import COMMAND_ID, DEFAULT_TOPIC_PREFIX, parse_topic
from appliance.core.transitions import IN_MEETING

# Short on purpose: a grant that waited minutes in a broker queue must not unmute a site by surprise.
DEFAULT_EXPIRES = "30s"
DEFAULT_TIMEOUT = "10"
GRANT, REVOKE = "floor.grant", "floor.revoke"
ACTIONS = {GRANT: "grant", REVOKE: "revoke"}
# What each command leaves a site's floor at: the console waits (briefly) for the states to say so.
AFTER = {GRANT: fl.SPEAKING, REVOKE: fl.LISTENING}



def waited_text(seconds: float | None) -> str:
    """0:42, 12:05, 1:02:03."""
    if seconds is None:
        return "?"
    total = int(max(0.0, seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# --- the view ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteFloor:
    """One joined site's floor, as its retained state says."""

    site: str
    meeting_id: str
    title: str | None
    mode: str
    status: str
    requested_at: float | None = None  # epoch seconds, by the site's (NTP-synchronised) clock

    def waited_s(self, now: float) -> float | None:
        return max(0.0, now - self.requested_at) if self.requested_at is not None else None


def site_floor(site_id: str, state: Mapping[str, Any] | None) -> SiteFloor | None:
    """The floor in a retained state; None unless the site is online, in a meeting, with a floor."""
    if not state or state.get("online") is not True or state.get("state") != IN_MEETING:
        return None
    meeting, floor = state.get("meeting"), state.get("floor")
    if not isinstance(meeting, dict) or not isinstance(floor, dict):
        return None
    meeting_id = meeting.get("meeting_id")
    if not isinstance(meeting_id, str) or not COMMAND_ID.match(meeting_id):
        return None
    mode, status = floor.get("mode"), floor.get("status")
    if mode not in fl.FLOOR_MODES or status not in fl.FLOOR_STATUSES:
        return None
    requested_at = None
    if status == fl.REQUESTED:
        try:
            requested_at = parse_rfc3339(floor.get("requested_at"))
        except (TypeError, ValueError):
            requested_at = None  # shown as "?" and queued last: a hand without a time is still a hand
    title = meeting.get("title")
    return SiteFloor(site_id, meeting_id, title if isinstance(title, str) else None, mode, status, requested_at)


@dataclass(frozen=True)
class MeetingFloor:
    """The floor of one meeting: the speakers, the raised hands (oldest first), the listeners."""

    meeting_id: str
    title: str | None
    speaking: tuple[SiteFloor, ...]
    hands: tuple[SiteFloor, ...]
    listening: tuple[SiteFloor, ...]

    @property
    def sites(self) -> tuple[SiteFloor, ...]:
        return self.speaking + self.hands + self.listening

    @property
    def mode(self) -> str:
        modes = {site.mode for site in self.sites}
        return modes.pop() if len(modes) == 1 else "mixed"

    def document(self, now: float, names: Mapping[str, str] | None = None) -> dict[str, Any]:
        names = names or {}

        def entry(site: SiteFloor) -> dict[str, Any]:
            return {"site": site.site, "name": names.get(site.site)}

        return {
            "meeting_id": self.meeting_id, "title": self.title, "mode": self.mode,
            "speaking": [entry(site) for site in self.speaking],
            "hands": [{"position": index, **entry(site),
                       "requested_at": rfc3339(site.requested_at) if site.requested_at is not None else None,
                       "waited_s": _round(site.waited_s(now))}
                      for index, site in enumerate(self.hands, 1)],
            "listening": [site.site for site in self.listening],
            "counts": {"speaking": len(self.speaking), "hands": len(self.hands), "listening": len(self.listening)},
        }


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _hand_order(site: SiteFloor) -> tuple[bool, float, str]:
    return (site.requested_at is None, site.requested_at or 0.0, site.site)


class FloorView:
    """Every site's retained state and the floor it shows. Not thread-safe by itself (`FloorDesk` locks)."""

    def __init__(self, prefix: str = DEFAULT_TOPIC_PREFIX) -> None:
        self.prefix = prefix
        self.states: dict[str, dict[str, Any]] = {}
        self._floors: dict[str, SiteFloor] = {}

    @classmethod
    def from_states(cls, states: Mapping[str, Mapping[str, Any]], prefix: str = DEFAULT_TOPIC_PREFIX) -> FloorView:
        view = cls(prefix)
        for site_id, state in states.items():
            view.update(site_id, state)
        return view

    def update(self, site_id: str, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self.states.pop(site_id, None)
        else:
            self.states[site_id] = dict(state)
        floor = site_floor(site_id, state)
        if floor is None:
            self._floors.pop(site_id, None)
        else:
            self._floors[site_id] = floor

    def feed(self, topic: str, payload: bytes) -> str | None:
        """Take one message; the site whose retained state it was, else None."""
        parsed = parse_topic(topic, self.prefix)
        if not parsed or parsed[1] != "state":
            return None
        document = decode(payload)
        if document is None:
            return None
        self.update(parsed[0], document)
        return parsed[0]

    def site(self, site_id: str) -> SiteFloor | None:
        return self._floors.get(site_id)

    def meetings(self) -> list[MeetingFloor]:
        by_meeting: dict[str, list[SiteFloor]] = {}
        for floor in self._floors.values():
            by_meeting.setdefault(floor.meeting_id, []).append(floor)
        return [self._meeting(meeting_id, by_meeting[meeting_id]) for meeting_id in sorted(by_meeting)]

    def meeting(self, meeting_id: str) -> MeetingFloor | None:
        sites = [floor for floor in self._floors.values() if floor.meeting_id == meeting_id]
        return self._meeting(meeting_id, sites) if sites else None

    @staticmethod
    def _meeting(meeting_id: str, sites: list[SiteFloor]) -> MeetingFloor:
        def having(status: str) -> list[SiteFloor]:
            return sorted((site for site in sites if site.status == status), key=lambda site: site.site)

        titles = sorted({site.title for site in sites if site.title})
        return MeetingFloor(meeting_id, titles[0] if titles else None, tuple(having(fl.SPEAKING)),
                            tuple(sorted(having(fl.REQUESTED), key=_hand_order)), tuple(having(fl.LISTENING)))


def floor_status(view: FloorView, site_id: str) -> str | None:
    floor = view.site(site_id)
    return floor.status if floor else None


# --- plans ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FloorPlan:
    """What one moderator's action sends in one meeting: revokes and grants, published together."""

    meeting_id: str
    mode: str
    grant: tuple[str, ...] = ()
    revoke: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.grant and not self.revoke

    def document(self) -> dict[str, Any]:
        return {"meeting_id": self.meeting_id, "mode": self.mode, "grant": list(self.grant), "revoke": list(self.revoke)}


def joined_floor(view: FloorView, site_id: str, meeting_id: str | None = None) -> SiteFloor:
    """SITE's floor, or BadInput naming why there is none (never seen, offline, not in a meeting, another one)."""
    floor = view.site(site_id)
    state = view.states.get(site_id)
    if floor is None:
        if state is None:
            raise BadInput(f"{site_id} has never been seen on the broker (no retained state): is it provisioned and on?")
        if state.get("online") is not True:
            raise BadInput(f"{site_id} is offline")
        current = state.get("state")
        meeting = state.get("meeting") if isinstance(state.get("meeting"), dict) else {}
        if current == IN_MEETING:
            raise BadInput(f"{site_id} is in meeting {meeting.get('meeting_id')!r} but reports no floor "
                           "(its software predates moderated meetings)")
        if meeting.get("meeting_id"):
            raise BadInput(f"{site_id} has not joined meeting {meeting['meeting_id']!r} (state {current}): "
                           "the floor can be given once it has joined")
        raise BadInput(f"{site_id} is not in a meeting (state {current})")
    if meeting_id is not None and floor.meeting_id != meeting_id:
        raise BadInput(f"{site_id} is in meeting {floor.meeting_id!r}, not {meeting_id!r}")
    return floor


def plan_grant(view: FloorView, site_id: str, *, meeting_id: str | None = None, keep_others: bool = False) -> FloorPlan:
    """Give SITE the floor. In a moderated meeting every other speaker is revoked in the same go
    (unless `keep_others`); in an open meeting everyone speaks, so a grant only unmutes SITE."""
    floor = joined_floor(view, site_id, meeting_id)
    meeting = view.meeting(floor.meeting_id)
    assert meeting is not None
    revoke: tuple[str, ...] = ()
    if floor.mode == fl.MODERATED and not keep_others:
        revoke = tuple(site.site for site in meeting.speaking if site.site != site_id)
    return FloorPlan(floor.meeting_id, floor.mode, grant=(site_id,), revoke=revoke)


def plan_revoke(view: FloorView, site_id: str | None = None, *, meeting_id: str | None = None) -> FloorPlan:
    """Take the floor from SITE (its raised hand too), or with no SITE from every site of the meeting
    that speaks or has a hand up (in an open meeting: mute everyone)."""
    if site_id is not None:
        floor = joined_floor(view, site_id, meeting_id)
        return FloorPlan(floor.meeting_id, floor.mode, revoke=(site_id,))
    meeting = choose_meeting(view, meeting_id)
    return FloorPlan(meeting.meeting_id, meeting.mode,
                     revoke=tuple(site.site for site in meeting.speaking + meeting.hands))


def choose_meeting(view: FloorView, meeting_id: str | None) -> MeetingFloor:
    """The meeting named, or the only one running; BadInput when none, or several and none named."""
    meetings = view.meetings()
    if meeting_id is not None:
        for meeting in meetings:
            if meeting.meeting_id == meeting_id:
                return meeting
        running = ", ".join(meeting.meeting_id for meeting in meetings) or "none"
        raise BadInput(f"no site is in meeting {meeting_id!r} (meetings with joined sites: {running})")
    if not meetings:
        raise BadInput("no site is in a meeting")
    if len(meetings) > 1:
        raise BadInput(f"{len(meetings)} meetings are running ({', '.join(m.meeting_id for m in meetings)}): "
                       "say which with --meeting-id")
    return meetings[0]


# --- texts for status and watch ---------------------------------------------------------------------
def floor_cell(floor: Any, now: float) -> str:
    """The FLOOR column: speaking, listening, `hand 0:42`; blank outside a meeting."""
    if not isinstance(floor, dict) or floor.get("status") not in fl.FLOOR_STATUSES:
        return ""
    if floor["status"] != fl.REQUESTED:
        return floor["status"]
    try:
        return f"hand {waited_text(now - parse_rfc3339(floor.get('requested_at')))}"
    except (TypeError, ValueError):
        return "hand"


def hands_line(view: FloorView, now: float) -> str:
    """One line per meeting with raised hands, in order: `hands (m-1): 1. licin 1:12, 2. muncar 0:34`."""
    lines = []
    for meeting in view.meetings():
        if meeting.hands:
            hands = ", ".join(f"{index}. {site.site} {waited_text(site.waited_s(now))}"
                              for index, site in enumerate(meeting.hands, 1))
            lines.append(printable(f"hands ({meeting.meeting_id}): {hands}") + "\n")
    return "".join(lines)


def describe_event(site_id: str, event: Mapping[str, Any], view: FloorView) -> str | None:
    """A floor event as a sentence (`raised a hand (3 waiting)`); None for any other event."""
    kind = event.get("type")
    if kind not in fl.FLOOR_EVENTS:
        return None
    meeting = view.meeting(event["meeting_id"]) if isinstance(event.get("meeting_id"), str) else None
    # The event comes just before the site's new state: count the others, then this site by the event.
    waiting = sum(1 for site in (meeting.hands if meeting else ()) if site.site != site_id)
    waiting += 1 if event.get("status") == fl.REQUESTED else 0
    queue_text = f" ({waiting} waiting)"
    is_open, was, reason = event.get("mode") == fl.OPEN, event.get("was"), event.get("reason")
    if kind == fl.REQUESTED_EVENT:
        return "raised a hand" + (" while offline" if event.get("delayed") else "") + queue_text
    if kind == fl.GRANTED_EVENT:
        return "unmuted" if is_open else "was given the floor" + queue_text
    if kind == fl.CANCELLED_EVENT:
        if reason == "meeting_ended_offline":
            return "hand raised offline dropped: it left the meeting before the broker was back"
        if reason == "left_meeting":
            return "left the meeting, hand withdrawn" + queue_text
        if was == fl.SPEAKING:
            return "muted itself" if is_open else "handed the floor back"
        return "lowered its hand" + queue_text
    if reason == "broker_lost":
        return "muted itself: the broker was unreachable while it was speaking"
    if was == fl.REQUESTED:
        return "hand cleared by the moderator" + queue_text
    return "muted by the moderator" if is_open else "floor taken back by the moderator"
