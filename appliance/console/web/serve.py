"""`appliance-console serve [--bind ADDR:PORT] [--tls]`: the dashboard on uvicorn.

`--tls` issues (once) a server certificate from the console's own CA (pki.py) for the bound host,
kept in the home's `dashboard/` directory: browsers that trust the console's CA (the same CA the
sites trust for the broker) see a valid certificate; nothing is fetched from outside.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.home import atomic_write_many
from appliance.console.store import CONSOLE_USERNAME

DEFAULT_BIND = "127.0.0.1:8080"
STATIC = Path(__file__).parent / "static"


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT`; BadInput saying what is wrong."""
    host, sep, port_text = (text or "").rpartition(":")
    if not sep or not host:
        raise BadInput(f"--bind {text!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadInput(f"--bind {text!r}: the port must be a number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" and not all(part.isalnum() or "-" in part for part in host.split(".")):
            raise BadInput(f"--bind {text!r}: {host!r} is neither an IP address nor a host name") from None
    return host, int(port_text)


def server_certificate(ctx: Context, host: str) -> tuple[Path, Path]:
    """The dashboard's certificate and key for `host`, issued by the console's CA when missing or for another host."""
    from cryptography import x509  # noqa: PLC0415

    from appliance.console import pki  # noqa: PLC0415

    directory = ctx.home.root / "dashboard"
    cert_path, key_path = directory / "dashboard.pem", directory / "dashboard-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.subject.rfc4514_string() == f"CN={host}":
            return cert_path, key_path
    try:
        ca_cert, ca_key = ctx.home.ca_cert.read_bytes(), ctx.home.ca_key.read_bytes()
    except OSError as exc:
        raise Refused(f"--tls needs the console's CA ({ctx.home.ca_cert}): {exc.strerror or exc}") from None
    cert_pem, key_pem = pki.make_server_cert(host, ca_cert, ca_key)
    atomic_write_many({cert_path: (cert_pem, 0o644), key_path: (key_pem, 0o600)})
    return cert_path, key_path


def build_dashboard(ctx: Context, *, tls: bool, clock: Any = None) -> Any:
    """Everything `serve` runs, from an initialised home (reads the keys and sites here, in this thread)."""
    from appliance.console.operators import OperatorBook  # noqa: PLC0415
    from appliance.console.watch import WatchBoard  # noqa: PLC0415
    from appliance.console.web.actions import Actions  # noqa: PLC0415
    from appliance.console.web.app import Dashboard  # noqa: PLC0415
    from appliance.console.web.auth import LoginLimiter, Sessions  # noqa: PLC0415
    from appliance.console.web.hub import BrokerLogin, LiveHub  # noqa: PLC0415
    from appliance.console.web.views import Views  # noqa: PLC0415

    ctx.require_init()
    credentials = ctx.store.get_meta("console_credentials")
    login = BrokerLogin(ctx.console_url(), CONSOLE_USERNAME, credentials["password"], str(ctx.home.ca_cert),
                        ctx.topic_prefix)
    hub = LiveHub(login, WatchBoard(ctx), ctx.signing_key())
    last = ctx.store.last_meeting()
    hub.last_started = (last or {}).get("body", {}).get("meeting_id")
    sites = {site.id: {"name": site.name, "kind": site.kind, "lat": site.lat, "lon": site.lon}
             for site in ctx.store.sites()}
    book = OperatorBook(ctx.home.root)
    if not book.load():
        print("appliance-console: no operator accounts yet: nobody can log in until "
              "`appliance-console operators add NAME --role operator`", file=sys.stderr)
    kwargs = {"clock": clock} if clock else {}
    return Dashboard(hub, Views(hub, sites), Actions(ctx.home, hub), book, Sessions(**kwargs), LoginLimiter(**kwargs),
                     tls, str(ctx.home.root))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="ADDRESS:PORT",
                        help=f"where to listen (default {DEFAULT_BIND}: this machine only)")
    parser.add_argument("--tls", action="store_true",
                        help="HTTPS with a certificate issued by the console's own CA (Secure cookies, HSTS)")


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    host, port = parse_bind(args.bind)
    try:
        import uvicorn  # noqa: PLC0415

        from appliance.console.web.app import create_app  # noqa: PLC0415
    except ImportError as exc:
        raise Refused(f"the dashboard needs the console's web packages ({exc.name} is missing): "
                      "pip install 'rapat-appliance[console]' (or Debian's python3-starlette python3-uvicorn "
                      "python3-jinja2)") from None
    dashboard = build_dashboard(ctx, tls=args.tls)
    ssl = {}
    if args.tls:
        cert, key = server_certificate(ctx, host)
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    ctx.close()  # every request opens its own connection to the database, in its own thread
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    scheme = "https" if args.tls else "http"
    print(f"appliance-console: dashboard on {scheme}://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(dashboard, str(STATIC)), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="on", **ssl)
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as exc:
        raise Refused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if not server.started:
        raise Refused(f"cannot listen on {host}:{port} (in use, or not an address of this machine)")
    return 0
