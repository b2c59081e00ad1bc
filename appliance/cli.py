"""`appliance`: run the daemon, check a configuration, or talk to the running daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from typing import Any

from appliance import __version__
from appliance.config import (
    DEFAULT_FILES,
    REQUIRED,
    SCHEMA,
    SIMULATE_BACKENDS,
    SITE_FILE_KEYS,
    Config,
    ConfigError,
    config_files,
    file_problems,
    load,
)
from appliance.core.messages import DEFAULT_LANGUAGE, LANGUAGE_VARIABLE, LANGUAGES, language, problem_text, say

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG, EXIT_NO_DAEMON = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance", description="rapat-appliance: the meeting-room appliance daemon")
    parser.add_argument("--version", action="version", version=f"rapat-appliance {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def languages(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--lang", choices=LANGUAGES, default=None,
                         help=f"language of the texts a person reads: id (Bahasa Indonesia, the default) or en; "
                              f"default ${LANGUAGE_VARIABLE}, else id")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        languages(sub)
        sub.add_argument("--config", action="append", metavar="FILE",
                         help="configuration file; repeat to layer (later wins). Default: $APPLIANCE_CONFIG, "
                              "else /etc/appliance/appliance.toml then /var/lib/appliance/site.toml")
        return sub

    run = command("run", "run the daemon")
    run.add_argument("--simulate", action="store_true",
                     help="mock panel, test-pattern camera, headless display (unless the config names backends)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--wait-for-config", action="store_true",
                     help="with no valid configuration, show 'not provisioned' on the screen and LED and wait for "
                          "one instead of exiting 2 (always so under systemd, where NOTIFY_SOCKET is set)")
    check = commands.add_parser("check-config", help="validate configuration files without starting anything")
    check.add_argument("files", nargs="+", metavar="FILE")
    languages(check)
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
    args.lang = language(args.lang or os.environ.get(LANGUAGE_VARIABLE))
    if args.command == "run":
        return _run(args, sys.argv[1:] if argv is None else argv)
    if args.command == "check-config":
        return _check_config(args.files, args.lang)
    return _local(args)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from appliance.adapters.systemd import setup_logging  # noqa: PLC0415

    config, problems = _checked(args.config, args.simulate)
    if config is None:
        _print_problems(problems, args.lang)
        # Under systemd an exit would only be restarted into a reboot loop with a dark screen (issue 15).
        if not (args.wait_for_config or os.environ.get("NOTIFY_SOCKET")):
            return EXIT_CONFIG
    import logging  # noqa: PLC0415

    setup_logging(getattr(logging, args.log_level.upper()))
    if config is None:
        return _not_provisioned(args, argv, problems)
    from appliance.daemon import Daemon  # noqa: PLC0415 - keeps `appliance status` light

    try:
        return Daemon(config).run()
    except OSError as exc:
        logging.getLogger("appliance").error("cannot start: %s", exc)
        print(f"appliance: cannot start: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _checked(explicit: list[str] | None, simulate: bool) -> tuple[Config | None, list[str]]:
    """The configuration `appliance run` would use, or None and every problem with it."""
    paths, _ = config_files(explicit)
    try:
        config = load(paths, simulate=simulate)
    except ConfigError as exc:
        return None, exc.problems
    problems = file_problems(config)
    return (None, problems) if problems else (config, [])


def _not_provisioned(args: argparse.Namespace, argv: list[str], problems: list[str]) -> int:
    """Show "not provisioned" and wait; once the files are valid, become the daemon (same PID for systemd)."""
    import logging  # noqa: PLC0415

    from appliance.not_provisioned import NotProvisioned  # noqa: PLC0415

    paths, _ = config_files(args.config)
    try:
        valid = NotProvisioned(fallback_config(paths, args.simulate), problems,
                               lambda: _checked(args.config, args.simulate)).run()
    except OSError as exc:
        logging.getLogger("appliance").error("cannot start: %s", exc)
        print(f"appliance: cannot start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if valid is None:
        return EXIT_OK  # stopped while waiting
    # A fresh process for the site, so nothing of the waiting mode lingers (GPIO, libvlc, signal handlers).
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "appliance", *argv])
    return EXIT_REFUSED  # not reached


FALLBACK_SECTIONS = ("site", "panel", "display", "paths", "time")


def fallback_config(paths: list[str], simulate: bool = False, site_file: str = DEFAULT_FILES[1]) -> Config:
    """What the not-provisioned screen needs from files that are not valid as a whole: each key of
    [site], [panel], [display], [paths] and [time] that is valid on its own, the defaults for
    everything else. From the per-site file only what a site file may set (SITE_FILE_KEYS): it must
    not move the control socket or the state directory, even while the site is not provisioned."""
    values: dict[str, dict[str, object]] = {
        section: {key: spec.default for key, spec in keys.items() if spec.default is not REQUIRED}
        for section, keys in SCHEMA.items()}
    values["site"]["id"] = ""
    named: set[tuple[str, str]] = set()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError):
            continue
        from_site_file = os.path.abspath(path) == os.path.abspath(site_file)
        for section in FALLBACK_SECTIONS:
            table = document.get(section)
            if not isinstance(table, dict):
                continue
            allowed = SITE_FILE_KEYS.get(section, frozenset()) if from_site_file else None
            for key, value in table.items():
                if allowed is not None and key not in allowed:
                    continue
                spec = SCHEMA[section].get(key)
                if spec is None or not isinstance(value, spec.kind) or (isinstance(value, bool) and spec.kind is not bool):
                    continue
                if spec.check is None or spec.check(value) is None:
                    values[section][key] = value
                    named.add((section, key))
    if simulate:
        for (section, key), value in SIMULATE_BACKENDS.items():
            if (section, key) not in named:
                values[section][key] = value
    return Config(values, {}, list(paths))


def _check_config(files: list[str], lang: str = DEFAULT_LANGUAGE) -> int:
    try:
        config = load(files)
    except ConfigError as exc:
        _print_problems(exc.problems, lang)
        return EXIT_CONFIG
    for note in file_problems(config):
        print(say("cli.config_note", lang, note=problem_text(note, lang)))
    site = config["site"]
    print(say("cli.config_ok", lang, site=site["id"], kind=site["kind"], url=config["broker"]["url"]))
    return EXIT_OK


def _print_problems(problems: list[str], lang: str = DEFAULT_LANGUAGE) -> None:
    """One line per problem (file, key, what is wrong), in `lang`."""
    for problem in problems:
        print(problem_text(problem, lang), file=sys.stderr)


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
            print(say("selftest.press_prompt", args.lang), flush=True)
    path = socket_path(args.config)
    try:
        reply = request(path, body)
    except NoDaemon as exc:
        if args.command == "version":
            # Asking for the version is not a failure when the daemon is stopped: a technician reads
            # a non-zero exit or a line on stderr as "broken" (issue 14).
            print(f"installed: {__version__}\nrunning: - (no daemon answers on {path})")
            return EXIT_OK
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    if not reply.get("ok"):
        print(f"appliance: refused: {reply.get('error', 'no reason given')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.command == "status":
        _print_status(reply["status"], args.json)
    elif args.command == "version":
        site = f"site {reply['site']}" if reply.get("site") else "not provisioned"
        print(f"installed: {__version__}\nrunning: {reply['version']} ({site})")
    elif args.command == "selftest":
        return _print_selftest(reply, args.json)
    else:
        print(f"{reply.get('message', 'done')} (state: {reply.get('state')})")
    return EXIT_OK


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return
    if status.get("state") == "not_provisioned":
        rows = [("state", f"not_provisioned since {status['since']}"), ("screen", status["screen"]),
                ("led", status["led"]), ("version", status["version"]),
                *(("problem", problem) for problem in status.get("problems", []))]
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            print(f"{key.ljust(width)}  {value}")
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
        verdict = "selftest.outcome.passed" if outcome.get("ok") else "selftest.outcome.failed"
        print(f"=> {say(verdict, reply.get('language', DEFAULT_LANGUAGE))}")
    return EXIT_OK if outcome.get("ok") else EXIT_REFUSED
