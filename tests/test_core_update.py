"""Remote updates in the core, on the fake clock: which updates a site takes, when it downloads,
installs and reboots, and how a new version is kept or given back (core/update.py, update_flow.py)."""

from __future__ import annotations

import pytest

from appliance.core import io
from appliance.core import update as up
from appliance.core.transitions import IDLE, IN_MEETING
from tests.core_helpers import announce, command, events, make_core, published

SHA = "ab" * 32


def _body(version: str = "1.1.0", **extra) -> dict:  # noqa: ANN003
    return {"version": version, "url": "https://127.0.0.1/bundles/rapat-1.1.0.raucb", "sha256": SHA,
            "size": 123_456_789, **extra}


def _effects(effects: list, kind: type) -> list:
    return [effect for effect in effects if isinstance(effect, kind)]


def _software(core) -> dict:  # noqa: ANN001
    return core.status()["software"]


def _core(**settings):  # noqa: ANN003, ANN202
    settings.setdefault("version", "1.0.0")
    return make_core(camera=True, **settings)


def _installed(core) -> list:  # noqa: ANN001
    """Send the update and answer the download and the install as the updater would."""
    ack, effects = command(core, "update", _body())
    assert ack["ok"], ack
    effects += core.handle(io.UpdateStepDone("1.1.0", "download", True))
    effects += core.handle(io.UpdateStepDone("1.1.0", "install", True))
    return effects


def test_an_update_is_fetched_installed_and_rebooted_into_when_idle() -> None:
    core, _ = _core()
    ack, effects = command(core, "update", _body())
    assert ack["ok"] and ack["state"] == IDLE
    assert _effects(effects, io.FetchUpdate) == [io.FetchUpdate("1.1.0", _body()["url"], SHA, 123_456_789, False)]
    assert _software(core) == {"running": "1.0.0", "other_slot": None,
                               "update": {"version": "1.1.0", "phase": "downloading", "progress": 0}}
    core.handle(io.UpdateProgress("downloading", 40))
    assert _software(core)["update"]["progress"] == 40
    effects = core.handle(io.UpdateStepDone("1.1.0", "download", True))
    assert events(effects) == [up.DOWNLOADED_EVENT] and _effects(effects, io.InstallUpdate)
    effects = core.handle(io.UpdateStepDone("1.1.0", "install", True))
    assert events(effects) == [up.INSTALLED_EVENT]
    reboot = _effects(effects, io.RebootForUpdate)
    assert reboot and reboot[0].version == "1.1.0" and set(up.ALWAYS_REQUIRED_CHECKS) <= set(reboot[0].required_checks)
    assert _software(core)["other_slot"] == "1.1.0" and _software(core)["update"]["phase"] == up.REBOOTING
    state = published(effects, "/state")[-1]
    assert state["software"]["update"]["phase"] == up.REBOOTING
    assert core.status()["screen"] == "updating"  # "do not unplug the power" while it restarts


def test_nothing_heavy_starts_in_a_meeting_and_the_reboot_waits_for_the_end() -> None:
    core, _ = _core()
    assert announce(core)["ok"]
    command(core, "join")
    core.handle(io.MediaStatus("uplink", "live"))
    assert core.state == IN_MEETING
    ack, effects = command(core, "update", _body())
    assert ack["ok"] and not _effects(effects, io.FetchUpdate)  # accepted, waits for the meeting's end
    effects = command(core, "leave")[1]
    effects += core.handle(io.MediaStatus("uplink", "idle"))
    assert _effects(effects, io.FetchUpdate), "the download did not start after the meeting"
    core.handle(io.UpdateStepDone("1.1.0", "download", True))
    assert announce(core, "m2")["ok"]  # a meeting announced: the site is not idle any more
    effects = core.handle(io.UpdateStepDone("1.1.0", "install", True))
    assert not _effects(effects, io.RebootForUpdate) and _software(core)["update"]["phase"] == up.INSTALLED
    effects = command(core, "meeting.end", {"meeting_id": "m2"})[1]
    assert _effects(effects, io.RebootForUpdate)


def test_the_reboot_waits_for_the_maintenance_window() -> None:
    core, clock = _core(update_window="02:00-04:00", timezone="Asia/Jakarta")
    # FakeClock starts at 2026-11-27 09:00 WIB; the window opens at 02:00 WIB the next day.
    effects = _installed(core)
    assert not _effects(effects, io.RebootForUpdate)
    deadline = core.next_deadline()
    assert deadline is not None and deadline - clock.monotonic() <= 60  # it keeps looking
    clock.advance(16 * 3600 + 60)  # 01:01 WIB: still shut
    assert not _effects(core.tick(), io.RebootForUpdate)
    clock.advance(3600)  # 02:01 WIB
    assert _effects(core.tick(), io.RebootForUpdate)


@pytest.mark.parametrize(("body", "running", "why"), [
    (_body("1.0.0"), "1.0.0", "already running"),
    (_body("0.9.0"), "1.0.0", "older than the running 1.0.0"),
])
def test_a_site_refuses_what_it_runs_and_downgrades_unless_asked(body: dict, running: str, why: str) -> None:
    core, _ = _core(version=running)
    ack, effects = command(core, "update", body)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_state" and why in ack["error"]["message"]
    assert not _effects(effects, io.FetchUpdate)
    ack, effects = command(core, "update", {**body, "allow_downgrade": True})
    assert ack["ok"] is (why != "already running")


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"sha256": "AB" * 32}, "bad_schema", "body.sha256"),
    ({"size": 0}, "bad_schema", "body.size"),
    ({"version": "latest"}, "bad_schema", "body.version"),
    ({"url": "ftp://127.0.0.1/x.raucb"}, "url_not_allowed", "body.url"),
    ({"url": "https://evil.example/x.raucb"}, "url_not_allowed", "body.url"),
    ({"allow_downgrade": "yes"}, "bad_schema", "allow_downgrade"),
])
def test_a_bad_update_command_is_refused_naming_the_field(change: dict, code: str, words: str) -> None:
    core, _ = _core()
    ack, effects = command(core, "update", {**_body(), **change})
    assert ack["ok"] is False and ack["error"]["code"] == code and words in ack["error"]["message"], ack
    assert not _effects(effects, io.FetchUpdate)


def test_a_dedicated_host_list_for_updates_is_used_when_set() -> None:
    from appliance.core.protocol import CommandPolicy
    from tests.core_helpers import KEY, SITE

    policy = CommandPolicy(SITE, KEY.private.public_key(), False, ("127.0.0.1",), 86400, ("updates.example",))
    core, _ = _core(policy=policy)
    assert command(core, "update", _body())[0]["error"]["code"] == "url_not_allowed"
    ack = command(core, "update", _body(url="https://updates.example/rapat.raucb"))[0]
    assert ack["ok"], ack


def test_a_failed_step_tells_the_centre_why_and_clears_the_update() -> None:
    core, _ = _core()
    command(core, "update", _body())
    effects = core.handle(io.UpdateStepDone("1.1.0", "download", False, "sha256 mismatch: got 00.., expected ab.."))
    failed = [e for e in published(effects, "/event") if e["type"] == up.FAILED_EVENT]
    assert failed and failed[0]["step"] == "download" and "sha256 mismatch" in failed[0]["reason"]
    assert _software(core)["update"] is None
    assert command(core, "update", _body())[0]["ok"]  # the operator may send it again


def test_a_second_version_while_one_is_under_way_is_refused() -> None:
    core, _ = _core()
    command(core, "update", _body())
    ack = command(core, "update", _body("1.2.0"))[0]
    assert ack["error"]["code"] == "invalid_state" and "1.1.0 is already downloading" in ack["error"]["message"]
    assert command(core, "update", _body())[0]["ok"]  # the same one again: nothing new happens


def _trial(**settings):  # noqa: ANN003, ANN202
    """A core booted into 1.1.0 on trial (tryboot), as the updater reports it."""
    core, clock = make_core(camera=True, version="1.1.0", **settings)
    pending = {"version": "1.1.0", "required_checks": ["broker", "disk", "camera"]}
    effects = core.handle(io.SoftwareReport("1.1.0", "1.0.0", trying=True, pending=pending))
    return core, clock, effects


def _finish_selftest(core, camera_ok: bool) -> list:  # noqa: ANN001
    effects = []
    for effect in core.handle(io.PublishAcked(core.selftest.receipt)):
        effects.append(effect)
    for name in ("clock", "power", "disk", "audio"):
        effects += core.handle(io.SelftestCheckDone(name, {"ok": True, "detail": "fine"}))
    effects += core.handle(io.SelftestCheckDone("camera", {"ok": camera_ok, "detail": "frames" if camera_ok else "no frames"}))
    return effects


def test_a_healthy_trial_version_is_kept() -> None:
    core, _, effects = _trial()
    assert core.selftest is not None and not core.selftest.interactive  # the trial's own self-test
    assert _software(core)["update"]["phase"] == up.TRYING
    effects = _finish_selftest(core, camera_ok=True)
    assert _effects(effects, io.CommitUpdate) == [io.CommitUpdate("1.1.0")]
    effects = core.handle(io.UpdateStepDone("1.1.0", "commit", True))
    committed = [e for e in published(effects, "/event") if e["type"] == up.COMMITTED_EVENT]
    assert committed and committed[0]["version"] == "1.1.0" and committed[0]["previous"] == "1.0.0"
    assert _software(core) == {"running": "1.1.0", "other_slot": "1.0.0", "update": None}


def test_a_trial_version_that_fails_a_check_the_old_one_passed_is_given_back() -> None:
    core, _, _ = _trial()
    effects = _finish_selftest(core, camera_ok=False)
    back = _effects(effects, io.RollBackUpdate)
    assert back and "camera: no frames" in back[0].reason and not _effects(effects, io.CommitUpdate)


def test_a_trial_version_that_never_gets_healthy_is_given_back_but_never_mid_meeting() -> None:
    core, clock, _ = _trial(update_health_timeout_s=300)
    core.handle(io.BrokerDisconnected("gone"))
    core.selftest = None  # the trial's self-test is lost with the broker (as if abandoned)
    assert announce(core)["ok"] and command(core, "join")[0]["ok"]
    core.handle(io.MediaStatus("uplink", "live"))
    clock.advance(301)
    assert not _effects(core.tick(), io.RollBackUpdate)  # not in the middle of a meeting
    command(core, "leave")
    effects = core.handle(io.MediaStatus("uplink", "idle"))
    back = _effects(effects, io.RollBackUpdate)
    assert back and "not healthy within 300 s" in back[0].reason and "broker never connected" in back[0].reason


def test_the_old_version_tells_the_centre_that_the_new_one_was_given_back() -> None:
    core, _ = make_core(version="1.0.0")
    core.handle(io.BrokerDisconnected("starting"))
    pending = {"version": "1.1.0", "reason": "the new version failed its self-test (camera: no frames)"}
    effects = core.handle(io.SoftwareReport("1.0.0", "1.1.0", trying=False, pending=pending))
    assert not published(effects, "/event") and not _effects(effects, io.ForgetUpdate)  # not before it can be heard
    effects = core.handle(io.BrokerConnected())
    back = [e for e in published(effects, "/event") if e["type"] == up.ROLLED_BACK_EVENT]
    assert back and back[0]["version"] == "1.1.0" and "camera: no frames" in back[0]["reason"]
    assert _effects(effects, io.ForgetUpdate) == [io.ForgetUpdate("1.1.0")]
    # No reason kept: the new version never ran far enough to write one (the firmware went back).
    core, _ = make_core(version="1.0.0")
    effects = core.handle(io.SoftwareReport("1.0.0", "1.1.0", trying=False, pending={"version": "1.1.0"}))
    back = [e for e in published(effects, "/event") if e["type"] == up.ROLLED_BACK_EVENT]
    assert back and "firmware booted the previous version again" in back[0]["reason"]


def test_a_record_left_by_a_power_cut_after_the_commit_is_no_rollback() -> None:
    """Seen in the QEMU test: the power went right after the commit, before the record's removal
    reached the card; the committed version then read it at its next (normal) boot."""
    core, _ = make_core(version="1.1.0")
    pending = {"version": "1.1.0", "required_checks": ["broker", "disk"]}
    effects = core.handle(io.SoftwareReport("1.1.0", "1.0.0", trying=False, pending=pending))
    assert _effects(effects, io.ForgetUpdate) == [io.ForgetUpdate("1.1.0")]
    effects = core.handle(io.BrokerConnected())
    assert [e for e in published(effects, "/event") if e["type"] == up.ROLLED_BACK_EVENT] == []
    assert core.update is None


@pytest.mark.parametrize(("older", "newer"), [("1.2.0-rc1", "1.2.0"), ("1.9", "1.10"), ("2026.1.5", "2026.12.1")])
def test_versions_compare_as_people_read_them(older: str, newer: str) -> None:
    assert up.version_key(older) < up.version_key(newer)
