"""Wi-Fi from the site file (appliance/wifi.py): checked like every other key, applied by provisioning as a
NetworkManager keyfile only root can read, removed when the section goes, its passphrase scrubbed from the card."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from tests.test_provision import GOOD, provision, tree  # noqa: F401 - the fixture

WIFI = GOOD + '[wifi]\nssid = "Kantor Desa Kalibaru"\npsk = "rahasia-desa-123"\ncountry = "ID"\n'
KEYFILE = "etc/NetworkManager/system-connections/rapat-wifi.nmconnection"


def test_wifi_settings_become_a_root_only_networkmanager_connection(tree: Path) -> None:  # noqa: F811
    (tree / "boot/appliance-site.toml").write_text(WIFI)
    result = provision(tree)
    assert result.returncode == 0, result.stderr
    keyfile = tree / KEYFILE
    assert keyfile.stat().st_mode & 0o777 == 0o600
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(keyfile.read_text())
    assert parsed["connection"]["type"] == "wifi" and parsed["connection"]["autoconnect"] == "true"
    assert parsed["wifi"]["ssid"] == "Kantor Desa Kalibaru"
    assert parsed["wifi-security"]["key-mgmt"] == "wpa-psk" and parsed["wifi-security"]["psk"] == "rahasia-desa-123"
    assert "Wi-Fi connection to 'Kantor Desa Kalibaru' written" in result.stderr
    assert "ieee80211_regdom=ID" in (tree / "etc/modprobe.d/rapat-wifi-country.conf").read_text()
    applied = (tree / "boot/appliance-site.toml.applied").read_text()
    assert "rahasia-desa-123" not in applied and "s3cret" not in applied  # the card keeps no secret


def test_removing_the_section_removes_the_connection(tree: Path) -> None:  # noqa: F811
    (tree / "boot/appliance-site.toml").write_text(WIFI)
    assert provision(tree).returncode == 0
    (tree / "boot/appliance-site.toml").write_text(GOOD)  # the site got a cable
    result = provision(tree)
    assert result.returncode == 0 and not (tree / KEYFILE).exists() and "removed (cable)" in result.stderr
    assert not (tree / "etc/modprobe.d/rapat-wifi-country.conf").exists()


@pytest.mark.parametrize(("wifi", "words"), [
    ('ssid = "Kantor"\npsk = "short"', "wifi.psk: kata sandi WPA 8-63 karakter"),
    ('ssid = "' + "x" * 33 + '"\npsk = "rahasia-desa-123"', "wifi.ssid: harus 1-32 byte"),
    ('psk = "rahasia-desa-123"', "wifi.psk: isi juga wifi.ssid"),
    ('ssid = "Kantor"\ncountry = "indonesia"', "wifi.country"),
    ('ssid = "Kantor"\nchannel = 6', "wifi.channel"),
])
def test_bad_wifi_settings_are_rejected_and_the_previous_config_kept(tree: Path, wifi: str, words: str) -> None:  # noqa: F811
    (tree / "boot/appliance-site.toml").write_text(WIFI)
    assert provision(tree).returncode == 0
    before = (tree / KEYFILE).read_text()
    (tree / "boot/appliance-site.toml").write_text(GOOD + "[wifi]\n" + wifi + "\n")
    result = provision(tree)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert words in (tree / "state/provision-error.txt").read_text()
    assert (tree / KEYFILE).read_text() == before  # the working connection stays
