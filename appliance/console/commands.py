"""Building the contract's commands: ids, expiry, media URLs, targets."""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.console.errors import BadInput
from appliance.console.store import Site, Store
from appliance.core.protocol import (
    COMMAND_ID,
    DEFAULT_TOPIC_PREFIX,
    GROUPS,
    SITE_ID,
    build_command,
    group_command_topic,
    site_topic,
)
from appliance.core.urls import MEDIA_SCHEMES, url_problem

MAX_EXPIRY_S = 86400  # the device's default security.max_command_age_s
MAX_TO_BYTES = 8 * 1024  # keep an explicit `to` list well inside the device's 16 KiB payload limit
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str, what: str = "--expires") -> float:
    match = _DURATION.match(text or "")
    if not match:
        raise BadInput(f"{what} {text!r} is not a duration (examples: 90s, 10m, 2h)")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds <= 0:
        raise BadInput(f"{what} {text!r} must be longer than zero")
    return seconds


def new_id(prefix: str = "cmd") -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def meeting_id_from(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")[:40] or "meeting"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M', time.gmtime())}"


def check_media_url(option: str, url: str, known_hosts: list[str], schemes: tuple[str, ...] = MEDIA_SCHEMES) -> None:
    """Refuse what the devices would answer with url_not_allowed; with no media hosts known, any host."""
    problem = url_problem(url, allowed_hosts=None, schemes=schemes)
    if problem:
        raise BadInput(f"{option}: {problem}")
    if known_hosts and url_problem(url, tuple(known_hosts)):
        host = (urlsplit(url).hostname or "").lower()
        raise BadInput(f"{option} {url!r}: host {host!r} is not one of the media hosts the sites accept "
                       f"({', '.join(known_hosts)}); devices would refuse it with url_not_allowed")


@dataclass(frozen=True)
class Target:
    label: str              # "group:kecamatan" or "sites:a,b"
    topics: list[str]       # where the command is published
    to: list[str]           # the command's `to`
    sites: list[Site]       # who is expected to answer


def resolve_target(store: Store, sites: str | None, group: str | None,
                   prefix: str = DEFAULT_TOPIC_PREFIX) -> Target:
    if sites and group:
        raise BadInput("give either --sites or --group, not both")
    if group:
        if group not in GROUPS:
            raise BadInput(f"--group {group!r} must be one of {', '.join(GROUPS)}")
        members = store.sites() if group == "all" else store.sites(kind=group)
        if not members:
            raise BadInput(f"group {group!r} has no sites (see `appliance-console sites list`)")
        return Target(f"group:{group}", [group_command_topic(prefix, group)], ["*"], members)
    if sites:
        ids = [part.strip() for part in sites.split(",") if part.strip()]
        bad = [site_id for site_id in ids if not SITE_ID.match(site_id)]
        if not ids or bad:
            raise BadInput(f"--sites {sites!r}: expected comma-separated site ids")
        members = store.sites(ids)
        if len(",".join(ids)) > MAX_TO_BYTES:
            raise BadInput(f"--sites names {len(ids)} sites, too many for one command; use --group")
        return Target("sites:" + ",".join(site.id for site in members),
                      [site_topic(prefix, site.id, "cmd") for site in members], [site.id for site in members], members)
    raise BadInput("say which sites: --sites a,b or --group all|kecamatan|desa")


def target_from_label(store: Store, label: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> Target:
    kind, _, value = label.partition(":")
    return resolve_target(store, value if kind == "sites" else None, value if kind == "group" else None, prefix)


def build(command_type: str, body: dict[str, Any], target: Target, expires_s: float, signing_key: Ed25519PrivateKey,
          now: float | None = None) -> dict[str, Any]:
    """The signed command for `target`, with the console's own time-stamped id."""
    if expires_s > MAX_EXPIRY_S:
        raise BadInput(f"--expires must be at most {MAX_EXPIRY_S // 3600} h (the devices' max_command_age_s)")
    command_id = new_id()
    assert COMMAND_ID.match(command_id)
    return build_command(command_type, body, to=target.to, issued_at=time.time() if now is None else now,
                         ttl_s=expires_s, command_id=command_id, signing_key=signing_key)
