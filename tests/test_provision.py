"""appliance.provision on this machine: good, bad and missing site files, hostname, atomicity.
The same flow runs inside the built arm64 image in tests/test_image_build.py (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """[site]
id = "kalibaru"
name = "Kecamatan Kalibaru"
kind = "kecamatan"
[broker]
url = "mqtts://broker.example:8883"
username = "kalibaru"
password = "s3cret"
[security]
allow_unsigned = true
"""
BAD = GOOD.replace('id = "kalibaru"', 'id = "Kali Baru"').replace('kind = "kecamatan"', 'kind = "kota"')


def provision(tmp: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "appliance.provision", "--boot-file", str(tmp / "boot/appliance-site.toml"),
            "--target", str(tmp / "state/site.toml"), "--base", str(tmp / "etc/appliance/appliance.toml"),
            "--etc", str(tmp / "etc"), "--user", "nobody-here", *extra]
    return subprocess.run(args, capture_output=True, text=True, env=env)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for sub in ("boot", "state", "etc/appliance"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "etc/hostname").write_text("rapat-unprovisioned\n")
    (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\trapat-unprovisioned\n")
    return tmp_path


def test_good_site_file_is_installed_with_secret_mode_and_renamed(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    (tree / "state/provision-error.txt").write_text("old problem\n")
    result = provision(tree)
    assert result.returncode == 0, result.stderr
    installed = tree / "state/site.toml"
    assert installed.read_text() == GOOD
    assert installed.stat().st_mode & 0o777 == 0o600
    assert not (tree / "boot/appliance-site.toml").exists()
    assert (tree / "boot/appliance-site.toml.applied").read_text() == GOOD
    assert not (tree / "state/provision-error.txt").exists()
    assert (tree / "etc/hostname").read_text() == "rapat-kalibaru\n"
    hosts = (tree / "etc/hosts").read_text().splitlines()
    assert "127.0.1.1\trapat-kalibaru" in hosts and "127.0.0.1\tlocalhost" in hosts
    assert sum(line.startswith("127.0.1.1") for line in hosts) == 1
    assert [p.name for p in (tree / "state").iterdir()] == ["site.toml"]  # no temporary files left


def test_bad_site_file_keeps_previous_config_and_says_why(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    assert provision(tree).returncode == 0
    (tree / "boot/appliance-site.toml").write_text(BAD)
    result = provision(tree)
    assert result.returncode == 2
    assert (tree / "state/site.toml").read_text() == GOOD  # previous configuration kept
    assert (tree / "boot/appliance-site.toml").read_text() == BAD  # left for the technician to fix
    error = (tree / "state/provision-error.txt").read_text()
    for text in (result.stderr, error):
        assert "site.id" in text and "Kali Baru" in text
        assert "site.kind" in text and "kota" in text
        assert str(tree / "boot/appliance-site.toml") in text
    assert (tree / "etc/hostname").read_text() == "rapat-kalibaru\n"  # from the kept configuration


def test_bad_site_file_on_a_fresh_device_installs_nothing(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text("[site\nid=")
    result = provision(tree)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
    assert not (tree / "state/site.toml").exists()
    assert (tree / "etc/hostname").read_text() == "rapat-unprovisioned\n"


def test_site_file_is_checked_on_top_of_the_image_defaults(tree: Path) -> None:
    """The daemon reads /etc/appliance/appliance.toml first; a site file may rely on it."""
    (tree / "etc/appliance/appliance.toml").write_text('[broker]\nurl = "mqtt://broker.example"\n'
                                                      '[security]\nallow_unsigned = true\n')
    (tree / "boot/appliance-site.toml").write_text('[site]\nid = "desa-a"\nkind = "desa"\n')
    assert provision(tree).returncode == 0
    assert (tree / "etc/hostname").read_text() == "rapat-desa-a\n"


def test_referenced_files_must_exist_on_the_device(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(
        GOOD.replace('password = "s3cret"', f'password_file = "{tree}/etc/appliance/missing-password"'))
    result = provision(tree)
    assert result.returncode == 2
    assert "broker.password_file" in result.stderr and "does not exist" in result.stderr


def test_no_site_file_reapplies_hostname_from_installed_config(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    assert provision(tree).returncode == 0
    (tree / "etc/hostname").write_text("raspberrypi\n")  # what a RAM overlay root shows after a reboot
    result = provision(tree)
    assert result.returncode == 0
    assert "no new site file" in result.stderr
    assert (tree / "etc/hostname").read_text() == "rapat-kalibaru\n"


def test_installed_file_belongs_to_the_daemon_user(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    args = [sys.executable, "-m", "appliance.provision", "--boot-file", str(tree / "boot/appliance-site.toml"),
            "--target", str(tree / "state/site.toml"), "--etc", str(tree / "etc"), "--user", "nobody"]
    assert subprocess.run(args, capture_output=True).returncode == 0
    import pwd
    assert (tree / "state/site.toml").stat().st_uid == pwd.getpwnam("nobody").pw_uid


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private UTS namespace")
def test_set_hostname_changes_the_running_hostname_in_a_private_namespace(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    script = (f"{sys.executable} -m appliance.provision --boot-file {tree}/boot/appliance-site.toml "
              f"--target {tree}/state/site.toml --base /nonexistent --etc {tree}/etc --set-hostname "
              ">/dev/null 2>&1 && hostname")
    # A private UTS namespace: the test machine's own hostname is not touched.
    result = subprocess.run(["unshare", "--uts", "sh", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "rapat-kalibaru", result.stderr
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() != "rapat-kalibaru"


def test_console_ca_beside_the_site_file_is_installed_with_it(tree: Path) -> None:
    with_ca = GOOD.replace('password = "s3cret"', f'password = "s3cret"\nca_file = "{tree}/state/ca.pem"')
    (tree / "boot/appliance-site.toml").write_text(with_ca)
    (tree / "boot/ca.pem").write_text("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    result = provision(tree)
    assert result.returncode == 0, result.stderr
    assert (tree / "state/ca.pem").read_text() == (tree / "boot/ca.pem").read_text()
    assert (tree / "state/ca.pem").stat().st_mode & 0o777 == 0o644
    assert (tree / "state/site.toml").read_text() == with_ca


def test_missing_ca_is_still_refused(tree: Path) -> None:
    with_ca = GOOD.replace('password = "s3cret"', f'password = "s3cret"\nca_file = "{tree}/state/ca.pem"')
    (tree / "boot/appliance-site.toml").write_text(with_ca)
    result = provision(tree)
    assert result.returncode == 2 and "broker.ca_file" in result.stderr
    assert not (tree / "state/site.toml").exists()
