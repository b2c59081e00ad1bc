"""Standing the fleet up: init, sites, broker configuration and provisioning files."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.console import broker, pki, provision, sites_csv
from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.home import atomic_write_many
from appliance.console.output import print_json, table
from appliance.console.passwords import hash_password
from appliance.console.store import new_password
from appliance.core.clock import rfc3339
from appliance.core.messages import LANGUAGE_VARIABLE, Problem, language, problem, problem_text, say
from appliance.core.protocol import RETAINED_DEVICE_TOPICS, site_topic, topic_prefix_problem
from appliance.core.signing import generate_private_key, private_key_to_pem, public_key_to_base64

HOSTNAME_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){HOSTNAME_LABEL}(\.{HOSTNAME_LABEL})*$")


def parse_broker_url(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"--broker-url {url!r} is not a URL ({exc})") from None
    if parts.scheme != "mqtts":
        raise BadInput(f"--broker-url {url!r} must start with mqtts:// (the fleet talks to the broker over TLS only)")
    if not parts.hostname or not (HOSTNAME.match(parts.hostname) or _is_ip(parts.hostname)):
        raise BadInput(f"--broker-url {url!r} must name the broker's host, e.g. mqtts://broker.example:8883")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise BadInput(f"--broker-url {url!r} must be just mqtts://HOST[:PORT]")
    return parts.hostname, port or 8883


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_hosts(hosts: list[str], option: str = "--media-host") -> list[str]:
    bad = [host for host in hosts if not (HOSTNAME.match(host) or _is_ip(host))]
    if bad:
        raise BadInput(f"{option}: not a host name: {', '.join(bad)}")
    return sorted(dict.fromkeys(host.lower() for host in hosts))


def check_port(port: int, option: str) -> int:
    if not 1 <= port <= 65535:
        raise BadInput(f"{option} {port} must be between 1 and 65535")
    return port


def cmd_init(ctx: Context, args: argparse.Namespace) -> int:
    host, port = parse_broker_url(args.broker_url)
    console_port = check_port(port + 1 if args.console_port is None else args.console_port, "--console-port")
    if console_port == port:
        raise BadInput(f"--console-port {console_port} is the sites' port: the console needs a listener of its own")
    media_hosts = check_hosts(args.media_host or [])
    prefix = args.topic_prefix
    if problem := topic_prefix_problem(prefix):
        raise BadInput(f"--topic-prefix {problem}")
    home, store = ctx.home, ctx.store
    if store.get_meta("broker_url") or home.signing_key.exists():
        raise Refused(f"{home.root} is already initialised (broker {store.get_meta('broker_url')}); nothing changed. "
                      "Use another --home for a new fleet.")
    signing_key = generate_private_key()
    ca_pem, ca_key_pem = pki.make_ca()
    server_pem, server_key_pem = pki.make_server_cert(host, ca_pem, ca_key_pem)
    atomic_write_many({
        home.ca_key: (ca_key_pem, 0o600), home.ca_cert: (ca_pem, 0o644),
        home.server_key: (server_key_pem, 0o600), home.server_cert: (server_pem, 0o644),
        home.signing_key: (private_key_to_pem(signing_key), 0o600),
    })
    public_key = public_key_to_base64(signing_key.public_key())
    password = new_password()
    with store.transaction():
        store.set_meta("broker_url", f"mqtts://{host}:{port}")
        store.set_meta("console_url", f"mqtts://{host}:{console_port}")
        store.set_meta("console_public_key", public_key)
        store.set_meta("console_credentials", {"password": password, "hash": hash_password(password)})
        store.set_meta("media_hosts", media_hosts)
        store.set_meta("topic_prefix", prefix)
        store.set_meta("initialised_at", rfc3339(time.time()))
    result = {"home": str(home.root), "broker_url": f"mqtts://{host}:{port}",
              "console_url": f"mqtts://{host}:{console_port}", "console_public_key": public_key,
              "ca": str(home.ca_cert), "media_hosts": media_hosts, "topic_prefix": prefix}
    if ctx.json:
        print_json(result)
    else:
        print(f"Initialised {home.root}\n  broker:      {result['broker_url']} (sites), "
              f"{result['console_url']} (this console)\n  public key:  {public_key}\n"
              f"  CA:          {home.ca_cert}\n  topics:      {prefix}/...\n"
              f"  media hosts: {', '.join(media_hosts) or '(none yet: give provision --media-host)'}\n"
              "Next: appliance-console broker-config --out DIR, then provision SITE --out DIR.")
    return 0


# --- sites ----------------------------------------------------------------------------------------
SITE_COLUMNS = [("id", "ID"), ("name", "NAME"), ("kind", "KIND"), ("distance_km", "KM")]


def cmd_sites_list(ctx: Context, args: argparse.Namespace) -> int:
    sites = [site.as_dict() for site in ctx.store.sites(kind=args.kind)]
    if ctx.json:
        print_json(sites)
    else:
        print(table(sites, SITE_COLUMNS) + f"{len(sites)} site{'s' if len(sites) != 1 else ''}", end="\n")
    return 0


def cmd_sites_add(ctx: Context, args: argparse.Namespace) -> int:
    site = ctx.store.add_site(args.id, args.name, args.kind, args.distance_km)
    return _changed(ctx, {"added": [site.id]}, f"added site {site.id}")


def cmd_sites_remove(ctx: Context, args: argparse.Namespace) -> int:
    ctx.store.remove_site(args.id)
    code = _changed(ctx, {"removed": [args.id]}, f"removed site {args.id}")
    _clear_retained(ctx, args.id)
    return code


def _clear_retained(ctx: Context, site_id: str) -> None:
    """Without this the broker keeps the removed site's last state, and `status` would show it forever."""
    if not ctx.store.get_meta("broker_url"):
        return
    topics = [site_topic(ctx.topic_prefix, site_id, leaf) for leaf in RETAINED_DEVICE_TOPICS]
    try:
        with ctx.fleet(timeout=3.0) as fleet:
            fleet.clear_retained(topics)
    except Refused as exc:
        print(f"note: the broker still holds {site_id}'s retained messages ({exc}); clear them later with "
              f"`mosquitto_pub -r -n -q 1 -t TOPIC` for {', '.join(topics)}", file=sys.stderr)
        return
    if not ctx.json:
        print(f"cleared {site_id}'s retained state on the broker")


def cmd_sites_import(ctx: Context, args: argparse.Namespace) -> int:
    result = ctx.store.upsert_sites(sites_csv.parse(args.file))
    counts = ", ".join(f"{len(ids)} {what}" for what, ids in result.items())
    return _changed(ctx, result, f"imported {args.file}: {counts}")


def cmd_sites_rotate(ctx: Context, args: argparse.Namespace) -> int:
    ctx.store.rotate_password(args.id)
    return _changed(ctx, {"rotated": [args.id]},
                    f"new broker password for {args.id}; write a new provisioning file: "
                    f"appliance-console provision {args.id} --out DIR")


def _changed(ctx: Context, result: dict[str, Any], message: str) -> int:
    """After any change to the sites, bring the broker configuration written earlier up to date."""
    updated = refresh_broker_config(ctx)
    if ctx.json:
        print_json({**result, "broker_config_updated": updated})
    else:
        print(message)
        if updated:
            print(f"broker configuration in {updated} updated; reload the broker (systemctl reload mosquitto, "
                  "or kill -HUP its pid) to apply it")
    return 0


# --- broker and provisioning ----------------------------------------------------------------------
def refresh_broker_config(ctx: Context) -> str | None:
    saved = ctx.store.get_meta("broker_config")
    if not saved or not Path(saved["out"]).is_dir():
        return None
    # Settings saved before the console had a listener of its own: give it the console URL's port.
    saved.setdefault("console_port", urlsplit(ctx.console_url()).port)
    _write_broker(ctx, broker.BrokerSettings(**saved))
    return saved["out"]


def _write_broker(ctx: Context, settings: broker.BrokerSettings) -> list[Path]:
    home = ctx.home
    hashes = {user: hashed for user, (_, hashed) in ctx.store.credentials().items()}  # site id or _console
    from appliance.console.observers import observer_logins  # here: observers.py uses this module

    return broker.write(settings, ctx.store.sites(), hashes, home.ca_cert.read_bytes(),
                        home.server_cert.read_bytes(), home.server_key.read_bytes(), observer_logins(ctx.store))


def cmd_broker_config(ctx: Context, args: argparse.Namespace) -> int:
    url = ctx.require_init()
    out = Path(args.out).absolute()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {args.out}: exists and is not a directory")
    port = check_port(args.port, "--port") if args.port is not None else urlsplit(url).port or 8883
    console_port = (check_port(args.console_port, "--console-port") if args.console_port is not None
                    else urlsplit(ctx.console_url()).port)
    if console_port == port:
        raise BadInput(f"--console-port {console_port} is the sites' port: the console needs a listener of its own")
    if args.run_as and not re.match(r"^[a-z_][a-z0-9_-]*$", args.run_as):
        raise BadInput(f"--run-as {args.run_as!r} is not a user name")
    settings = broker.BrokerSettings(
        out=str(out), install_dir=args.install_dir or str(out), port=port,
        bind=args.bind or "", run_as=args.run_as or "", prefix=ctx.topic_prefix, console_port=console_port,
    )
    files = _write_broker(ctx, settings)
    with ctx.store.transaction():
        ctx.store.set_meta("broker_config", settings.as_dict())
    if ctx.json:
        print_json({"out": str(out), "files": [str(path) for path in files], "port": settings.port,
                    "console_port": settings.console_port})
    else:
        print(f"wrote {', '.join(path.name for path in files)} to {out}\n"
              f"listeners: {settings.port} for the sites, {settings.console_port} for this console\n"
              f"start the broker with: mosquitto -c {settings.install_dir}/mosquitto.conf")
        if not settings.run_as:
            print("note: mosquitto drops to user 'mosquitto' before reading passwd and the keys: "
                  "chown root:mosquitto passwd console-passwd server-key.pem (or give --run-as USER)")
    return 0


def check_site_file(ctx: Context, path: Path) -> list[Problem]:
    """What a device would refuse in this site file (the device's own checks), and what would keep it off
    this fleet (another broker, another console key, an unknown site, a stale password)."""
    from appliance import provision as device_provision  # the device's own checks, not a copy

    if not path.is_file():
        raise BadInput(f"--check {path}: no such file")
    ca = path.with_name(provision.CA_NAME)
    key = public_key_to_base64(ctx.signing_key().public_key())
    with tempfile.TemporaryDirectory() as scratch:
        # What an image built for this fleet carries (its --defaults): the console's key, signing on.
        base = Path(scratch, "appliance.toml")
        base.write_text(f'[security]\nconsole_public_key = "{key}"\nallow_unsigned = false\n', encoding="utf-8")
        _, problems = device_provision.validate(path, base, ca if ca.exists() else None, Path(provision.DEVICE_CA_PATH))
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return problems
    site_id = (document.get("site") or {}).get("id")
    broker = document.get("broker") or {}
    known = {site.id for site in ctx.store.sites()}
    if site_id and site_id not in known:
        problems.append(problem(str(path), "site.id", "console.unknown_site", site=site_id))
    url = ctx.require_init()
    if broker.get("url") and broker["url"] != url:
        problems.append(problem(str(path), "broker.url", "console.other_broker", given=broker["url"], ours=url))
    given = (document.get("security") or {}).get("console_public_key")
    if given and given != key:
        problems.append(problem(str(path), "security.console_public_key", "console.other_key"))
    if site_id in known and broker.get("password") and broker["password"] != ctx.store.site_password(site_id):
        problems.append(problem(str(path), "broker.password", "console.stale_password", site=site_id))
    return problems


def cmd_provision(ctx: Context, args: argparse.Namespace) -> int:
    if args.check:
        problems = check_site_file(ctx, Path(args.check))
        lang = language(args.lang or os.environ.get(LANGUAGE_VARIABLE))
        lines = [problem_text(wrong, lang) for wrong in problems]
        if ctx.json:  # `problems` as printed; `codes` (the catalogue's, appliance/core/messages.py) for machines
            print_json({"file": args.check, "ok": not problems, "problems": lines,
                        "codes": [getattr(wrong, "code", None) for wrong in problems]})
        elif problems:
            print("\n".join(lines), file=sys.stderr)
        else:
            print(say("cli.site_file_ok", lang, path=args.check))
        return 1 if problems else 0
    if not args.out:
        raise BadInput("give --out DIR (where to write the files), or --check FILE")
    url = ctx.require_init()
    store = ctx.store
    if bool(args.site) == bool(args.all):
        raise BadInput("name one SITE or give --all")
    media_hosts = check_hosts(args.media_host) if args.media_host else store.get_meta("media_hosts") or []
    if not media_hosts:
        raise Refused("no media hosts are known, and a device accepts meeting URLs only from its allowed_media_hosts: "
                      "give --media-host HOST (repeatable)")
    sites = store.sites() if args.all else store.sites([args.site])
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {args.out}: exists and is not a directory")
    ca_pem = ctx.home.ca_cert.read_bytes()
    # The key that signs the commands, read from console-key.pem: after a key change (docs/security.md,
    # "Rotating and revoking") new cards carry the new key, not the one recorded at init.
    public_key = public_key_to_base64(ctx.signing_key().public_key())
    # Render and check every file before writing any.
    rendered = [(site, provision.render(site, url, store.site_password(site.id), public_key, media_hosts,
                                        args.ca_path, ctx.topic_prefix)) for site in sites]
    written = []
    for site, text in rendered:
        written += provision.write(out / site.id if args.all else out, text, ca_pem)
    if ctx.json:
        print_json({"files": [str(path) for path in written], "media_hosts": media_hosts})
    else:
        print(f"wrote {len(written)} files under {out}; copy {provision.TOML_NAME} and {provision.CA_NAME} "
              "to the SD card's boot partition")
    return 0
