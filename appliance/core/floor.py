"""The floor of a meeting as data: who may speak, and what each input does to it.

A joined site's floor is one of three statuses. In a moderated meeting it starts `listening`
(microphone muted); a short press asks for the floor (`requested`), another press withdraws it;
the centre's `floor.grant` makes it `speaking` (microphone live) and `floor.revoke` makes it
`listening` again. In an open meeting a site starts `speaking`; a revoke mutes it like "mute
participant", and the same press asks to be heard again.

Like `transitions.py`, the table is complete over FLOOR_STATUSES x FLOOR_TRIGGERS (a test checks
that), and each step names the event the centre gets, if any. Steps that change nothing send
nothing: a revoke of a site that is not speaking is answered `ok` (so `floor revoke --all` is
harmless) but publishes no event.
"""

from __future__ import annotations

from dataclasses import dataclass

MODERATED = "moderated"
OPEN = "open"
FLOOR_MODES = (MODERATED, OPEN)

LISTENING = "listening"
REQUESTED = "requested"
SPEAKING = "speaking"
FLOOR_STATUSES = (LISTENING, REQUESTED, SPEAKING)

# press: the panel's short press; grant/revoke: the centre's commands; broker_lost: the centre has
# been unreachable for longer than the grace period, so it could not take the floor back.
FLOOR_TRIGGERS = ("press", "grant", "revoke", "broker_lost")

REQUESTED_EVENT = "floor.requested"
CANCELLED_EVENT = "floor.cancelled"
GRANTED_EVENT = "floor.granted"
REVOKED_EVENT = "floor.revoked"
FLOOR_EVENTS = (REQUESTED_EVENT, CANCELLED_EVENT, GRANTED_EVENT, REVOKED_EVENT)


@dataclass(frozen=True)
class FloorStep:
    target: str
    event: str = ""  # published to the centre; "" = nothing changed that the centre needs to hear


FLOOR_TRANSITIONS: dict[str, dict[str, FloorStep]] = {
    LISTENING: {
        "press": FloorStep(REQUESTED, REQUESTED_EVENT),
        "grant": FloorStep(SPEAKING, GRANTED_EVENT),
        "revoke": FloorStep(LISTENING),
        "broker_lost": FloorStep(LISTENING),
    },
    REQUESTED: {
        "press": FloorStep(LISTENING, CANCELLED_EVENT),
        "grant": FloorStep(SPEAKING, GRANTED_EVENT),
        "revoke": FloorStep(LISTENING, REVOKED_EVENT),  # the request is cleared too
        "broker_lost": FloorStep(REQUESTED),  # a raised hand harms nobody: it waits for the broker
    },
    SPEAKING: {
        # The speaker is done: a press hands the floor back (and in an open meeting mutes the site).
        "press": FloorStep(LISTENING, CANCELLED_EVENT),
        "grant": FloorStep(SPEAKING),
        "revoke": FloorStep(LISTENING, REVOKED_EVENT),
        # Nobody at the centre could mute this site now: it must not stay live by accident.
        "broker_lost": FloorStep(LISTENING, REVOKED_EVENT),
    },
}


@dataclass(frozen=True)
class Floor:
    """One joined site's floor. `requested_at` is wall-clock time (for the state's RFC 3339 text);
    `unsent` marks a request made while the broker was away, published once it is back."""

    mode: str
    status: str
    requested_at: float | None = None
    unsent: bool = False

    @classmethod
    def joined(cls, mode: str) -> Floor:
        return cls(mode, SPEAKING if mode == OPEN else LISTENING)

    @property
    def microphone_live(self) -> bool:
        return self.status == SPEAKING


def floor_step(status: str, trigger: str) -> FloorStep:
    try:
        return FLOOR_TRANSITIONS[status][trigger]
    except KeyError:
        raise LookupError(f"no floor transition for trigger {trigger!r} in status {status!r}") from None
