"""Replay protection that fails closed: write first, then act; forget nothing on a clock that lies."""

from __future__ import annotations

import json

from appliance.core import io
from tests.core_helpers import KEY, announce, command, make_core, receive

DAY = 86400.0


def synced(core) -> None:  # noqa: ANN001
    core.handle(io.HealthReport("clock", "synced"))


def remembered(effects: list) -> list[io.RememberCommand]:
    return [effect for effect in effects if isinstance(effect, io.RememberCommand)]


def test_an_id_survives_a_restart_and_is_forgotten_once_expired_on_a_synchronised_clock() -> None:
    core, clock = make_core()
    synced(core)
    _, effects = command(core, "ping", command_id="once", ttl_s=60)
    saved = {remembered(effects)[0].command_id: remembered(effects)[0].expires_at}
    restarted, _ = make_core(clock=clock, replay=saved)
    assert command(restarted, "ping", command_id="once", ttl_s=60)[0]["error"]["code"] == "replayed"
    clock.advance(120)
    synced(restarted)
    _, effects = command(restarted, "ping", command_id="later")
    assert remembered(effects)[0].forget == ("once",)  # the store drops it too
    assert "once" not in restarted.replay_memory()


def test_nothing_is_forgotten_while_the_clock_is_not_synchronised() -> None:
    core, clock = make_core()
    command(core, "ping", command_id="once", ttl_s=60)
    clock.advance(3600)
    _, effects = command(core, "ping", command_id="later")
    assert remembered(effects)[0].forget == () and "once" in core.replay_memory()


def test_a_wall_clock_jump_forwards_forgets_nothing_and_the_old_command_stays_replayed() -> None:
    core, clock = make_core()
    synced(core)
    original = KEY.command("ping", to=["*"], command_id="old", issued_at=clock.wall(), ttl_s=600)
    assert receive(core, json.dumps(original).encode())
    clock.jump_wall(2 * DAY)  # a bad NTP answer: the wall clock says every command has long expired
    command(core, "ping", command_id="during-the-jump")
    assert "old" in core.replay_memory()
    clock.jump_wall(-2 * DAY)  # corrected
    clock.advance(30)
    again = [e.payload for e in receive(core, json.dumps(original).encode()) if isinstance(e, io.Publish)]
    assert again[-1]["error"]["code"] == "replayed"


def test_a_restart_within_the_same_boot_during_a_clock_jump_forgets_nothing() -> None:
    core, clock = make_core()
    synced(core)
    original = KEY.command("ping", to=["*"], command_id="old", issued_at=clock.wall(), ttl_s=600)
    effects = receive(core, json.dumps(original).encode())
    saved = {e.command_id: (e.expires_at, e.held_until) for e in remembered(effects)}  # as the journal keeps it
    clock.jump_wall(2 * DAY)  # jumped, and the daemon restarts (same boot: the monotonic clock runs on)
    restarted, _ = make_core(clock=clock, replay=saved)
    synced(restarted)
    command(restarted, "ping", command_id="during-the-jump")
    assert "old" in restarted.replay_memory()
    clock.jump_wall(-2 * DAY)
    again = [e.payload for e in receive(restarted, json.dumps(original).encode()) if isinstance(e, io.Publish)]
    assert again[-1]["error"]["code"] == "replayed"


def test_a_signed_command_refused_for_the_state_is_remembered_and_cannot_come_back_later() -> None:
    core, _ = make_core()
    join = KEY.command("join", to=["*"], command_id="early-join", issued_at=core.clock.wall())
    first = receive(core, json.dumps(join).encode())
    assert remembered(first) and [e.payload for e in first if isinstance(e, io.Publish)][-1]["error"]["code"] == "invalid_state"
    announce(core)
    second = [e.payload for e in receive(core, json.dumps(join).encode()) if isinstance(e, io.Publish)]
    assert second[0]["error"]["code"] == "replayed" and core.state == "meeting_available"


def test_a_command_whose_id_cannot_be_saved_is_refused_and_not_carried_out() -> None:
    core, clock = make_core(camera=True, display=True)
    announce(core)
    join = KEY.command("join", to=["*"], command_id="join-1", issued_at=clock.wall())
    effects = receive(core, json.dumps(join).encode(), stored=False)
    acks = [e.payload for e in effects if isinstance(e, io.Publish) and e.topic.endswith("/ack")]
    assert len(acks) == 1 and acks[0]["error"]["code"] == "storage_failed" and acks[0]["id"] == "join-1"
    assert "No space left" in acks[0]["error"]["message"]
    assert core.state == "meeting_available" and not [e for e in effects if isinstance(e, io.StartUplink)]
    assert "join-1" not in core.replay_memory()  # not carried out, so it may be sent again
    retried = receive(core, json.dumps(join).encode())
    assert core.state == "joining" and [e for e in retried if isinstance(e, io.StartUplink)]


def test_a_signed_command_refused_for_its_urls_is_remembered_too() -> None:
    core, _ = make_core()
    body = {"meeting_id": "m9", "title": "Rapat", "program_url": "srt://127.0.0.1:9000",
            "ingest_url": "rtmp://elsewhere.example/live/{site}"}
    start = KEY.command("meeting.start", body, to=["*"], command_id="bad-host", issued_at=core.clock.wall())
    first = receive(core, json.dumps(start).encode())
    assert remembered(first) and "bad-host" in core.replay_memory()
    assert [e.payload for e in first if isinstance(e, io.Publish)][-1]["error"]["code"] == "url_not_allowed"
