"""`appliance-console serve [--bind ADDR:PORT] [--tls [--tls-name NAME]...]`: the dashboard on uvicorn.

`--tls` issues (once) a server certificate from the console's own CA (pki.py) for the names a
browser uses to reach the bound address (tls.py), kept in the home's `dashboard/` directory:
browsers that trust the console's CA (the same CA the sites trust for the broker) see a valid
certificate; nothing is fetched from outside.

The listening sockets are bound here, before uvicorn starts, so an address in use (or not this
machine's) is the CLI's exit 1 with the address named; uvicorn would exit 3 by itself.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from appliance.console.context import Context
from appliance.console.errors import BadInput, Refused
from appliance.console.home import atomic_write_many
from appliance.console.store import CONSOLE_USERNAME

DEFAULT_BIND = "127.0.0.1:8080"
BACKLOG = 2048  # uvicorn's default
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


def server_certificate(ctx: Context, names: list[str]) -> tuple[Path, Path]:
    """The dashboard's certificate and key for `names`, issued by the console's CA when missing or
    for other names."""
    from appliance.console.web import tls  # noqa: PLC0415

    directory = ctx.home.root / "dashboard"
    cert_path, key_path = directory / "dashboard.pem", directory / "dashboard-key.pem"
    if cert_path.exists() and key_path.exists() and set(tls.names_of(cert_path.read_bytes())) == set(names):
        return cert_path, key_path
    try:
        ca_cert, ca_key = ctx.home.ca_cert.read_bytes(), ctx.home.ca_key.read_bytes()
    except OSError as exc:
        raise Refused(f"--tls needs the console's CA ({ctx.home.ca_cert}): {exc.strerror or exc}") from None
    cert_pem, key_pem = tls.issue(names, ca_cert, ca_key)
    atomic_write_many({cert_path: (cert_pem, 0o644), key_path: (key_pem, 0o600)})
    return cert_path, key_path


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` stands for (as asyncio would bind them); Refused
    (exit 1) naming the address when one cannot be had."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Refused(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    refused: OSError | None = None
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen(BACKLOG)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:  # not available: that family is off here (asyncio skips it too)
                    raise
                sockets.pop().close()
                refused = exc
        if not sockets:
            raise refused or OSError(errno.EADDRNOTAVAIL, "no address to listen on")
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = "in use by another program" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        if exc.errno == errno.EADDRNOTAVAIL:
            why = "not an address of this machine"
        raise Refused(f"cannot listen on {where}: {why}") from None
    return sockets


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
    parser.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                        help="with --tls: one more name (DNS name or IP address) for the certificate, such as an "
                             "alias in the centre's DNS; repeatable")


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    host, port = parse_bind(args.bind)
    if args.tls_name and not args.tls:
        raise BadInput("--tls-name only goes with --tls")
    try:
        import uvicorn  # noqa: PLC0415

        from appliance.console.web.app import create_app  # noqa: PLC0415
    except ImportError as exc:
        raise Refused(f"the dashboard needs the console's web packages ({exc.name} is missing): "
                      "pip install 'rapat-appliance[console]' (or Debian's python3-starlette python3-uvicorn "
                      "python3-jinja2)") from None
    from appliance.console.web import tls  # noqa: PLC0415

    extra = [tls.check_name(name) for name in args.tls_name]
    dashboard = build_dashboard(ctx, tls=args.tls)
    ssl, names = {}, []
    if args.tls:
        names = tls.certificate_names(host, extra)
        cert, key = server_certificate(ctx, names)
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    sockets = listen(host, port)
    try:
        ctx.close()  # every request opens its own connection to the database, in its own thread
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        scheme = "https" if args.tls else "http"
        shown = socket.gethostname() if tls.is_wildcard(host) else f"[{host}]" if ":" in host else host
        everywhere = f", every address of this machine ({host or '0.0.0.0'})" if tls.is_wildcard(host) else ""
        print(f"appliance-console: dashboard on {scheme}://{shown}:{port}/{everywhere} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        if names:
            print(f"appliance-console: its certificate names {', '.join(names)}", file=sys.stderr, flush=True)
        config = uvicorn.Config(create_app(dashboard, str(STATIC)), host=host, port=port, log_level="warning",
                                access_log=False, lifespan="on", **ssl)
        server = uvicorn.Server(config)
        try:
            server.run(sockets=sockets)
        except SystemExit as exc:  # uvicorn's own start-up failure (exit 3): the CLI's codes are 0, 1 and 2
            raise Refused(f"the dashboard on {host}:{port} could not start (uvicorn exit {exc.code}); "
                          "see the lines above") from None
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:
        raise Refused(f"the dashboard on {host}:{port} stopped before it started; see the lines above")
    return 0
