"""Wi-Fi for sites without a cable: `[wifi]` in the site file, applied by provisioning with the OS's
own tooling (a NetworkManager keyfile, Raspberry Pi OS bookworm's network manager), then reloaded.

    [wifi]
    ssid = "Kantor Desa"        # 1-32 bytes
    psk = "rahasia123"          # WPA2/WPA3-personal: 8-63 characters, or 64 hex digits; "" = open network
    country = "ID"              # regulatory domain (two letters)
    hidden = false

Pure functions: the checks (config.py uses them, so `appliance check-config` names every problem) and
the keyfile's text. provision.py writes it (root, 0600: it holds the passphrase).
"""

from __future__ import annotations

import re
from typing import Any

from appliance.core.messages import Message, message

CONNECTION_ID = "rapat-wifi"
KEYFILE = f"NetworkManager/system-connections/{CONNECTION_ID}.nmconnection"
# The regulatory domain (which channels and power are legal) is the kernel's, set when cfg80211 loads.
COUNTRY_FILE = "modprobe.d/rapat-wifi-country.conf"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def ssid_problem(value: str) -> Message | None:
    size = len(value.encode("utf-8"))
    if value and not 1 <= size <= 32:
        return message("wifi.ssid_size", size=size)
    if any(ord(char) < 32 for char in value):
        return message("wifi.ssid_control")
    return None


def psk_problem(value: str) -> Message | None:
    if not value or _HEX64.match(value):
        return None
    if not 8 <= len(value) <= 63:
        return message("wifi.psk_length", length=len(value))
    if not all(32 <= ord(char) <= 126 for char in value):
        return message("wifi.psk_ascii")
    return None


def country_problem(value: str) -> Message | None:
    return None if re.fullmatch(r"[A-Z]{2}", value) else message("wifi.country", value=value)


def _escape(value: str) -> str:
    """A keyfile value: GLib key files take backslash escapes; no raw newlines or leading spaces."""
    text = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    return "\\s" + text[1:] if text.startswith(" ") else text


def country_conf(wifi: dict[str, Any]) -> str:
    return ("# Written by appliance-provision from wifi.country in the site file.\n"
            f"options cfg80211 ieee80211_regdom={wifi.get('country', 'ID')}\n")


def keyfile(wifi: dict[str, Any]) -> str:
    lines = ["# Written by appliance-provision from [wifi] in the site file; do not edit.",
             "[connection]", f"id={CONNECTION_ID}", "type=wifi", "autoconnect=true", "autoconnect-retries=0", "",
             "[wifi]", "mode=infrastructure", f"ssid={_escape(wifi['ssid'])}",
             f"hidden={'true' if wifi.get('hidden') else 'false'}", ""]
    if wifi.get("psk"):
        lines += ["[wifi-security]", "key-mgmt=wpa-psk", f"psk={_escape(wifi['psk'])}", ""]
    lines += ["[ipv4]", "method=auto", "", "[ipv6]", "method=auto", ""]
    return "\n".join(lines)
