"""The tables that route events, effects and transitions are complete, and a gap fails loudly."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from appliance.core import io, transitions
from appliance.core.machine import ACTIONS, EVENT_HANDLERS
from tests.core_helpers import make_core


def test_the_transition_table_covers_every_state_and_trigger_with_known_actions() -> None:
    for state in transitions.STATES:
        assert set(transitions.TRANSITIONS[state]) == set(transitions.TRIGGERS), state
        for trigger, step in transitions.TRANSITIONS[state].items():
            assert step.target in transitions.STATES, (state, trigger)
            assert not step.action or step.action in ACTIONS, (state, trigger, step.action)
            assert not (step.refused and step.action), (state, trigger)
            assert not step.refused or step.target == state, "a refusal never moves the machine"
    named = {step.action for row in transitions.TRANSITIONS.values() for step in row.values() if step.action}
    assert named == set(ACTIONS), "every action is used by the table and every used one exists"


def test_an_unknown_pair_is_an_error_not_a_no_op() -> None:
    with pytest.raises(transitions.UnknownTransition):
        transitions.step(transitions.IDLE, "teleport")


def test_the_core_has_a_handler_for_every_event_and_refuses_an_unknown_one() -> None:
    assert set(EVENT_HANDLERS) == set(io.EVENTS)

    @dataclass(frozen=True)
    class Teleported:
        pass

    core, _ = make_core()
    with pytest.raises(io.Unhandled, match="Teleported"):
        core.handle(Teleported())


def test_the_machine_walks_only_the_table(monkeypatch) -> None:  # noqa: ANN001
    """Break one row, and the behaviour follows the data (the code reads the table)."""
    from tests.core_helpers import announce, press  # noqa: PLC0415

    core, clock = make_core()
    announce(core)
    row = dict(transitions.TRANSITIONS[transitions.MEETING_AVAILABLE])
    row["press"] = transitions.Step(transitions.MEETING_AVAILABLE, "notice_please_wait")
    monkeypatch.setitem(transitions.TRANSITIONS, transitions.MEETING_AVAILABLE, row)
    press(core, clock)
    assert core.state == transitions.MEETING_AVAILABLE and core.status()["screen"] == "meeting_available"
