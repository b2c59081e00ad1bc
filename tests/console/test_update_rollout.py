"""The rollout's decisions (pure): where a site is with a version, when a ring follows, when a rollout halts."""

from __future__ import annotations

from pathlib import Path

from appliance.console import update_rollout as ro
from tests.console.conftest import Console

V = "1.3.0"
SENT = {"command_id": "cmd-1", "sent_at": 1000.0, "expires_s": 3600.0}
NOW = 1100.0


def state(running: str = "1.2.0", other: str | None = None, update: dict | None = None, online: bool = True) -> dict:
    return {"online": online, "state": "idle", "software": {"running": running, "other_slot": other, "update": update}}


def event(kind: str, at: str = "2026-10-07T03:00:00.000Z", **fields: object) -> dict:
    return {"type": f"update.{kind}", "version": V, "at": at, **fields}


def progress(site: str, stage: str, outcome: str) -> ro.SiteProgress:
    return ro.SiteProgress(site, stage, outcome, failure="rolled back: boom" if outcome == ro.FAILED else None)


def test_site_progress_follows_the_phases_to_committed() -> None:
    waiting = ro.site_progress(V, ro.CANARY, SENT, state(), [], {"ok": True, "error": None}, NOW)
    assert (waiting.outcome, waiting.detail) == (ro.WAITING, "accepted; waits until the site is idle")
    downloading = ro.site_progress(V, ro.CANARY, SENT, state(update={"version": V, "phase": "downloading",
                                                                     "progress": 42}), [], None, NOW)
    assert (downloading.outcome, downloading.phase, downloading.progress) == (ro.UPDATING, "downloading", 42)
    assert not downloading.downloaded and not downloading.installed
    installed = ro.site_progress(V, ro.CANARY, SENT, state(other=V, update={"version": V, "phase": "installed",
                                                                           "progress": 100}),
                                 [event("downloaded"), event("installed")], None, NOW)
    assert installed.downloaded and installed.installed and not installed.rebooted and installed.other_slot == V
    trying = ro.site_progress(V, ro.CANARY, SENT, state(running=V, other="1.2.0",
                                                        update={"version": V, "phase": "trying", "progress": 100}),
                              [], None, NOW)
    assert trying.outcome == ro.UPDATING and trying.rebooted and not trying.committed
    done = ro.site_progress(V, ro.CANARY, SENT, state(running=V, other="1.2.0"), [event("committed")], None, NOW)
    assert done.outcome == ro.COMMITTED and done.committed and done.rebooted and done.installed
    assert ro.site_progress(V, ro.MAIN, None, state(), [], None, NOW).outcome == ro.NOT_SENT


def test_site_progress_names_each_failure() -> None:
    back = ro.site_progress(V, ro.CANARY, SENT, state(other=V),
                            [event("installed"), event("rolled_back", at="2026-10-07T03:05:00.000Z",
                                                       reason="the new version failed its self-test (broker: down)")],
                            None, NOW)
    assert back.outcome == ro.FAILED and back.rolled_back and back.rebooted
    assert back.failure == "rolled back: the new version failed its self-test (broker: down)"
    failed = ro.site_progress(V, ro.CANARY, SENT, state(), [event("failed", step="download", reason="sha256 mismatch")],
                              None, NOW)
    assert failed.failure == "failed at download: sha256 mismatch" and not failed.rolled_back
    refused = ro.site_progress(V, ro.CANARY, SENT, state(), [],
                               {"ok": False, "error": {"code": "url_not_allowed", "message": "host not allowed"}}, NOW)
    assert (refused.outcome, refused.failure) == (ro.FAILED, "refused: url_not_allowed: host not allowed")
    silent = ro.site_progress(V, ro.CANARY, SENT, state(online=False), [], None, NOW)
    assert (silent.outcome, silent.detail) == (ro.WAITING, "offline: no answer yet")
    expired = ro.site_progress(V, ro.CANARY, SENT, state(online=False), [], None, 1000.0 + 3601)
    assert expired.outcome == ro.FAILED and "expired" in expired.failure
    # Refused as "already running", but it runs the version: done, not failed.
    already = ro.site_progress(V, ro.CANARY, SENT, state(running=V), [],
                               {"ok": False, "error": {"code": "invalid_state", "message": "already running"}}, NOW)
    assert already.outcome == ro.COMMITTED


def test_main_ring_follows_only_when_every_canary_committed() -> None:
    stages = ro.stages_of("ring:all")
    assert stages == [ro.CANARY, ro.MAIN]
    sites = [progress("a", ro.CANARY, ro.COMMITTED), progress("b", ro.CANARY, ro.UPDATING),
             progress("m1", ro.MAIN, ro.NOT_SENT), progress("m2", ro.MAIN, ro.NOT_SENT)]
    assert ro.decide(stages, sites, 0) == ro.Decision(ro.ACTIVE, ro.CANARY)
    sites[1] = progress("b", ro.CANARY, ro.COMMITTED)
    assert ro.decide(stages, sites, 0) == ro.Decision(ro.ACTIVE, ro.MAIN, send=["m1", "m2"])
    sites[2:] = [progress("m1", ro.MAIN, ro.COMMITTED), progress("m2", ro.MAIN, ro.WAITING)]
    assert ro.decide(stages, sites, 0).send == []
    sites[3] = progress("m2", ro.MAIN, ro.COMMITTED)
    assert ro.decide(stages, sites, 0) == ro.Decision(ro.DONE, None)
    assert ro.decide(ro.stages_of("ring:canary"), sites[:2], 0).status == ro.DONE


def test_a_single_canary_failure_halts_by_default_and_the_threshold_is_the_operators() -> None:
    stages = ro.stages_of("ring:all")
    sites = [progress("a", ro.CANARY, ro.FAILED), progress("b", ro.CANARY, ro.UPDATING),
             progress("m1", ro.MAIN, ro.NOT_SENT)]
    halted = ro.decide(stages, sites, 0)
    assert (halted.status, halted.stage, halted.send) == (ro.HALTED, ro.CANARY, [])
    assert halted.reason == "ring canary: 1 failed, more than the 0 allowed (a: rolled back: boom)"
    assert ro.decide(stages, sites, 1) == ro.Decision(ro.ACTIVE, ro.CANARY)  # one failure tolerated: wait for b
    sites[1] = progress("b", ro.CANARY, ro.COMMITTED)
    assert ro.decide(stages, sites, 1).send == ["m1"]
    sites[2] = progress("m1", ro.MAIN, ro.FAILED)
    sites.append(progress("m2", ro.MAIN, ro.FAILED))
    assert ro.decide(stages, sites, 1).reason.startswith("ring main: 2 failed, more than the 1 allowed")
    assert ro.counts(sites, ro.MAIN) == {"sites": 2, "committed": 0, "failed": 2, "updating": 0, "waiting": 0,
                                         "not_sent": 0}


def test_rings_from_the_sites_csv_and_update_ring(console: Console, tmp_path: Path) -> None:
    sheet = tmp_path / "desa.csv"
    sheet.write_text("id,name,kind,ring\nlicin,Kecamatan Licin,kecamatan,Canary\nsumberarum,Desa Sumberarum,desa,canari\n")
    bad = console.run("sites", "import", str(sheet))
    assert bad.code == 2 and "line 3: ring 'canari' must be one of canary, main" in bad.err
    assert console.ok("update", "ring", "--json").json["canary"] == [], "nothing imported from a bad sheet"
    sheet.write_text("id,name,kind,ring\nlicin,Kecamatan Licin,kecamatan,Canary\nsumberarum,Desa Sumberarum,desa,\n")
    imported = console.ok("sites", "import", str(sheet), "--json").json
    assert imported["updated"] == ["licin"] and imported["added"] == ["sumberarum"]
    assert console.ok("update", "ring", "--json").json["canary"] == ["licin"]
    unknown = console.run("update", "ring", "kalibaru,nowhere", "canary")
    assert unknown.code == 2 and "nowhere" in unknown.err
    assert "1 site moved to ring canary: kalibaru" in console.ok("update", "ring", "kalibaru", "canary").out
    console.ok("sites", "remove", "licin")
    rings = console.ok("update", "ring", "--json").json
    assert rings["canary"] == ["kalibaru"] and "sumberarum" in rings["main"]
