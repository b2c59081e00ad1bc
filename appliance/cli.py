"""`appliance`: run the daemon, check a configuration, or talk to the running daemon."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from typing import Any

from appliance import __version__
from appliance.config import SCHEMA, ConfigError, config_files, file_problems, load

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG, EXIT_NO_DAEMON = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance", description="rapat-appliance: the meeting-room appliance daemon")
    parser.add_argument("--version", action="version", version=f"rapat-appliance {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", action="append", metavar="FILE",
                         help="configuration file; repeat to layer (later wins). Default: $APPLIANCE_CONFIG, "
                              "else /etc/appliance/appliance.toml then /var/lib/appliance/site.toml")
        return sub

    run = command("run", "run the daemon")
    run.add_argument("--simulate", action="store_true",
                     help="mock panel, test-pattern camera, headless display (unless the config names backends)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = commands.add_parser("check-config", help="validate configuration files without starting anything")
    check.add_argument("files", nargs="+", metavar="FILE")
    status = command("status", "show the running daemon's state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    press = command("press", "press the panel button, exactly as a person would")
    press.add_argument("--hold", type=float, metavar="SECONDS", help="hold for this long (a hold of hold_s leaves)")
    command("join", "join the announced meeting")
    command("leave", "leave the meeting")
    command("version", "show the installed and the running version")
    selftest = command("selftest", "run the self-test; the result shows on screen and goes to the centre")
    selftest.add_argument("--interactive", action="store_true",
                          help="include the panel check: press the button within 30 s when the screen says so")
    selftest.add_argument("--json", action="store_true", help="machine-readable output")

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "check-config":
        return _check_config(args.files)
    return _local(args)


def _run(args: argparse.Namespace) -> int:
    from appliance.adapters.systemd import setup_logging  # noqa: PLC0415

    paths, _ = config_files(args.config)
    try:
        config = load(paths, simulate=args.simulate)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    problems = file_problems(config)
    if problems:
        _print_problems(problems)
        return EXIT_CONFIG
    import logging  # noqa: PLC0415

    setup_logging(getattr(logging, args.log_level.upper()))
    from appliance.daemon import Daemon  # noqa: PLC0415 - keeps `appliance status` light

    try:
        return Daemon(config).run()
    except OSError as exc:
        logging.getLogger("appliance").error("cannot start: %s", exc)
        print(f"appliance: cannot start: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _check_config(files: list[str]) -> int:
    try:
        config = load(files)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    for note in file_problems(config):
        print(f"note (checked again on the device): {note}")
    print(f"OK: site {config['site']['id']} ({config['site']['kind']}), broker {config['broker']['url']}")
    return EXIT_OK


def _print_problems(problems: list[str]) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


def socket_path(explicit: list[str] | None) -> str:
    """Where the daemon listens: from the configuration if it loads, else leniently from the raw files."""
    paths, _ = config_files(explicit)
    try:
        return load(paths)["paths"]["control_socket"]
    except ConfigError:
        pass
    found = SCHEMA["paths"]["control_socket"].default
    for path in paths:
        try:
            with open(path, "rb") as handle:
                value = tomllib.load(handle).get("paths", {}).get("control_socket")
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            continue
        if isinstance(value, str):
            found = value
    return found


def _local(args: argparse.Namespace) -> int:
    from appliance.adapters.control import NoDaemon, request  # noqa: PLC0415

    body: dict[str, Any] = {"cmd": args.command}
    if args.command == "press" and args.hold is not None:
        body["hold"] = args.hold
    if args.command == "selftest":
        body["interactive"] = args.interactive
        if args.interactive and not args.json:
            print("Tekan tombol panel sekarang (30 detik) / press the panel button now (30 s)", flush=True)
    path = socket_path(args.config)
    try:
        reply = request(path, body)
    except NoDaemon as exc:
        if args.command == "version":
            print(f"installed: {__version__}")
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    if not reply.get("ok"):
        print(f"appliance: refused: {reply.get('error', 'no reason given')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.command == "status":
        _print_status(reply["status"], args.json)
    elif args.command == "version":
        print(f"installed: {__version__}\nrunning: {reply['version']} (site {reply['site']})")
    elif args.command == "selftest":
        return _print_selftest(reply, args.json)
    else:
        print(f"{reply.get('message', 'done')} (state: {reply.get('state')})")
    return EXIT_OK


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return
    meeting = status.get("meeting") or {}
    rows = [
        ("site", status["site"]),
        ("state", f"{status['state']} since {status['since']}"),
        ("meeting", f"{meeting.get('title')} ({meeting.get('meeting_id')})" if meeting else "-"),
        ("broker", "connected" if status["broker_connected"] else "NOT connected"),
        ("led", status["led"]),
        ("screen", status["screen"]),
        *((f"health.{key}", value) for key, value in status["health"].items()),
        ("version", status["version"]),
        *(("site file", f"REJECTED: {problem}") for problem in status.get("provision_problems", [])[1:]),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


def _print_selftest(reply: dict[str, Any], as_json: bool) -> int:
    outcome = reply.get("result") or {}
    if as_json:
        print(json.dumps(outcome, indent=2, ensure_ascii=False))
    else:
        for line in reply.get("lines", []):
            print(line)
        passed = {"id": "LULUS", "en": "PASSED"}.get(reply.get("language", "id"), "LULUS")
        failed = {"id": "GAGAL", "en": "FAILED"}.get(reply.get("language", "id"), "GAGAL")
        print(f"=> {passed if outcome.get('ok') else failed}")
    return EXIT_OK if outcome.get("ok") else EXIT_REFUSED
