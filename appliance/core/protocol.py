"""The MQTT protocol of the contract: topics, building commands, checking them in the contract's order.

Pure functions over bytes and values; the caller supplies the time, the replay memory and the key.
The device and the console (and every test and tool that speaks for either) use these, so the
topic layout and the command envelope are written down once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.core.clock import parse_rfc3339, rfc3339
from appliance.core.floor import FLOOR_MODES  # meeting.start's `floor`; absent = moderated
from appliance.core.replies import DEFAULT_LOG_LINES, MAX_LOG_LINES
from appliance.core.signing import sign_command, verify_command
from appliance.core.update import body_problem as update_body_problem
from appliance.core.urls import URL_SCHEMES, clean_url

PROTOCOL_VERSION = 1
DEFAULT_TOPIC_PREFIX = "rapat/v1"
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_CLOCK_SKEW_S = 300
COMMAND_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
GROUPS = ("all", "kecamatan", "desa")
SITE_KINDS = ("kecamatan", "desa", "other")
# A parsed command may nest this deep (the contract's own commands: 3 levels). Deeper is `bad_json`:
# re-encoding it for the signature check would run out of recursion.
MAX_JSON_DEPTH = 32
COMMAND_TYPES = ("meeting.start", "meeting.end", "join", "leave", "selftest", "ping", "floor.grant", "floor.revoke",
                 "update", "logs", "screenshot", "reboot")
MAX_TITLE_CHARS = 200
# The last level of a site's own topics, and which of them the device publishes retained.
DEVICE_TOPICS = ("state", "ack", "event", "telemetry", "uptime", "selftest", "reply")
RETAINED_DEVICE_TOPICS = ("state", "uptime", "selftest")

# Error codes, in the order the checks run (invalid_state is the state machine's).
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
UNSUPPORTED_VERSION = "unsupported_version"
BAD_SCHEMA = "bad_schema"
UNKNOWN_TYPE = "unknown_type"
BAD_SIGNATURE = "bad_signature"
NOT_FOR_THIS_SITE = "not_for_this_site"
EXPIRED = "expired"
REPLAYED = "replayed"
URL_NOT_ALLOWED = "url_not_allowed"
INVALID_STATE = "invalid_state"
RETAINED_COMMAND = "retained_command"
# The id of an accepted command could not be saved for replay protection: nothing was done.
STORAGE_FAILED = "storage_failed"


def site_topic(prefix: str, site: str, leaf: str) -> str:
    """`<prefix>/site/<site>/<leaf>`; a subscriber may pass the wildcards `+` (site) or `#` (leaf)."""
    return f"{prefix}/site/{site}/{leaf}"


def group_command_topic(prefix: str, group: str) -> str:
    return f"{prefix}/group/{group}/cmd"


def parse_topic(topic: str, prefix: str) -> tuple[str, str] | None:
    """(site, leaf) of a `<prefix>/site/<site>/<leaf>` topic; None for any other topic."""
    head = f"{prefix}/site/"
    if not topic.startswith(head):
        return None
    site, _, leaf = topic[len(head):].partition("/")
    return (site, leaf) if site and leaf and "/" not in leaf else None


def topic_prefix_problem(prefix: str) -> str | None:
    bad = [char for char in "#+" if char in prefix]
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or bad:
        return f"{prefix!r} must be a topic path without wildcards or leading/trailing '/'"
    return None


class Topics:
    """Every topic one site uses, built once from the prefix, the site id and its kind."""

    def __init__(self, prefix: str, site: str, kind: str) -> None:
        self.cmd = site_topic(prefix, site, "cmd")
        self.state = site_topic(prefix, site, "state")
        self.ack = site_topic(prefix, site, "ack")
        self.event = site_topic(prefix, site, "event")
        self.telemetry = site_topic(prefix, site, "telemetry")
        self.uptime = site_topic(prefix, site, "uptime")
        self.selftest = site_topic(prefix, site, "selftest")
        self.reply = site_topic(prefix, site, "reply")  # + "/<command id>": answers that carry data
        groups = ["all"] + ([kind] if kind in GROUPS else [])
        self.group_cmds = [group_command_topic(prefix, group) for group in groups]

    @property
    def subscriptions(self) -> list[str]:
        return [self.cmd, *self.group_cmds]


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    issued_at: float
    expires_at: float
    to: tuple[str, ...]
    body: dict[str, Any]


@dataclass(frozen=True)
class CommandPolicy:
    site_id: str
    public_key: Ed25519PublicKey | None
    allow_unsigned: bool = False
    allowed_media_hosts: tuple[str, ...] = ()
    max_command_age_s: float = 86400.0
    # Where update bundles may come from; None: the media hosts (`update.allowed_hosts` empty).
    allowed_update_hosts: tuple[str, ...] | None = None

    def hosts_for(self, key: str) -> tuple[str, ...]:
        if key == "url" and self.allowed_update_hosts is not None:
            return self.allowed_update_hosts
        return self.allowed_media_hosts


@dataclass
class CommandRejected(Exception):
    code: str
    message: str
    command_id: str | None = None
    command_type: str | None = None
    # Set when the command was signed, for this site, in date and not replayed (refused later than
    # that): its id is remembered anyway, so the same command cannot be tried again.
    command: Command | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def build_command(command_type: str, body: dict[str, Any], *, to: list[str], issued_at: float, ttl_s: float,
                  command_id: str | None = None, signing_key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """The contract's command envelope, valid for `ttl_s` seconds from `issued_at` (epoch seconds).

    Signed when given the console's key. Nothing is checked here, so tests can build the commands
    `check_command` must refuse; `command_id` defaults to a fresh random `cmd-<hex>`.
    """
    command = {
        "v": PROTOCOL_VERSION, "id": command_id or f"cmd-{os.urandom(6).hex()}", "type": command_type,
        "issued_at": rfc3339(issued_at), "expires_at": rfc3339(issued_at + ttl_s), "to": list(to), "body": body,
    }
    return sign_command(command, signing_key) if signing_key is not None else command


def identify(payload: bytes) -> tuple[str | None, str | None]:
    """Best-effort id and type of a payload, so even a rejected command's ack can name it."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, None
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    command_id = document.get("id")
    command_type = document.get("type")
    return (
        command_id if isinstance(command_id, str) and COMMAND_ID.match(command_id) else None,
        command_type if isinstance(command_type, str) and len(command_type) <= 64 and _encodable(command_type) else None,
    )


def _encodable(text: str) -> bool:
    """False for a string JSON can carry but UTF-8 cannot (a lone surrogate such as `"\\ud800"`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _nests_deeper_than(document: Any, limit: int) -> bool:
    """Whether lists/objects inside `document` go more than `limit` levels deep (no recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_command(
    payload: bytes,
    policy: CommandPolicy,
    now: float,
    already_accepted: Callable[[str], bool],
) -> Command:
    """Run every check of the contract up to `url_not_allowed`; raise CommandRejected on the first failure.

    The command returned carries, in its body, the media URLs as the device must use them: `{site}`
    replaced and rebuilt by `clean_url` (so `Meeting`, StartUplink and StartProgram never see the raw text).
    """
    command_id, command_type = identify(payload)

    def reject(code: str, message: str) -> CommandRejected:
        return CommandRejected(code, message, command_id, command_type)

    if len(payload) > MAX_PAYLOAD_BYTES:
        raise reject(TOO_LARGE, f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    try:
        document = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise reject(BAD_JSON, f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise reject(BAD_JSON, "payload nests too deeply") from None
    except ValueError as exc:
        raise reject(BAD_JSON, f"payload is not JSON ({exc})") from None
    # Counting brackets in the bytes is cheap; only a payload with that many brackets needs the walk.
    brackets = payload.count(b"[") + payload.count(b"{")
    if brackets > MAX_JSON_DEPTH and _nests_deeper_than(document, MAX_JSON_DEPTH):
        raise reject(BAD_JSON, f"payload nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(document, dict):
        raise reject(BAD_JSON, f"payload is a JSON {type(document).__name__}, not an object")
    version = document.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise reject(UNSUPPORTED_VERSION, f"v is {version!r}; this device speaks v={PROTOCOL_VERSION}")

    command = _check_envelope(document, reject)
    if command.type not in COMMAND_TYPES:
        raise reject(UNKNOWN_TYPE, f"type {command.type!r} is not one of {', '.join(COMMAND_TYPES)}")
    _check_body(command, reject)

    if not policy.allow_unsigned:
        if "sig" not in document:
            raise reject(BAD_SIGNATURE, "command is not signed")
        if policy.public_key is None or not verify_command(document, policy.public_key):
            raise reject(BAD_SIGNATURE, "signature does not verify with the console's public key")
    if "*" not in command.to and policy.site_id not in command.to:
        raise reject(NOT_FOR_THIS_SITE, f"site {policy.site_id!r} is not in 'to'")
    if command.issued_at > now + MAX_CLOCK_SKEW_S:
        raise reject(EXPIRED, f"issued_at is {command.issued_at - now:.0f} s in the future")
    if command.expires_at <= now:
        raise reject(EXPIRED, f"expired {now - command.expires_at:.0f} s ago")
    if command.expires_at - command.issued_at > policy.max_command_age_s:
        raise reject(EXPIRED, f"validity span exceeds max_command_age_s={policy.max_command_age_s:g}")
    if already_accepted(command.id):
        raise reject(REPLAYED, f"command id {command.id!r} was already accepted")
    cleaned = {}
    for key, url in media_urls(command, policy.site_id).items():
        try:
            cleaned[key] = clean_url(url, policy.hosts_for(key), URL_SCHEMES[key])
        except ValueError as exc:
            refusal = reject(URL_NOT_ALLOWED, f"body.{key}: {exc}")
            refusal.command = command
            raise refusal from None
    # What the device acts on is the URL rebuilt from its checked parts, never the raw text.
    return replace(command, body={**command.body, **cleaned}) if cleaned else command


def _check_envelope(document: dict[str, Any], reject: Callable[[str, str], CommandRejected]) -> Command:
    def need(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = document.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise reject(BAD_SCHEMA, f"{key}: expected {what}, got {_describe(value)}")
        return value

    command_id = need("id", str, "a string")
    if not COMMAND_ID.match(command_id):
        raise reject(BAD_SCHEMA, "id: expected 1-64 of [A-Za-z0-9_.:-]")
    command_type = need("type", str, "a string")
    times = {}
    for key in ("issued_at", "expires_at"):
        text = need(key, str, "an RFC 3339 time")
        try:
            times[key] = parse_rfc3339(text)
        except ValueError as exc:
            raise reject(BAD_SCHEMA, f"{key}: {text!r} is not an RFC 3339 time with offset ({exc})") from None
    to = need("to", list, "a list of site ids")
    if not to or not all(isinstance(item, str) and (item == "*" or SITE_ID.match(item)) for item in to):
        raise reject(BAD_SCHEMA, "to: expected a non-empty list of site ids or [\"*\"]")
    body = need("body", dict, "an object")
    if "sig" in document and not isinstance(document["sig"], str):
        raise reject(BAD_SCHEMA, f"sig: expected a base64 string, got {_describe(document['sig'])}")
    return Command(command_id, command_type, times["issued_at"], times["expires_at"], tuple(to), body)


def _check_body(command: Command, reject: Callable[[str, str], CommandRejected]) -> None:
    body = command.body
    required: dict[str, type] = {}
    if command.type == "meeting.start":
        required = {"meeting_id": str, "title": str, "program_url": str, "ingest_url": str}
        if "auto_join" in body and not isinstance(body["auto_join"], bool):
            raise reject(BAD_SCHEMA, f"body.auto_join: expected true or false, got {_describe(body['auto_join'])}")
        if "floor" in body and body["floor"] not in FLOOR_MODES:
            value = body["floor"]
            shown = repr(value[:20]) if isinstance(value, str) and value.isprintable() else _describe(value)
            raise reject(BAD_SCHEMA, f"body.floor: expected \"moderated\" or \"open\", got {shown}")
    elif command.type in ("meeting.end", "floor.grant", "floor.revoke"):
        required = {"meeting_id": str}
    elif command.type == "update":
        problem = update_body_problem(body)
        if problem:
            raise reject(BAD_SCHEMA, problem)
    elif command.type == "reboot" and not isinstance(body.get("force", False), bool):
        raise reject(BAD_SCHEMA, f"body.force: expected true or false, got {_describe(body.get('force'))}")
    elif command.type == "logs":
        lines = body.get("lines", DEFAULT_LOG_LINES)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 1 <= lines <= MAX_LOG_LINES:
            raise reject(BAD_SCHEMA, f"body.lines: expected a number of lines, 1..{MAX_LOG_LINES}")
        since = body.get("since")
        if since is not None:
            try:
                parse_rfc3339(since) if isinstance(since, str) else None
            except ValueError:
                since = 0
            if not isinstance(since, str):
                raise reject(BAD_SCHEMA, "body.since: expected an RFC 3339 time with offset, or null")
    for key, kind in required.items():
        if not isinstance(body.get(key), kind) or not body[key]:
            raise reject(BAD_SCHEMA, f"body.{key}: expected a non-empty string, got {_describe(body.get(key))}")
    if "meeting_id" in required and not COMMAND_ID.match(body["meeting_id"]):
        raise reject(BAD_SCHEMA, "body.meeting_id: expected 1-64 of [A-Za-z0-9_.:-]")
    if command.type == "meeting.start" and len(body["title"]) > MAX_TITLE_CHARS:
        raise reject(BAD_SCHEMA, f"body.title: longer than {MAX_TITLE_CHARS} characters")


def media_urls(command: Command, site_id: str) -> dict[str, str]:
    """The URLs a command carries (media, or an update's bundle), with `{site}` already replaced by
    this site's id in the ingest URL."""
    if command.type == "update":
        return {"url": command.body["url"]}
    if command.type != "meeting.start":
        return {}
    return {
        "program_url": command.body["program_url"],
        "ingest_url": command.body["ingest_url"].replace("{site}", site_id),
    }


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
