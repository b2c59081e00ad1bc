"""`appliance-console update keys|publish|releases|ring|start|status|stop`: remote updates for the operator."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from appliance.console import commands, records, releases, update_keys
from appliance.console import update_rollout as ro
from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.fleet import send_and_collect
from appliance.console.output import print_json, table
from appliance.core.clock import parse_rfc3339, rfc3339
from appliance.core.protocol import GROUPS, site_topic

DEFAULT_EXPIRES = "1h"  # the sites' broker sessions keep a queued command about that long anyway
DEFAULT_TIMEOUT = "30"
SITE_COLUMNS = [("site", "SITE"), ("stage", "RING"), ("running", "RUNNING"), ("other_slot", "OTHER SLOT"),
                ("phase", "PHASE"), ("progress", "%"), ("installed", "INSTALLED"), ("rebooted", "REBOOTED"),
                ("committed", "COMMITTED"), ("rolled_back", "ROLLED BACK"), ("outcome", "RESULT"), ("why", "DETAIL")]
RELEASE_COLUMNS = [("version", "VERSION"), ("size", "BYTES"), ("sha256_short", "SHA256"), ("format", "FORMAT"),
                   ("compatible", "COMPATIBLE"), ("url", "URL"), ("published", "PUBLISHED")]


# --- keys and releases ---------------------------------------------------------------------------------
def cmd_update_publish(ctx: Context, args: argparse.Namespace) -> int:
    url = releases.check_url(args.url)
    keyring = ctx.home.update_ca_cert
    update_keys.require_update_ca(ctx.home)
    bundle = releases.inspect(Path(args.bundle).resolve(), keyring)
    release, action = releases.record(ctx.store.db, bundle, url, Path(args.bundle).resolve())
    if ctx.json:
        print_json({"action": action, "release": release.as_dict()})
    else:
        print(f"{action}: {release.version} ({release.compatible}, {release.format} bundle, {release.size} bytes, "
              f"sha256 {release.sha256})")
        print(f"signed by {release.signer or '?'}; verified against {keyring}")
        if release.format.endswith(" delta"):
            store = Path(releases.delta_store(args.bundle)).name
            print(f"a delta bundle: each site fetches only the chunks its running version lacks, from "
                  f"{releases.delta_store(release.url)}/; put the bundle and the whole {store}/ directory there")
        print(f"sites download it from {release.url}: put the bundle there, then "
              f"`appliance-console update start {release.version} --ring all`")
    return 0


def cmd_update_releases(ctx: Context, args: argparse.Namespace) -> int:
    found = releases.releases(ctx.store.db)
    if ctx.json:
        print_json([release.as_dict() for release in found])
        return 0
    rows = [{**release.as_dict(), "sha256_short": release.sha256[:16], "published": rfc3339(release.published_at)}
            for release in found]
    print(table(rows, RELEASE_COLUMNS) + f"{len(rows)} release{'s' if len(rows) != 1 else ''}")
    return 0


# --- rings ------------------------------------------------------------------------------------------
def cmd_update_ring(ctx: Context, args: argparse.Namespace) -> int:
    if args.sites is not None:
        if args.ring not in ro.RINGS:
            raise BadInput(f"say which ring: `update ring {args.sites} canary` or `... main`")
        ids = [part.strip() for part in args.sites.split(",") if part.strip()]
        if not ids:
            raise BadInput("expected comma-separated site ids")
        changed = ctx.store.set_rings(ids, args.ring)
        if not ctx.json:
            print(f"{len(changed)} site{'s' if len(changed) != 1 else ''} moved to ring {args.ring}"
                  f"{': ' + ', '.join(changed) if changed else ''}")
    rings = ctx.store.rings()
    canary = sorted(site for site, ring in rings.items() if ring == ro.CANARY)
    if ctx.json:
        print_json({"canary": canary, "main": sorted(site for site, ring in rings.items() if ring == ro.MAIN)})
    else:
        print(f"canary ({len(canary)}): {', '.join(canary) or '-'}")
        print(f"main: {len(rings) - len(canary)} sites")
    return 0


# --- sending -----------------------------------------------------------------------------------------
def make_sender(ctx: Context, timeout: float, tables: list[str] | None = None) -> ro.Sender:
    """A function that signs the rollout's `update` command for some sites and publishes it; waits up to
    `timeout` for their acks (0: none; `collect` stores them as they come)."""
    def send(rollout: ro.Rollout, sites: list[str]) -> dict[str, dict[str, Any]]:
        release = releases.release(ctx.store.db, rollout.version)
        body = release.command_body(rollout.allow_downgrade)
        results: dict[str, dict[str, Any]] = {}
        with ctx.fleet() as fleet:
            for chunk in _chunks(sites):
                target = commands.Target("sites:" + ",".join(chunk), [site_topic(fleet.prefix, s, "cmd") for s in chunk],
                                         chunk, ctx.store.sites(chunk))
                signed = commands.build("update", body, target, rollout.expires_s, ctx.signing_key())
                sent_at = time.time()
                tracker = send_and_collect(fleet, signed, target.topics, chunk, timeout)
                ctx.store.record_command(signed, target.label)
                rows = tracker.rows()
                ctx.store.record_results(signed["id"], rows)
                if tables is not None:
                    tables.append(_ack_rows(rows))
                for row in rows:
                    ack = None if row["ok"] is None else {"ok": row["ok"], "error": row["error"],
                                                          "at": _time(tracker.answers[row["site"]].get("at"))}
                    results[row["site"]] = {"command_id": signed["id"], "sent_at": sent_at, "ack": ack}
                _keep_states(ctx, fleet.prefix, {site: tracker.states[site] for site in chunk if site in tracker.states})
        return results
    return send


def _time(text: Any) -> float | None:
    try:
        return parse_rfc3339(text)
    except (TypeError, ValueError):
        return None


def _keep_states(ctx: Context, prefix: str, states: dict[str, dict[str, Any]]) -> None:
    """The retained states read while sending, stored as `collect` stores them (the newer one wins), so the
    rollout sees where the sites are even when `collect` is not running."""
    if not states:
        return
    received = time.time()
    with ctx.store.transaction() as db:
        for site, state in states.items():
            records.ingest(db, site_topic(prefix, site, "state"), json.dumps(state).encode(), received, prefix)


def _chunks(sites: list[str]) -> list[list[str]]:
    """Split so each command's `to` stays well inside the devices' payload limit."""
    chunks: list[list[str]] = [[]]
    for site in sites:
        if chunks[-1] and len(",".join([*chunks[-1], site])) > commands.MAX_TO_BYTES:
            chunks.append([])
        chunks[-1].append(site)
    return [chunk for chunk in chunks if chunk]


def _ack_rows(rows: list[dict[str, Any]]) -> str:
    for row in rows:
        row["detail"] = f"{row['error'].get('code')}: {row['error'].get('message')}" if row["error"] else ""
    return table(rows, [("site", "SITE"), ("result", "RESULT"), ("state", "STATE"), ("latency_ms", "MS"),
                        ("detail", "DETAIL")])


def advance_active(ctx: Context, timeout: float = 0.0) -> list[tuple[ro.Rollout, ro.Decision]]:
    """What `collect` calls every few seconds: every active rollout one step further."""
    return ro.advance_all(ctx.store.db, make_sender(ctx, timeout))


# --- start, stop ---------------------------------------------------------------------------------------
def _members(ctx: Context, args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    chosen = [name for name in ("sites", "group", "ring") if getattr(args, name)]
    if len(chosen) != 1:
        raise BadInput("say which sites, one way: --sites a,b, --group all|kecamatan|desa or --ring canary|all")
    if args.ring:
        rings = ctx.store.rings()
        canary = {site: ro.CANARY for site, ring in rings.items() if ring == ro.CANARY}
        if not canary:
            raise BadInput("no site is in the canary ring: put a few in it first (`update ring SITES canary`, "
                           "or a `ring` column in `sites import`)")
        if args.ring == "canary":
            return "ring:canary", canary
        return "ring:all", {**{site: ro.MAIN for site in rings}, **canary}
    target = commands.resolve_target(ctx.store, args.sites, args.group, ctx.topic_prefix)
    return target.label, {site.id: ro.SELECTED for site in target.sites}


def cmd_update_start(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    release = releases.release(ctx.store.db, args.version)
    target, members = _members(ctx, args)
    if args.max_failures < 0:
        raise BadInput("--max-failures must be 0 or more")
    expires = commands.parse_duration(args.expires)
    if expires > commands.MAX_EXPIRY_S:
        raise BadInput(f"--expires must be at most {commands.MAX_EXPIRY_S // 3600} h (the devices' max_command_age_s)")
    timeout = commands.parse_duration(args.timeout, "--timeout")
    db = ctx.store.db
    for other in ro.rollouts(db, status=ro.ACTIVE):
        overlap = {row[0] for row in db.execute("SELECT site FROM rollout_sites WHERE rollout = ?", (other.id,))}
        if overlap & set(members):
            raise Refused(f"rollout {other.id} ({other.version}, {other.target}) is still active on "
                          f"{len(overlap & set(members))} of these sites: `appliance-console update stop "
                          f"{other.version}` first")
    now = time.time()
    with ctx.store.transaction():
        rollout_id = ro.create(db, release.version, target, members, args.allow_downgrade, args.max_failures,
                               expires, now)
    rollout = ro.rollouts(db)[0]
    assert rollout.id == rollout_id
    tables: list[str] = []
    try:
        decision = ro.advance(db, rollout, make_sender(ctx, timeout, tables), now)
        for _ in rollout.stages:  # sites already on this version finish a ring at once: the next may follow
            if not decision.send or decision.status != ro.ACTIVE:
                break
            decision = ro.advance(db, rollout, make_sender(ctx, timeout, tables))
    except Refused:
        with ctx.store.transaction():  # nothing reached the broker: no rollout either
            db.execute("DELETE FROM rollout_sites WHERE rollout = ?", (rollout_id,))
            db.execute("DELETE FROM rollouts WHERE id = ?", (rollout_id,))
        raise
    sites = ro.progress(db, rollout, time.time())
    sent = [site for site in sites if site.sent_at is not None]
    rings = sorted({site.stage for site in sent}, key=rollout.stages.index)
    refused = [site for site in sent if site.outcome == ro.FAILED]
    unanswered = [site for site in sent if site.outcome == ro.WAITING and site.detail.endswith("no answer yet")]
    halted = ro.rollouts(db, version=release.version)[0].status == ro.HALTED
    if ctx.json:
        print_json({"rollout": rollout_id, "version": release.version, "target": target, "stages": rollout.stages,
                    "decision": decision.as_dict(), "sites": [site.as_dict() for site in sites]})
    else:
        print(f"rollout {rollout_id}: {release.version} to {target}: sent to {len(sent)} site(s) "
              f"(ring {', '.join(rings)}); a ring halts it above {args.max_failures} failure(s)")
        print("".join(tables), end="")
        later = [stage for stage in rollout.stages if stage not in rings]
        if later and not halted:
            print(f"ring {later[0]} ({sum(1 for s in sites if s.stage == later[0])} sites) follows by itself once "
                  f"ring {rings[-1]} has committed (while `appliance-console collect` runs, or at `update status`)")
        if halted:
            print(f"halted: {decision.reason}", file=sys.stderr)
        print(f"follow it: appliance-console update status {release.version}")
        if refused or unanswered:
            print(f"{len(refused)} refused, {len(unanswered)} without answer yet", file=sys.stderr)
    return 1 if refused or unanswered or halted else 0


def cmd_update_stop(ctx: Context, args: argparse.Namespace) -> int:
    active = ro.rollouts(ctx.store.db, version=args.version, status=ro.ACTIVE)
    if not active:
        raise BadInput(f"no active rollout{' of ' + args.version if args.version else ''}")
    for rollout in active:
        ro.set_status(ctx.store.db, rollout.id, ro.STOPPED, "stopped by the operator", time.time())
    if ctx.json:
        print_json({"stopped": [rollout.id for rollout in active]})
    else:
        print(f"stopped rollout {', '.join(str(r.id) for r in active)}: nothing more is sent; sites already "
              "updating finish (each keeps the new version only if healthy)")
    return 0


# --- status ------------------------------------------------------------------------------------------
def _status_document(ctx: Context, rollout: ro.Rollout, decision: ro.Decision | None) -> dict[str, Any]:
    sites = sorted(ro.progress(ctx.store.db, rollout, time.time()),
                   key=lambda site: (rollout.stages.index(site.stage) if site.stage in rollout.stages else 9, site.site))
    return {
        "rollout": rollout.id, "version": rollout.version, "target": rollout.target, "status": rollout.status,
        "halted": rollout.status == ro.HALTED, "reason": rollout.reason, "started_at": rfc3339(rollout.started_at),
        "max_failures": rollout.max_failures, "stages": rollout.stages,
        "current_stage": decision.stage if decision and rollout.status == ro.ACTIVE else None,
        "counts": {stage: ro.counts(sites, stage) for stage in rollout.stages},
        "sites": [site.as_dict() for site in sites],
    }


def cmd_update_status(ctx: Context, args: argparse.Namespace) -> int:
    db = ctx.store.db
    problem = None
    for rollout in ro.rollouts(db, version=args.version, status=ro.ACTIVE):
        try:
            ro.advance(db, rollout, make_sender(ctx, 0.0))  # the same step `collect` takes
        except Refused as exc:
            problem = f"could not send the next ring of rollout {rollout.id}: {exc.message}"
    found = ro.rollouts(db, version=args.version)
    if not found:
        raise BadInput(f"no rollout{' of ' + args.version if args.version else ''} yet "
                       "(`appliance-console update start VERSION ...`)")
    rollout = found[0]
    decision = ro.decide(rollout.stages, ro.progress(db, rollout, time.time()), rollout.max_failures)
    document = _status_document(ctx, rollout, decision)
    if ctx.json:
        print_json({**document, "problem": problem})
    else:
        print(_status_text(document), end="")
    if problem:
        print(f"appliance-console: {problem}", file=sys.stderr)
    return 1 if problem else 0


def _status_text(document: dict[str, Any]) -> str:
    rows = []
    for site in document["sites"]:
        why = site["failure"] or site["detail"]
        rows.append({**site, "why": why, "progress": site["progress"] if site["phase"] else None})
    lines = [f"rollout {document['rollout']}: {document['version']} to {document['target']}, started "
             f"{document['started_at']}: {document['status']}"
             + (f" ({document['reason']})" if document["reason"] else "")]
    for stage, count in document["counts"].items():
        lines.append(f"ring {stage}: {count['committed']}/{count['sites']} committed, {count['updating']} updating, "
                     f"{count['waiting']} waiting, {count['failed']} failed (halts above {document['max_failures']})"
                     + (f", {count['not_sent']} not sent yet" if count["not_sent"] else ""))
    if document["current_stage"]:
        lines.append(f"now: ring {document['current_stage']}")
    return table(rows, SITE_COLUMNS) + "\n".join(lines) + "\n"


# --- the parser -----------------------------------------------------------------------------------
def add_commands(sub: Any, commands_parser: argparse._SubParsersAction) -> None:
    update = sub(commands_parser, "update", "remote updates: signing keys, releases, rollouts in rings")
    actions = update.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    keys = sub(actions, "keys", "create the fleet's update CA and signing certificate (once; shows them after)")
    keys.add_argument("--renew-signing", action="store_true",
                      help="issue a new signing certificate from the same CA (devices keep trusting it)")
    keys.set_defaults(handler=update_keys.cmd_update_keys)
    publish = sub(actions, "publish", "check a RAUC bundle against the update CA and record it as a release")
    publish.add_argument("bundle", metavar="BUNDLE")
    publish.add_argument("--url", required=True, help="where the sites will download it (http or https)")
    publish.set_defaults(handler=cmd_update_publish)
    listing = sub(actions, "releases", "the published releases")
    listing.set_defaults(handler=cmd_update_releases)
    ring = sub(actions, "ring", "show the update rings, or put sites in one (default ring: main)")
    ring.add_argument("sites", nargs="?", metavar="SITES", help="comma-separated site ids")
    ring.add_argument("ring", nargs="?", choices=ro.RINGS, metavar="canary|main")
    ring.set_defaults(handler=cmd_update_ring)
    start = sub(actions, "start", "send a published release to sites and follow the rollout")
    start.add_argument("version", metavar="VERSION")
    where = start.add_argument_group("which sites (one of)")
    where.add_argument("--sites", metavar="A,B", help="comma-separated site ids")
    where.add_argument("--group", choices=GROUPS, help="every site of a group")
    where.add_argument("--ring", choices=("canary", "all"),
                       help="canary: the canary ring only; all: the canary ring, then the main ring once it committed")
    start.add_argument("--allow-downgrade", action="store_true", help="let sites go back to an older version")
    start.add_argument("--max-failures", type=int, default=0, metavar="N",
                       help="failures a ring may have before the rollout halts (default 0: the first one halts it)")
    start.add_argument("--expires", default=DEFAULT_EXPIRES, metavar="DURATION",
                       help=f"how long each command stays valid (default {DEFAULT_EXPIRES}, at most 24h)")
    start.add_argument("--timeout", default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"how long to wait for the first ring's acks (default {DEFAULT_TIMEOUT} s)")
    start.set_defaults(handler=cmd_update_start)
    status = sub(actions, "status", "per site: version, phase, progress, committed or rolled back and why; "
                 "advances the rollout like `collect` does")
    status.add_argument("version", nargs="?", metavar="VERSION", help="default: the latest rollout")
    status.set_defaults(handler=cmd_update_status)
    stop = sub(actions, "stop", "stop active rollouts (of VERSION): send nothing more")
    stop.add_argument("version", nargs="?", metavar="VERSION")
    stop.set_defaults(handler=cmd_update_stop)
