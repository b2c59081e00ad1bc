"""The dashboard's operator accounts: `appliance-console operators add|remove|passwd|list`.

Kept in `operators.json` in the console's home (mode 0600, written atomically: a crash leaves the
old file or the new one, never half of one). Passwords are hashed with scrypt (hashlib, RFC 7914)
and a per-account random salt; the clear password is never stored nor printed. Roles: `viewer`
(sees everything, changes nothing) and `operator` (also starts and ends meetings and moderates).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.console.errors import BadInput, Refused
from appliance.console.home import atomic_write
from appliance.console.output import print_json, table
from appliance.core.clock import rfc3339

VIEWER, OPERATOR = "viewer", "operator"
ROLES = (VIEWER, OPERATOR)
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # scrypt takes any length; a megabyte "password" is only a way to burn CPU
# scrypt cost: 2^15 x 8 x 1 takes ~50-100 ms and 32 MiB here, a few hundred ms on a Pi 4: slow for a
# password guesser, still fine for a person logging in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
FILE_NAME = "operators.json"


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    """`scrypt$N$r$p$salt$key` (standard base64); the parameters travel with the hash so they can grow."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=KEY_BYTES)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def check_password(password: str, hashed: str) -> bool:
    try:
        kind, n, r, p, salt, key = hashed.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=128 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


_dummy_hash: list[str] = []  # made on first use: importing the CLI must not cost a scrypt


def _dummy() -> str:
    """Checked against when the name is unknown, so a wrong name costs as long as a wrong password."""
    if not _dummy_hash:
        _dummy_hash.append(hash_password("not a password", salt=b"\0" * SALT_BYTES))
    return _dummy_hash[0]


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    password_hash: str
    created_at: str
    changed_at: str

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created_at": self.created_at, "password_changed_at": self.changed_at}


def check_name(name: str) -> None:
    if not NAME.match(name or ""):
        raise BadInput(f"operator name {name!r} must match ^[a-z0-9][a-z0-9._-]{{0,31}}$ (lower-case letters, digits, . _ -)")


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadInput(f"the password must have at least {MIN_PASSWORD_CHARS} characters; nothing changed")
    if len(password) > MAX_PASSWORD_CHARS:
        raise BadInput(f"the password must have at most {MAX_PASSWORD_CHARS} characters; nothing changed")


class OperatorBook:
    """The accounts file. Every change rereads the file first, so two CLI calls never undo each other's work."""

    def __init__(self, home_root: Path) -> None:
        self.path = Path(home_root) / FILE_NAME
        self._cache: tuple[float, int, dict[str, Operator]] | None = None

    def load(self) -> dict[str, Operator]:
        """name -> Operator; reread only when the file changed (the server asks on every request)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        if self._cache and self._cache[:2] == (stat.st_mtime, stat.st_size):
            return self._cache[2]
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            accounts = {entry["name"]: Operator(entry["name"], entry["role"], entry["password_hash"], entry["created_at"],
                                                entry["changed_at"]) for entry in document["operators"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Refused(f"cannot read {self.path}: {exc}; fix or remove it") from None
        self._cache = (stat.st_mtime, stat.st_size, accounts)
        return accounts

    def _save(self, accounts: dict[str, Operator]) -> None:
        document = {"v": 1, "operators": [
            {"name": op.name, "role": op.role, "password_hash": op.password_hash, "created_at": op.created_at,
             "changed_at": op.changed_at} for op in sorted(accounts.values(), key=lambda op: op.name)]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)
        self._cache = None

    def get(self, name: str) -> Operator | None:
        return self.load().get(name)

    def add(self, name: str, role: str, password: str) -> Operator:
        check_name(name)
        if role not in ROLES:
            raise BadInput(f"--role {role!r} must be one of {', '.join(ROLES)}")
        check_new_password(password)
        accounts = dict(self.load())
        if name in accounts:
            raise BadInput(f"operator {name!r} already exists; nothing changed (use `operators passwd`)")
        now = rfc3339(time.time())
        accounts[name] = Operator(name, role, hash_password(password), now, now)
        self._save(accounts)
        return accounts[name]

    def remove(self, name: str) -> None:
        accounts = dict(self.load())
        if accounts.pop(name, None) is None:
            raise BadInput(f"unknown operator: {name}; nothing changed")
        self._save(accounts)

    def passwd(self, name: str, password: str, role: str | None = None) -> Operator:
        accounts = dict(self.load())
        old = accounts.get(name)
        if old is None:
            raise BadInput(f"unknown operator: {name}; nothing changed")
        if role is not None and role not in ROLES:
            raise BadInput(f"--role {role!r} must be one of {', '.join(ROLES)}")
        check_new_password(password)
        accounts[name] = Operator(name, role or old.role, hash_password(password), old.created_at, rfc3339(time.time()))
        self._save(accounts)
        return accounts[name]

    def verify(self, name: str, password: str) -> Operator | None:
        """The operator when name and password match; None otherwise, in about the same time either way."""
        operator = self.load().get(name)
        ok = check_password(password, operator.password_hash if operator else _dummy())
        return operator if ok and operator else None


# --- the CLI ----------------------------------------------------------------------------------------
def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise BadInput("--password-stdin: standard input gave no password (one line expected)")
        return password
    if not sys.stdin.isatty():
        raise BadInput("no terminal to ask for the password: give it on standard input with --password-stdin")
    first = getpass.getpass(f"password for {args.name}: ")
    second = getpass.getpass("again: ")
    if first != second:
        raise BadInput("the two passwords differ; nothing changed")
    return first


def add_commands(sub, commands: argparse._SubParsersAction) -> None:  # noqa: ANN001
    parser = sub(commands, "operators", "the dashboard's accounts (`serve`): add, remove, change a password, list")
    actions = parser.add_subparsers(dest="operators_command", metavar="ACTION", required=True)
    add = sub(actions, "add", "create an account; the password is asked for (or read from stdin)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="viewer: sees everything, changes nothing; operator: also starts/ends meetings and moderates")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input (one line)")
    add.set_defaults(handler=cmd_add)
    remove = sub(actions, "remove", "delete an account (its open dashboard sessions end at their next request)")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=cmd_remove)
    passwd = sub(actions, "passwd", "set a new password (and optionally a new role)")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument("--role", choices=ROLES, help="also change the role")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input (one line)")
    passwd.set_defaults(handler=cmd_passwd)
    listing = sub(actions, "list", "the accounts and their roles (never the passwords)")
    listing.set_defaults(handler=cmd_list)


def _book(ctx: Any) -> OperatorBook:
    ctx.home.ensure()
    return OperatorBook(ctx.home.root)


def cmd_add(ctx: Any, args: argparse.Namespace) -> int:
    book = _book(ctx)
    check_name(args.name)
    if book.get(args.name):
        raise BadInput(f"operator {args.name!r} already exists; nothing changed (use `operators passwd`)")
    operator = book.add(args.name, args.role, _read_password(args))
    print_json(operator.public()) if ctx.json else print(f"operator {operator.name} added ({operator.role})")
    return 0


def cmd_remove(ctx: Any, args: argparse.Namespace) -> int:
    _book(ctx).remove(args.name)
    print_json({"removed": args.name}) if ctx.json else print(f"operator {args.name} removed")
    return 0


def cmd_passwd(ctx: Any, args: argparse.Namespace) -> int:
    book = _book(ctx)
    if book.get(args.name) is None:
        raise BadInput(f"unknown operator: {args.name}; nothing changed")
    operator = book.passwd(args.name, _read_password(args), args.role)
    print_json(operator.public()) if ctx.json else print(f"password of {operator.name} changed ({operator.role})")
    return 0


def cmd_list(ctx: Any, args: argparse.Namespace) -> int:
    rows = [op.public() for op in sorted(_book(ctx).load().values(), key=lambda op: op.name)]
    if ctx.json:
        print_json(rows)
    elif rows:
        print(table(rows, [("name", "NAME"), ("role", "ROLE"), ("created_at", "CREATED"),
                           ("password_changed_at", "PASSWORD CHANGED")]), end="")
    else:
        print("no operators yet: `appliance-console operators add NAME --role operator`")
    return 0
