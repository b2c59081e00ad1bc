"""`appliance-console logs SITE`, `screenshot SITE --out FILE`, `reboot SITE [--force]`: one site,
from the centre. The device answers `logs` and `screenshot` on `<prefix>/site/<site>/reply/<id>` in
chunks (core/replies.py reassembles them); `reboot` is refused in a meeting unless `--force`."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.adapters.storage import write_atomic
from appliance.console import commands
from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.output import print_json, printable
from appliance.core import replies
from appliance.core.clock import rfc3339
from appliance.core.protocol import parse_rfc3339, site_topic

FOLLOW_PERIOD_S = 5.0


def _one_site(ctx: Context, site: str) -> commands.Target:
    return commands.resolve_target(ctx.store, site, None, ctx.topic_prefix)


def _ask(ctx: Context, command_type: str, body: dict[str, Any], site: str, timeout: float,
         expires: str = "2m") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Send one command to one site; (its ack, the reassembled reply or None if it carries none)."""
    target = _one_site(ctx, site)
    signed = commands.build(command_type, body, target, commands.parse_duration(expires), ctx.signing_key())
    prefix = ctx.topic_prefix
    ack_topic, reply_topic = site_topic(prefix, site, "ack"), f"{site_topic(prefix, site, 'reply')}/{signed['id']}"
    wants_reply = command_type in ("logs", "screenshot")
    ack: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = []
    with ctx.fleet() as fleet:
        fleet.subscribe([ack_topic, reply_topic])
        fleet.sync()
        fleet.publish([(topic, json.dumps(signed, separators=(",", ":")).encode()) for topic in target.topics])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload, _, _ = fleet.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            message = json.loads(payload)
            if topic == ack_topic and message.get("id") == signed["id"]:
                ack = message
                if not ack.get("ok") or not wants_reply:
                    break
            elif topic == reply_topic:
                chunks.append(message)
                if ack and _complete(chunks):
                    break
    ctx.store.record_command(signed, target.label)
    if ack is None:
        raise Refused(f"{site} did not answer {command_type} within {timeout:g} s (offline? see `status`)")
    if not ack.get("ok"):
        error = ack.get("error") or {}
        raise Refused(f"{site} refused {command_type}: {error.get('code')}: {error.get('message')}")
    if not wants_reply:
        return ack, None
    if not _complete(chunks):
        raise Refused(f"{site} accepted {command_type} but its answer did not arrive whole within {timeout:g} s")
    answer = replies.reassemble(chunks)
    if "error" in answer:
        raise Refused(f"{site}: {answer['error']}")
    return ack, answer


def _complete(chunks: list[dict[str, Any]]) -> bool:
    try:
        replies.reassemble(chunks)
    except (KeyError, StopIteration, ValueError):
        return False
    return True


def since_time(text: str | None, now: float | None = None) -> str | None:
    """`--since`: a duration back from now (90s, 10m, 1h, 2d) or an RFC 3339 time; as RFC 3339 UTC."""
    if not text:
        return None
    try:
        return rfc3339(parse_rfc3339(text))
    except ValueError:
        pass
    seconds = commands.parse_duration(text, "--since")
    return rfc3339((time.time() if now is None else now) - seconds)


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    if not 1 <= args.lines <= replies.MAX_LOG_LINES:
        raise BadInput(f"--lines must be 1-{replies.MAX_LOG_LINES}")
    timeout = commands.parse_duration(args.timeout, "--timeout")
    since = since_time(args.since)
    seen: set[str] = set()
    while True:
        _, answer = _ask(ctx, "logs", {"since": since, "lines": args.lines}, args.site, timeout)
        assert answer is not None
        fresh = [line for line in answer["lines"] if line not in seen]
        if not answer["lines"] and not args.follow and not ctx.json:
            print(f"{args.site}: no journal lines{f' since {since}' if since else ''}", file=sys.stderr)
        if ctx.json and not args.follow:
            print_json({"site": args.site, "since": since, "lines": answer["lines"]})
        else:
            for line in fresh:
                print(printable(line), flush=True)
        if not args.follow:
            return 0
        seen.update(fresh)
        if fresh:  # the journal's own time stamp starts each line (short-iso-precise)
            since = fresh[-1].split(" ", 1)[0]
        time.sleep(FOLLOW_PERIOD_S)


def cmd_screenshot(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    out = Path(args.out)
    if not out.parent.exists():
        raise BadInput(f"--out {out}: the directory {out.parent} does not exist")
    _, answer = _ask(ctx, "screenshot", {}, args.site, commands.parse_duration(args.timeout, "--timeout"))
    assert answer is not None
    write_atomic(out, answer["data"], mode=0o644)
    result = {"site": args.site, "out": str(out), "bytes": len(answer["data"]),
              "content_type": answer["content_type"], "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if ctx.json:
        print_json(result)
    else:
        print(f"{args.site}: {result['bytes']} bytes ({result['content_type']}) written to {out}")
    return 0


def cmd_reboot(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    ack, _ = _ask(ctx, "reboot", {"force": bool(args.force)}, args.site,
                  commands.parse_duration(args.timeout, "--timeout"))
    if ctx.json:
        print_json({"site": args.site, "ack": ack})
    else:
        print(f"{args.site} is rebooting{' (forced, it was in a meeting)' if ack.get('state') != 'idle' else ''}; "
              "it reconnects in about a minute", file=sys.stdout)
    return 0


def add_commands(sub: Any, commands_group: argparse._SubParsersAction) -> None:
    """`logs`, `screenshot`, `reboot` on the console's parser (cli.py)."""
    logs = sub(commands_group, "logs", "fetch a site's journal (its appliance services), from the centre")
    logs.add_argument("site", metavar="SITE")
    logs.add_argument("--since", metavar="WHEN", help="how far back: 90s, 10m, 1h, 2d, or an RFC 3339 time")
    logs.add_argument("--lines", type=int, default=replies.DEFAULT_LOG_LINES,
                      help=f"at most this many lines (default {replies.DEFAULT_LOG_LINES}, at most {replies.MAX_LOG_LINES})")
    logs.add_argument("--follow", action="store_true", help=f"keep asking every {FOLLOW_PERIOD_S:g} s for new lines")
    logs.add_argument("--timeout", default="30", metavar="SECONDS", help="how long to wait for the answer")
    logs.set_defaults(handler=cmd_logs)
    shot = sub(commands_group, "screenshot", "get the picture a site's screen shows now (JPEG)")
    shot.add_argument("site", metavar="SITE")
    shot.add_argument("--out", required=True, metavar="FILE", help="where to write the JPEG")
    shot.add_argument("--timeout", default="30", metavar="SECONDS", help="how long to wait for the answer")
    shot.set_defaults(handler=cmd_screenshot)
    reboot = sub(commands_group, "reboot", "restart a site; refused while it is in a meeting unless --force")
    reboot.add_argument("site", metavar="SITE")
    reboot.add_argument("--force", action="store_true", help="reboot even in the middle of a meeting")
    reboot.add_argument("--timeout", default="30", metavar="SECONDS", help="how long to wait for the ack")
    reboot.set_defaults(handler=cmd_reboot)
