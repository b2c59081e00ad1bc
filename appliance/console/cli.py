"""`appliance-console`: argument parsing and exit codes (0 done, 1 refused or partly failed, 2 bad input)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.console import admin, collect, floor, floor_cli, observers, operate, operators, remote_cli, rollout, update_cli
from appliance.console.context import Context
from appliance.console.errors import ConsoleError
from appliance.console.home import ENV_HOME, Home, default_home
from appliance.console.selftest_cli import DEFAULT_TIMEOUT as SELFTEST_TIMEOUT
from appliance.console.selftest_cli import cmd_selftest
from appliance.console.site_cli import add_arguments as site_arguments
from appliance.console.site_cli import cmd_site
from appliance.console.watch import add_arguments as watch_arguments
from appliance.console.watch import cmd_watch
from appliance.console.web.serve import add_arguments as serve_arguments
from appliance.console.web.serve import cmd_serve
from appliance.core.floor import FLOOR_MODES, MODERATED
from appliance.core.messages import LANGUAGE_VARIABLE, LANGUAGES
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, GROUPS, SITE_KINDS

EPILOG = "Exit codes: 0 success, 1 refused or partly failed, 2 bad usage or bad input."


def _targeting(parser: argparse.ArgumentParser, timeout: str = "30") -> None:
    where = parser.add_argument_group("which sites")
    where.add_argument("--sites", metavar="A,B", help="comma-separated site ids")
    where.add_argument("--group", choices=GROUPS, help="every site of a group")
    parser.add_argument("--expires", default="10m", metavar="DURATION",
                        help="how long the command stays valid (default 10m; e.g. 90s, 2h)")
    parser.add_argument("--timeout", default=timeout, metavar="SECONDS",
                        help=f"how long to wait for answers (default {timeout} s)")


def _floor_commands(sub, commands: argparse._SubParsersAction) -> None:  # noqa: ANN001
    """`floor list|grant|revoke`: the moderator's side of a moderated meeting (appliance/console/floor.py)."""
    floor_parser = sub(commands, "floor", "who has the floor, raised hands; give or take the floor")
    actions = floor_parser.add_subparsers(dest="floor_command", metavar="ACTION", required=True)

    def sending(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--meeting-id", metavar="ID",
                            help="the meeting (default: the one SITE is in; with --all, the only one running)")
        parser.add_argument("--expires", default=floor.DEFAULT_EXPIRES, metavar="DURATION",
                            help=f"how long the commands stay valid (default {floor.DEFAULT_EXPIRES}: a grant "
                                 "delivered late must not unmute a site by surprise)")
        parser.add_argument("--timeout", default=floor.DEFAULT_TIMEOUT, metavar="SECONDS",
                            help=f"how long to wait for the acks (default {floor.DEFAULT_TIMEOUT} s)")

    listing = sub(actions, "list", "who speaks, the raised hands (oldest first, with their waiting time), "
                  "how many listen; one section per running meeting")
    listing.add_argument("--meeting-id", metavar="ID", help="only this meeting")
    listing.set_defaults(handler=floor_cli.cmd_floor_list)
    grant = sub(actions, "grant", "give SITE the floor; in a moderated meeting every other speaker is revoked "
                "in the same go (unless --keep-others). In an open meeting everyone speaks: a grant only "
                "unmutes SITE and revokes nobody")
    grant.add_argument("site", metavar="SITE")
    grant.add_argument("--keep-others", action="store_true", help="do not revoke the sites speaking now")
    sending(grant)
    grant.set_defaults(handler=floor_cli.cmd_floor_grant)
    revoke = sub(actions, "revoke", "take the floor (and a raised hand) from SITE, or with --all from every "
                 "site of the meeting that speaks or has a hand up (in an open meeting: mutes them)")
    revoke.add_argument("site", metavar="SITE", nargs="?")
    revoke.add_argument("--all", action="store_true", help="every site speaking or with a hand up")
    sending(revoke)
    revoke.set_defaults(handler=floor_cli.cmd_floor_revoke)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"the console's data directory (env {ENV_HOME}; default {default_home()})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")

    def sub(group: argparse._SubParsersAction, name: str, text: str, **kwargs: object) -> argparse.ArgumentParser:
        return group.add_parser(name, help=text, description=text, parents=[common], epilog=EPILOG, **kwargs)

    parser = argparse.ArgumentParser(
        prog="appliance-console", parents=[common], epilog=EPILOG,
        description="Provision the rapat appliances, secure their broker, and run meetings across the fleet.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub(commands, "init", "create the console's signing key, private CA, broker certificate and credentials")
    init.add_argument("--broker-url", required=True, metavar="URL", help="mqtts://HOST[:PORT] as the sites will reach it")
    init.add_argument("--console-port", type=int, metavar="PORT",
                      help="the broker's listener for this console only, on the same host (default: the URL's port + 1)")
    init.add_argument("--media-host", action="append", metavar="HOST",
                      help="a host the sites may stream from/to (repeatable); goes into provisioning files")
    init.add_argument("--topic-prefix", default=DEFAULT_TOPIC_PREFIX, metavar="PREFIX",
                      help="the fleet's MQTT topic prefix (default: %(default)s); fixed once chosen")
    init.set_defaults(handler=admin.cmd_init)

    sites = sub(commands, "sites", "list, import, add and remove sites; rotate a site's broker password")
    site_commands = sites.add_subparsers(dest="sites_command", metavar="ACTION", required=True)
    listing = sub(site_commands, "list", "list the registered sites")
    listing.add_argument("--kind", choices=SITE_KINDS)
    listing.set_defaults(handler=admin.cmd_sites_list)
    importing = sub(site_commands, "import", "add or update sites from a CSV file (id,name,kind[,distance_km])")
    importing.add_argument("file", metavar="FILE.csv")
    importing.set_defaults(handler=admin.cmd_sites_import)
    add = sub(site_commands, "add", "register one site")
    add.add_argument("id", help="lower-case id, e.g. kalibaru")
    add.add_argument("--name", required=True)
    add.add_argument("--kind", required=True, choices=SITE_KINDS)
    add.add_argument("--distance-km", metavar="KM", help="road distance to the regency office")
    add.set_defaults(handler=admin.cmd_sites_add)
    remove = sub(site_commands, "remove", "remove a site (its broker login stops working after a broker reload)")
    remove.add_argument("id")
    remove.set_defaults(handler=admin.cmd_sites_remove)
    rotate = sub(site_commands, "rotate-password", "give a site a new broker password")
    rotate.add_argument("id", metavar="SITE")
    rotate.set_defaults(handler=admin.cmd_sites_rotate)

    broker = sub(commands, "broker-config", "write the Mosquitto configuration (TLS, passwords, ACL, limits)")
    broker.add_argument("--out", required=True, metavar="DIR")
    broker.add_argument("--install-dir", metavar="DIR", help="where the broker will read the files (default: --out)")
    broker.add_argument("--bind", metavar="ADDRESS", help="listen on this address only (default: every interface)")
    broker.add_argument("--port", type=int, help="the sites' listen port (default: the broker URL's port)")
    broker.add_argument("--console-port", type=int, metavar="PORT",
                        help="the console's listen port (default: the port given to init, the URL's port + 1)")
    broker.add_argument("--run-as", metavar="USER", help="mosquitto's `user` (default: mosquitto)")
    broker.set_defaults(handler=admin.cmd_broker_config)

    provision = sub(commands, "provision", "write a site's provisioning file and CA for its SD card")
    provision.add_argument("site", nargs="?", metavar="SITE")
    provision.add_argument("--all", action="store_true", help="every site, one directory each")
    provision.add_argument("--out", metavar="DIR", help="where to write the files")
    provision.add_argument("--check", metavar="FILE",
                           help="instead: check a site file a technician sends in, as a device and this fleet would")
    provision.add_argument("--lang", choices=LANGUAGES, default=None,
                           help=f"language of --check's problems: id (Bahasa Indonesia, the default) or en; "
                                f"default ${LANGUAGE_VARIABLE}, else id")
    provision.add_argument("--media-host", action="append", metavar="HOST",
                           help="allowed media host (repeatable; default: those given to init)")
    provision.add_argument("--ca-path", default="/var/lib/appliance/ca.pem", metavar="PATH",
                           help="where the CA will be on the device (default /var/lib/appliance/ca.pem)")
    provision.set_defaults(handler=admin.cmd_provision)

    meeting = sub(commands, "meeting", "start or end a meeting, and other commands to sites")
    meeting_commands = meeting.add_subparsers(dest="meeting_command", metavar="ACTION", required=True)
    start = sub(meeting_commands, "start", "announce a meeting to sites and show their answers")
    start.add_argument("--title", required=True)
    start.add_argument("--program-url", required=True, metavar="URL", help="what the sites play")
    start.add_argument("--ingest-url", required=True, metavar="URL", help="where sites push their camera; {site} = site id")
    start.add_argument("--meeting-id", metavar="ID", help="default: from the title and time")
    start.add_argument("--auto-join", action="store_true", help="sites join without a button press")
    start.add_argument("--floor", choices=FLOOR_MODES, default=MODERATED,
                       help="moderated (default): sites listen, a button press raises a hand and `floor grant` "
                            "gives the floor; open: every joined site speaks")
    _targeting(start)
    start.set_defaults(handler=operate.cmd_meeting_start)
    end = sub(meeting_commands, "end", "end a meeting (default: the last one started, on the same sites)")
    end.add_argument("--meeting-id", metavar="ID")
    _targeting(end)
    end.set_defaults(handler=operate.cmd_meeting_end)
    for group in (commands, meeting_commands):
        for name, text in (("join", "make sites join the announced meeting"),
                           ("leave", "make sites leave the meeting"),
                           ("ping", "check which sites answer"),
                           ("selftest", "make sites run their self-test")):
            simple = sub(group, name, text)
            _targeting(simple, timeout={"ping": "10", "selftest": SELFTEST_TIMEOUT}.get(name, "30"))
            simple.set_defaults(handler=operate.cmd_simple, command_type=name)
            if name == "selftest":  # waits for each site's result and shows every check
                simple.description = ("make sites run their self-test, wait for each site's result and show every "
                                      "check; exit 0 only if every site passed")
                simple.set_defaults(handler=cmd_selftest)

    _floor_commands(sub, commands)

    status = sub(commands, "status", "every site from its retained state")
    status.set_defaults(handler=operate.cmd_status)
    watching = sub(commands, "watch", "the status, live, sized to the terminal, problems first (Ctrl-C to stop)")
    watch_arguments(watching)
    watching.set_defaults(handler=cmd_watch)
    one_site = sub(commands, "site", "one site whole: state, health, software, last self-test, telemetry, uptime, "
                   "recent events")
    site_arguments(one_site)
    one_site.set_defaults(handler=cmd_site)

    collector = sub(commands, "collect", "store every site message (state, acks, events, telemetry, uptime, "
                    "self-tests) in the console's database; runs until stopped")
    collector.add_argument("--name", default="main", metavar="NAME",
                           help="this collector's name: its broker session (default main); run more with other names")
    collector.add_argument("--duration", metavar="DURATION", help="stop after this long (e.g. 10m)")
    # Observers and metrics (issue 14): read-only broker logins; Prometheus /metrics from `collect`.
    collector.add_argument("--metrics", metavar="ADDR:PORT",
                           help="serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464)")
    observers.add_commands(sub, commands)
    collector.set_defaults(handler=collect.cmd_collect)

    update_cli.add_commands(sub, commands)
    remote_cli.add_commands(sub, commands)  # logs, screenshot, reboot: one site from the centre

    report = sub(commands, "rollout", "which sites are ready for the target and why not; travel avoided")
    rollout.add_arguments(report)
    report.set_defaults(handler=rollout.cmd_rollout)

    # The operator's live web dashboard (issue 13): its accounts, and the server (appliance/console/web/).
    operators.add_commands(sub, commands)
    serving = sub(commands, "serve", "the live web dashboard: fleet, meetings and the floor, rollout "
                  "(log in with an account from `operators add`)")
    serve_arguments(serving)
    serving.set_defaults(handler=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context(Home(Path(getattr(args, "home", None) or default_home())), json=getattr(args, "json", False))
    try:
        return args.handler(ctx, args)
    except ConsoleError as exc:
        print(f"appliance-console: {exc.message}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":
    raise SystemExit(main())
