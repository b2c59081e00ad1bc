"""Media URLs in commands: which schemes each may use, the check that rebuilds a URL from its
parsed parts (what ffmpeg and VLC are given), and the redaction that keeps stream keys and
passphrases out of logs and events. Pure functions; `protocol.check_command` applies the check."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, unquote_plus, urlsplit

# What the display may pull (program_url) and what the camera may push to (ingest_url): see docs/protocol.md.
PROGRAM_SCHEMES = ("rtmp", "rtmps", "rtsp", "rtsps", "srt", "http", "https")
INGEST_SCHEMES = ("rtmp", "rtmps", "srt")
MEDIA_SCHEMES = PROGRAM_SCHEMES  # any media URL at all
UPDATE_SCHEMES = ("http", "https")  # an update bundle's `url` (the bundle is signed: https is not needed)
URL_SCHEMES = {"program_url": PROGRAM_SCHEMES, "ingest_url": INGEST_SCHEMES, "url": UPDATE_SCHEMES}
MAX_URL_CHARS = 2048


def url_problem(url: str, allowed_hosts: tuple[str, ...] | None, schemes: tuple[str, ...] = MEDIA_SCHEMES) -> str | None:
    """Why a device would refuse this media URL (see `clean_url`), or None."""
    try:
        clean_url(url, allowed_hosts, schemes)
    except ValueError as exc:
        return str(exc)
    return None


# RFC 3986 allows these characters in a URL (plus "%" starting an escape); everything else must be
# percent-encoded. Spaces, tabs, newlines, NUL, other control and non-ASCII characters never pass:
# Python's parser drops or strips some of them, but ffmpeg and VLC would get the raw text (ffmpeg took
# " rtmp://..." for a local file name).
_URL_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%")
_CHARACTER_NAMES = {" ": "a space", "\t": "a tab", "\n": "a newline", "\r": "a carriage return", "\0": "NUL"}
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9._-]*[a-z0-9_])?$")
# Options that would make the device wait for a connection instead of making one: ffmpeg's `listen`
# (tcp, http, rtmp; and any other option naming it, such as `rtmp_listen`) in any URL, and an SRT
# `mode` other than caller (listener, rendezvous).


def clean_url(url: str, allowed_hosts: tuple[str, ...] | None, schemes: tuple[str, ...] = MEDIA_SCHEMES) -> str:
    """The media URL rebuilt from its parsed parts, or ValueError saying what is wrong with it.

    This is what the device hands to ffmpeg and VLC: scheme and host lower-cased, `host:` without a
    port tidied, nothing the parser skipped over. `allowed_hosts=None` checks everything but the host
    list (the console, which may not know every site's list). The messages never repeat the URL
    (it may carry a stream key).
    """
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"longer than {MAX_URL_CHARS} characters")
    for position, char in enumerate(url):
        if char not in _URL_CHARACTERS:
            what = _CHARACTER_NAMES.get(char) or (repr(char) if " " < char < "\x7f" else f"U+{ord(char):04X}")
            raise ValueError(f"{what} at position {position}: a URL is printable ASCII without spaces "
                             "(percent-encode anything else)")
        if char == "%" and not _PERCENT_ESCAPE.match(url, position):
            raise ValueError(f"'%' at position {position} does not start a %XX escape")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not one of {', '.join(schemes)}")
    if not url[len(scheme):].startswith("://"):
        raise ValueError(f"does not start with {scheme}://")
    if "#" in url:
        raise ValueError("has a fragment ('#'): write '#' inside an option as %23")
    if not host:
        raise ValueError("names no host")
    if parts.netloc.count("@") > 1:
        raise ValueError("has more than one '@' before the host: write '@' in a user name or password as %40")
    if "[" in parts.netloc.rpartition("@")[2] or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("the host in [brackets] is not an IPv6 address") from None
    elif not _HOST_NAME.match(host):
        raise ValueError(f"host {host!r} is not a host name or address")
    if port == 0:
        raise ValueError("port 0 is not a port")
    if allowed_hosts is not None and host not in {allowed.lower() for allowed in allowed_hosts}:
        raise ValueError(f"host {host!r} is not in security.allowed_media_hosts")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = key.lower()
        if "listen" in name:
            raise ValueError(f"option {key!r} would make the device wait for a connection; it must connect out")
        if scheme == "srt" and name == "mode" and value.lower() != "caller":
            raise ValueError(f"SRT mode={value!r}: the device must call the server (mode=caller, or no mode)")
    userinfo = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
    address = f"[{host}]" if ":" in host else host
    netloc = f"{userinfo}{address}" + (f":{port}" if port is not None else "")
    return f"{scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


REDACTED = "***"
# Query options shown in logs and events as they are: none of them is a secret. Every other option's
# value (passphrase, streamid, key, token, ...) is replaced by ***.
PUBLIC_URL_OPTIONS = frozenset({
    "mode", "latency", "rcvlatency", "peerlatency", "pkt_size", "payload_size", "transtype", "maxbw", "oheadbw",
    "timeout", "connect_timeout", "tlpktdrop", "nakreport", "pbkeylen", "tcp", "udp",
})
# A scheme, "://" and every character a URL may hold after it (quotes around a URL stay outside,
# but "'" is a URL character too: it is taken in, and dropped again when it ends the match).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")


OPTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


_C0_OR_SPACE = "".join(map(chr, range(0x21)))  # urlsplit strips these from the front
_DROPPED_BY_URLSPLIT = str.maketrans("", "", "\t\r\n")  # and drops these anywhere


def redact_url(url: str) -> str:
    """A media URL as logs and `media.error` events may show it: stream keys and passwords hidden.

    Hidden: the user part (user name and password), the last path segment of an RTMP URL with an application
    and a stream name (`rtmp://host/live/KEY`: the stream key), the value of every query option not in
    PUBLIC_URL_OPTIONS (SRT `passphrase=`, `streamid=`, tokens) and any fragment. Never raises.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"(a URL that does not parse, {len(url)} characters, hidden)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    path = parts.path
    if parts.scheme.lower() in ("rtmp", "rtmps"):
        segments = path.split("/")
        named = [index for index, segment in enumerate(segments) if segment]
        if len(named) >= 2 and segments[named[-1]] != REDACTED:
            segments[named[-1]] = REDACTED
            path = "/".join(segments)
    options = []
    for option in parts.query.split("&") if parts.query else []:
        key, equals, value = option.partition("=")
        public = unquote_plus(key).lower() in PUBLIC_URL_OPTIONS
        if not OPTION_NAME.fullmatch(unquote_plus(key)) or (not equals and not public):
            # A bare token (no name=value) may itself be the key, and so may a "name" that is no name:
            # in `rtmp://0?@host/live/KEY?mode=caller` everything after the first `?` is the query.
            key = REDACTED
        if equals and value and not public:
            value = REDACTED
        options.append(f"{key}{equals}{value}")
    # "//" only where the URL had an authority: `a:@://host` is the scheme `a` and the path `@://host`,
    # and writing it as `a://@://host` would make the next reading (a log line redacted twice) see a user part.
    as_parsed = url.lstrip(_C0_OR_SPACE).translate(_DROPPED_BY_URLSPLIT)  # what urlsplit read the scheme from
    authority = f"//{netloc}" if parts.netloc or as_parsed[len(parts.scheme) + 1:].startswith("//") else ""
    text = f"{parts.scheme}:{authority}{path}" if parts.scheme else f"{netloc}{path}"
    text += f"?{'&'.join(options)}" if options else ""
    return text + (f"#{REDACTED}" if parts.fragment else "")


def redact_text(text: str) -> str:
    """`text` (a status detail, a line of ffmpeg's output, a command line) with every URL in it redacted."""

    def redact(match: re.Match[str]) -> str:
        url = match.group()
        trailing = len(url) - len(url.rstrip(":,.;)'"))
        return redact_url(url[:len(url) - trailing]) + url[len(url) - trailing:]

    return _URL_IN_TEXT.sub(redact, text)
