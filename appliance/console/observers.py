"""`appliance-console observers add|remove|list`: read-only broker logins for Home Assistant, Node-RED, Grafana.

An observer logs in on the sites' listener as `observer-<name>` (the listener forces the client id to the
login, so it can never take a site's id) and may read the state, telemetry, uptime and self-test topics of
every site (broker.OBSERVER_TOPICS), nothing else; it has no write rule, so every publish is refused.
The console keeps only the password's mosquitto hash (in `console.db`'s meta table): the password is
printed once, by `add`. The broker files are rewritten like after `sites add` (admin.refresh_broker_config);
the broker applies them at its next reload.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from appliance.console import admin
from appliance.console.broker import OBSERVER_TOPICS
from appliance.console.context import Context
from appliance.console.errors import BadInput
from appliance.console.output import print_json, table
from appliance.console.passwords import hash_password
from appliance.console.store import Store, new_password
from appliance.core.clock import rfc3339

META_KEY = "observers"  # {name: {"hash": mosquitto hash, "created_at": RFC 3339}}
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def username(name: str) -> str:
    """Never a site's login (`appliance-<site>`) nor the console's (`_console`)."""
    return f"observer-{name}"


def _observers(store: Store) -> dict[str, dict[str, Any]]:
    return store.get_meta(META_KEY) or {}


def observer_logins(store: Store) -> dict[str, str]:
    """observer login -> mosquitto hash, for the sites' password file and the ACL."""
    return {username(name): entry["hash"] for name, entry in _observers(store).items()}


def _check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise BadInput(f"observer name {name!r} must match ^[a-z0-9][a-z0-9-]{{0,31}}$ "
                       "(lower-case letters, digits, '-'), e.g. home-assistant")
    return name


def _broker_note(ctx: Context, updated: str | None) -> None:
    if updated:
        note = (f"broker configuration in {updated} updated; reload the broker (systemctl reload mosquitto, "
                "or kill -HUP its pid) to apply it")
    else:
        note = ("no broker configuration written yet: `appliance-console broker-config --out DIR` will include it")
    print(note, file=sys.stderr if ctx.json else sys.stdout)


def cmd_observers_add(ctx: Context, args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    ctx.require_init()
    store = ctx.store
    password = new_password()
    with store.transaction():
        observers = _observers(store)
        if name in observers:
            raise BadInput(f"observer {name!r} already exists; nothing changed (to get a new password: "
                           f"observers remove {name}, then observers add {name})")
        observers[name] = {"hash": hash_password(password), "created_at": rfc3339(time.time())}
        store.set_meta(META_KEY, observers)
    updated = admin.refresh_broker_config(ctx)
    if ctx.json:
        print_json({"username": username(name), "password": password})
    else:
        print(f"observer {name}: read-only login for the sites' listener ({store.get_meta('broker_url')})\n"
              f"  username: {username(name)}\n  password: {password}\n"
              "The password is shown only this once. It may read "
              f"{', '.join(f'{ctx.topic_prefix}/site/+/{leaf}' for leaf in OBSERVER_TOPICS)} and publish nothing.")
    _broker_note(ctx, updated)
    return 0


def cmd_observers_remove(ctx: Context, args: argparse.Namespace) -> int:
    name = args.name
    store = ctx.store
    with store.transaction():
        observers = _observers(store)
        if observers.pop(name, None) is None:
            raise BadInput(f"unknown observer: {name!r}; nothing changed (see `appliance-console observers list`)")
        store.set_meta(META_KEY, observers)
    updated = admin.refresh_broker_config(ctx)
    if ctx.json:
        print_json({"removed": username(name)})
    else:
        print(f"removed observer {name} ({username(name)}); after the reload its connections are closed")
    _broker_note(ctx, updated)
    return 0


def cmd_observers_list(ctx: Context, args: argparse.Namespace) -> int:
    rows = [{"name": name, "username": username(name), "created_at": entry.get("created_at")}
            for name, entry in sorted(_observers(ctx.store).items())]
    if ctx.json:
        print_json(rows)
    else:
        print(table(rows, [("name", "NAME"), ("username", "USERNAME"), ("created_at", "CREATED")])
              + f"{len(rows)} observer{'s' if len(rows) != 1 else ''}")
    return 0


def add_commands(sub, commands: argparse._SubParsersAction) -> None:  # noqa: ANN001
    parser = sub(commands, "observers", "read-only broker logins for Home Assistant, Node-RED or Grafana")
    actions = parser.add_subparsers(dest="observers_command", metavar="ACTION", required=True)
    add = sub(actions, "add", "create a login that may read every site's state, telemetry, uptime and self-test "
              "and publish nothing; prints its password once")
    add.add_argument("name", metavar="NAME", help="e.g. home-assistant (login observer-NAME)")
    add.set_defaults(handler=cmd_observers_add)
    remove = sub(actions, "remove", "delete an observer's login (its connections close at the broker's reload)")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=cmd_observers_remove)
    sub(actions, "list", "the observers' logins (never their passwords)").set_defaults(handler=cmd_observers_list)
