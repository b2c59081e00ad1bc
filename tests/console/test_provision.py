"""Provisioning files: what the device's own checks accept, carrying the CA and credentials."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from appliance.console.passwords import check_password
from tests.console.conftest import ROOT, Console


def test_provisioning_file_passes_check_config_and_carries_everything(console: Console, tmp_path: Path) -> None:
    init = console.ok("init", "--broker-url", "mqtts://broker.banyuwangikab.go.id", "--media-host",
                      "media.banyuwangikab.go.id", "--json").json
    out = tmp_path / "card"
    console.ok("provision", "pesanggaran", "--out", str(out))
    site_file = out / "appliance-site.toml"
    checked = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(site_file)], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "OK: situs pesanggaran" in checked.stdout
    config = tomllib.loads(site_file.read_text())
    assert config["site"] == {"id": "pesanggaran", "name": "Kecamatan Pesanggaran", "kind": "kecamatan"}
    assert config["broker"]["url"] == "mqtts://broker.banyuwangikab.go.id:8883"
    assert config["broker"]["username"] == "appliance-pesanggaran"  # the contract's client id: the broker forces it
    assert config["broker"]["ca_file"] == "/var/lib/appliance/ca.pem"
    assert config["security"]["console_public_key"] == init["console_public_key"]
    assert config["security"]["allowed_media_hosts"] == ["media.banyuwangikab.go.id"]
    assert (out / "ca.pem").read_bytes() == (console.home / "ca" / "ca.pem").read_bytes()
    assert site_file.stat().st_mode & 0o777 == 0o600

    console.ok("broker-config", "--out", str(tmp_path / "broker"))
    hashes = dict(line.split(":", 1) for line in (tmp_path / "broker" / "passwd").read_text().splitlines())
    assert check_password(config["broker"]["password"], hashes["appliance-pesanggaran"])
    assert "_console" not in hashes and len(hashes) == 25  # the console logs in on its own listener only
    console_logins = (tmp_path / "broker" / "console-passwd").read_text().splitlines()
    assert [line.split(":", 1)[0] for line in console_logins] == ["_console"]


def test_provision_all_and_a_custom_ca_path(console: Console, tmp_path: Path) -> None:
    console.ok("init", "--broker-url", "mqtts://10.20.0.5:8883")
    console.ok("provision", "--all", "--out", str(tmp_path / "cards"), "--media-host", "10.20.0.6",
               "--ca-path", "/etc/appliance/ca.pem")
    cards = sorted(path.name for path in (tmp_path / "cards").iterdir())
    assert len(cards) == 25 and "wongsorejo" in cards
    config = tomllib.loads((tmp_path / "cards" / "wongsorejo" / "appliance-site.toml").read_text())
    assert config["broker"]["ca_file"] == "/etc/appliance/ca.pem"
    assert config["security"]["allowed_media_hosts"] == ["10.20.0.6"]


def test_provision_refusals_change_nothing(console: Console, tmp_path: Path) -> None:
    console.ok("init", "--broker-url", "mqtts://broker.example:8883")
    out = tmp_path / "card"
    no_hosts = console.run("provision", "kalibaru", "--out", str(out))
    assert no_hosts.code == 1 and "--media-host" in no_hosts.err
    unknown = console.run("provision", "atlantis", "--out", str(out), "--media-host", "m.example")
    assert unknown.code == 2 and "unknown site: atlantis" in unknown.err
    bad_host = console.run("provision", "kalibaru", "--out", str(out), "--media-host", "not a host")
    assert bad_host.code == 2 and "not a host name" in bad_host.err
    neither = console.run("provision", "--out", str(out), "--media-host", "m.example")
    assert neither.code == 2
    assert not out.exists()


def test_provisioning_carries_the_key_that_signs_after_the_key_was_changed(console: Console, tmp_path: Path) -> None:
    """Rotating the console's key (docs/console.md) replaces console-key.pem; a card written after that must
    carry the new public key, or a device on the new image rejects the site file (docs/security.md)."""
    from appliance.core.signing import generate_private_key, private_key_to_pem, public_key_to_base64  # noqa: PLC0415

    old = console.ok("init", "--broker-url", "mqtts://broker.example:8883", "--media-host", "m.example",
                     "--json").json["console_public_key"]
    new_key = generate_private_key()
    key_file = console.home / "console-key.pem"
    key_file.write_bytes(private_key_to_pem(new_key))
    console.ok("provision", "kalibaru", "--out", str(tmp_path / "card"))
    written = tomllib.loads((tmp_path / "card" / "appliance-site.toml").read_text())["security"]["console_public_key"]
    assert written == public_key_to_base64(new_key.public_key()) != old
