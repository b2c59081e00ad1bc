"""Layered TOML configuration, validated into one problem line per mistake (file, key, what is wrong)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance import wifi
from appliance.core.messages import Message, Problem, message, problem
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, SITE_ID, SITE_KINDS, topic_prefix_problem
from appliance.core.signing import public_key_from_base64

DEFAULT_FILES = ("/etc/appliance/appliance.toml", "/var/lib/appliance/site.toml")
# The per-site file comes from the SD card's RAPAT drive, which anyone holding the card can edit:
# it may set only these keys (None: the whole section); the rest, and any plain mqtt:// broker, only
# the image's file may set (docs/security.md). `[wifi]` is the site's own network (appliance/wifi.py).
SITE_FILE = DEFAULT_FILES[1]
SITE_FILE_KEYS: dict[str, frozenset[str] | None] = {
    "site": None,
    "broker": frozenset({"url", "username", "password", "password_file", "ca_file", "client_cert_file",
                         "client_key_file"}),
    "security": frozenset({"allowed_media_hosts"}),
    "wifi": None,
}
REQUIRED = object()
# A key's own check: None when the value is good, else what is wrong (appliance/core/messages.py).
Check = Callable[[Any], Message | None]


@dataclass(frozen=True)
class Key:
    kind: type | tuple[type, ...]
    default: Any
    check: Check | None = None


def _choice(*options: str) -> Check:
    return lambda value: None if value in options else message("config.choice", options=", ".join(options), value=value)


def _between(low: float, high: float) -> Check:
    return lambda value: None if low <= value <= high else message("config.between", low=low, high=high, value=value)


def _site_id(value: str) -> Message | None:
    return None if SITE_ID.match(value) else message("config.site_id", value=value, pattern="^[a-z0-9][a-z0-9-]{0,31}$")


def _broker_url(value: str) -> Message | None:
    # urlsplit drops tabs and newlines and strips control characters, so "m\tqtt://" would parse as
    # mqtt: the text must already be exactly what it means.
    if not (value.isascii() and value.isprintable()) or value != value.strip():
        return message("config.url_not_plain", value=value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        return message("config.url_malformed", value=value, error=exc)
    if parts.scheme not in ("mqtt", "mqtts"):
        return message("config.url_scheme", value=value)
    if not parts.hostname:
        return message("config.url_no_host", value=value)
    return None


def _timezone(value: str) -> Message | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return message("config.timezone", value=value)
    return None


def _hosts(value: list[Any]) -> Message | None:
    if not all(isinstance(host, str) and host for host in value):
        return message("config.hosts")
    return None


def _window(value: str) -> Message | None:
    if value and not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]", value):
        return message("config.window", value=value)
    if value and value[:5] == value[6:]:
        return message("config.window_empty", value=value)
    return None


def _topic_prefix(value: str) -> Message | None:
    return message("config.topic_prefix", value=value) if topic_prefix_problem(value) else None


SCHEMA: dict[str, dict[str, Key]] = {
    "site": {
        "id": Key(str, REQUIRED, _site_id),
        "name": Key(str, ""),
        "kind": Key(str, "other", _choice(*SITE_KINDS)),
    },
    "broker": {
        "url": Key(str, REQUIRED, _broker_url),
        "username": Key(str, ""),
        "password": Key(str, ""),
        "password_file": Key(str, ""),
        "ca_file": Key(str, ""),
        "client_cert_file": Key(str, ""),
        "client_key_file": Key(str, ""),
        "keepalive_s": Key(int, 30, _between(5, 3600)),
        "topic_prefix": Key(str, DEFAULT_TOPIC_PREFIX, _topic_prefix),
    },
    "security": {
        "console_public_key": Key(str, ""),
        "allow_unsigned": Key(bool, False),
        "allowed_media_hosts": Key(list, [], _hosts),
        "max_command_age_s": Key((int, float), 86400, _between(1, 30 * 86400)),
    },
    "panel": {
        "backend": Key(str, "gpio", _choice("gpio", "mock")),
        "button_pin": Key(int, 17, _between(0, 27)),
        "led_pin": Key(int, 27, _between(0, 27)),
        # A red "on air" LED, lit while the site speaks; absent (None) = no such LED.
        "onair_led_pin": Key(int, None, _between(0, 27)),
        "hold_s": Key((int, float), 3.0, _between(0.5, 30)),
    },
    "camera": {
        "backend": Key(str, "picamera2", _choice("picamera2", "testsrc", "none")),
        # 720p30 at 1.5 Mbit/s: a meeting room, within a Pi 4's hardware encoder and a village uplink.
        "width": Key(int, 1280, _between(160, 1920)),
        "height": Key(int, 720, _between(120, 1080)),
        "fps": Key(int, 30, _between(5, 60)),
        "bitrate_kbps": Key(int, 1500, _between(100, 20000)),
        "audio_device": Key(str, "default"),  # ALSA capture device; "" = no microphone (silent track)
        # testsrc only: its "microphone" is a tone, or (engine) what the audio engine captures, as a Pi's would be.
        "test_audio": Key(str, "tone", _choice("tone", "engine")),
    },
    "audio": {
        # How the meeting's sound from the speaker is kept out of the microphone (docs/media.md, "Echo"):
        # aec = PipeWire's WebRTC echo canceller; duck = the program quieter while the site speaks;
        # device = a speakerphone cancels it itself; off = nothing.
        "echo": Key(str, "aec", _choice("aec", "duck", "device", "off")),
        "duck_db": Key((int, float), 24, _between(20, 60)),
    },
    "display": {
        "backend": Key(str, "vlc", _choice("vlc", "none")),
        "language": Key(str, "id", _choice("id", "en")),
        "output": Key(str, "drm", _choice("drm", "x11", "headless")),
        "drm_connector": Key(str, "HDMI-A-1"),
        "width": Key(int, 1280, _between(160, 3840)),   # screens are drawn at this size, then scaled
        "height": Key(int, 720, _between(120, 2160)),
        "network_caching_ms": Key(int, 200, _between(0, 10000)),
        "audio_device": Key(str, ""),  # ALSA output for the program's sound; "" = VLC's default; "pulse" = the audio engine
        "frames_dir": Key(str, ""),    # headless only: where display.jpg snapshots go
    },
    "telemetry": {
        "interval_s": Key((int, float), 60, _between(5, 86400)),
        # The 90-day uptime message is ~9 KB: every 60 s that is ~13 MB/day on a village link;
        # 900 s cuts it to ~1 MB. The ledger is saved to disk every 60 s either way.
        "uptime_publish_s": Key((int, float), 60, _between(60, 86400)),
    },
    "update": {
        # Where update bundles may come from; empty: security.allowed_media_hosts.
        "allowed_hosts": Key(list, [], _hosts),
        # When a downloaded update may reboot the site: "" = the first idle moment.
        "window": Key(str, "", _window),
        # A new version not healthy (broker, its self-test) this long after its first boot is given back.
        "health_timeout_s": Key((int, float), 300, _between(60, 3600)),
        "rauc_config": Key(str, "/etc/rauc/system.conf"),
    },
    "paths": {
        "state_dir": Key(str, "/var/lib/appliance"),
        "control_socket": Key(str, "/run/appliance/control.sock"),
    },
    "time": {"timezone": Key(str, "Asia/Jakarta", _timezone)},
    # Sites without a cable (appliance/wifi.py): applied by provisioning as a NetworkManager connection.
    "wifi": {
        "ssid": Key(str, "", wifi.ssid_problem),
        "psk": Key(str, "", wifi.psk_problem),
        "country": Key(str, "ID", wifi.country_problem),
        "hidden": Key(bool, False),
    },
}

SIMULATE_BACKENDS = {("panel", "backend"): "mock", ("camera", "backend"): "testsrc", ("display", "backend"): "vlc",
                     ("display", "output"): "headless"}


class ConfigError(Exception):
    """Raised with every problem found, one per line, so a technician can fix them all at once."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Config:
    values: dict[str, dict[str, Any]]
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    def where(self, section: str, key: str) -> str:
        return self.sources.get((section, key), self.files[-1] if self.files else "(defaults)")

    def broker_password(self) -> str:
        broker = self["broker"]
        if broker["password_file"]:
            return Path(broker["password_file"]).read_text(encoding="utf-8").strip()
        return broker["password"]


def config_files(explicit: list[str] | None, environ: dict[str, str] | None = None) -> tuple[list[str], bool]:
    """Which files to read, and whether they were named (named files must exist; defaults may not)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return list(explicit), True
    if environ.get("APPLIANCE_CONFIG"):
        return [part for part in environ["APPLIANCE_CONFIG"].split(":") if part], True
    return [path for path in DEFAULT_FILES if os.path.exists(path)], False


def load(paths: list[str], simulate: bool = False) -> Config:
    """Read, merge key by key (later files win) and validate; raise ConfigError listing every problem."""
    problems: list[Problem] = []
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}
    if not paths:
        raise ConfigError([problem("(none)", "", "config.no_file", looked=", ".join(DEFAULT_FILES))])
    for path in paths:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            problems.append(problem(path, "", "config.unreadable", error=exc.strerror or exc))
            continue
        except tomllib.TOMLDecodeError as exc:
            problems.append(problem(path, "", "config.bad_toml", error=exc))
            continue
        if os.path.abspath(path) == SITE_FILE:
            problems.extend(site_file_problems(path, document, merged))
        for section, table in document.items():
            if section not in SCHEMA:
                problems.append(problem(path, f"[{section}]", "config.unknown_section", known=", ".join(SCHEMA)))
                continue
            if not isinstance(table, dict):
                problems.append(problem(path, section, "config.not_a_table", section=section))
                continue
            for key, value in table.items():
                if key not in SCHEMA[section]:
                    problems.append(problem(path, f"{section}.{key}", "config.unknown_key", known=", ".join(SCHEMA[section])))
                    continue
                merged.setdefault(section, {})[key] = value
                sources[(section, key)] = path
    config = Config({}, sources, list(paths))
    for section, keys in SCHEMA.items():
        values = config.values.setdefault(section, {})
        for key, spec in keys.items():
            where = config.where(section, key)
            if key not in merged.get(section, {}):
                if simulate and (section, key) in SIMULATE_BACKENDS:
                    values[key] = SIMULATE_BACKENDS[(section, key)]
                elif spec.default is REQUIRED:
                    problems.append(problem(where, f"{section}.{key}", "config.required"))
                else:
                    values[key] = spec.default
                continue
            value = merged[section][key]
            if not isinstance(value, spec.kind) or (isinstance(value, bool) and spec.kind is not bool):
                problems.append(problem(where, f"{section}.{key}", "config.wrong_type", kind=_type_name(spec.kind), value=value))
                continue
            wrong = spec.check(value) if spec.check else None
            if wrong:
                problems.append(Problem(where, f"{section}.{key}", wrong))
                continue
            values[key] = value
    problems.extend(_cross_checks(config))
    if problems:
        raise ConfigError(problems)
    config.values["security"]["allowed_media_hosts"] = tuple(config["security"]["allowed_media_hosts"])
    return config


def _cross_checks(config: Config) -> list[Problem]:
    problems = []

    def wrong(section: str, key: str, code: str, **params: Any) -> None:
        problems.append(problem(config.where(section, key), f"{section}.{key}", code, **params))

    security, broker = config["security"], config["broker"]
    key_text = security.get("console_public_key", "")
    if key_text:
        try:
            public_key_from_base64(key_text)
        except ValueError as exc:
            wrong("security", "console_public_key", "config.console_key_invalid", error=exc)
    elif security.get("allow_unsigned") is False:
        wrong("security", "console_public_key", "config.console_key_required")
    if broker.get("password") and broker.get("password_file"):
        wrong("broker", "password_file", "config.password_twice")
    if bool(broker.get("client_cert_file")) != bool(broker.get("client_key_file")):
        wrong("broker", "client_cert_file", "config.client_pair")
    tls_files = [key for key in ("ca_file", "client_cert_file", "client_key_file") if broker.get(key)]
    if tls_files and _scheme(broker.get("url", "")) == "mqtt":
        wrong("broker", tls_files[0], "config.tls_needs_mqtts")
    problems.extend(_panel_pin_problems(config))
    wifi_settings = config["wifi"]
    if wifi_settings.get("psk") and not wifi_settings.get("ssid"):
        wrong("wifi", "psk", "config.psk_without_ssid")
    return problems


def _panel_pin_problems(config: Config) -> list[Problem]:
    """The optional on-air LED needs a GPIO of its own (keys that failed their own check are absent)."""
    panel = config["panel"]
    onair = panel.get("onair_led_pin")
    if onair is None:
        return []
    return [problem(config.where("panel", "onair_led_pin"), "panel.onair_led_pin", "config.onair_pin_taken",
                    pin=onair, other=key)
            for key in ("button_pin", "led_pin") if panel.get(key) == onair]


def _scheme(url: object) -> str:
    """The scheme the MQTT link will use (it reads the URL with urlsplit too)."""
    try:
        return urlsplit(str(url)).scheme.lower()
    except ValueError:
        return ""


def site_file_problems(path: str, document: dict[str, Any], image: dict[str, dict[str, Any]]) -> list[Problem]:
    """What a site file (RAPAT drive, or the installed copy) may not set: keys outside SITE_FILE_KEYS
    unless they only repeat `image` (the values read before it, else the defaults), and mqtt://."""
    problems = []
    for section, table in document.items():
        if section not in SCHEMA or not isinstance(table, dict) or SITE_FILE_KEYS.get(section, frozenset()) is None:
            continue  # unknown sections and non-tables are load()'s problems; None allows the section
        for key, value in table.items():
            if key in SCHEMA[section] and key not in SITE_FILE_KEYS.get(section, frozenset()) \
                    and value != image.get(section, {}).get(key, SCHEMA[section][key].default):
                problems.append(problem(path, f"{section}.{key}", "config.image_only", image_file=DEFAULT_FILES[0]))
    url = document.get("broker", {}).get("url") if isinstance(document.get("broker"), dict) else None
    if isinstance(url, str) and _scheme(url) != "mqtts":
        problems.append(problem(path, "broker.url", "config.plain_mqtt", image_file=DEFAULT_FILES[0]))
    return problems


def file_problems(config: Config) -> list[Problem]:
    """Problems with the files the configuration points to; only meaningful on the device itself."""
    problems = []
    for key in ("password_file", "ca_file", "client_cert_file", "client_key_file"):
        path = config["broker"][key]
        if path and not os.access(path, os.R_OK):
            code = "config.file_missing" if not os.path.exists(path) else "config.file_unreadable"
            problems.append(problem(config.where("broker", key), f"broker.{key}", code, path=path))
    return problems


def _type_name(kind: type | tuple[type, ...]) -> Message:
    names = {str: "str", int: "int", float: "number", bool: "bool", list: "list"}
    if isinstance(kind, tuple):  # every tuple in SCHEMA is (int, float)
        return message("config.type.number")
    return message(f"config.type.{names[kind]}")
