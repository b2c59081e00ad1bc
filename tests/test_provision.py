"""appliance.provision on this machine: good, bad, hostile and missing site files, hostname, atomicity,
ownership. The same flow runs inside the built arm64 image in tests/test_image_build.py (slow)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.console import pki
from appliance.core.signing import generate_private_key, public_key_to_base64
from appliance.provision import CONTENT_REMOVED, PASSWORD_REMOVED

CONSOLE_KEY = public_key_to_base64(generate_private_key().public_key())
OTHER_KEY = public_key_to_base64(generate_private_key().public_key())
# The image's own file: signing on, the console's key, the limits; the site file only names the site.
BASE = f"""[security]
console_public_key = "{CONSOLE_KEY}"
allow_unsigned = false
allowed_media_hosts = ["media.example.go.id"]
max_command_age_s = 86400
"""
GOOD = """[site]
id = "kalibaru"
name = "Kecamatan Kalibaru"
kind = "kecamatan"
[broker]
url = "mqtts://broker.example:8883"
username = "kalibaru"
password = "s3cret"
"""
BAD = GOOD.replace('id = "kalibaru"', 'id = "Kali Baru"').replace('kind = "kecamatan"', 'kind = "kota"')
CA_PEM, CA_KEY_PEM = pki.make_ca()
SERVER_PEM, _ = pki.make_server_cert("broker.example", CA_PEM, CA_KEY_PEM)
NOT_ALLOWED = "hanya boleh diatur di /etc/appliance/appliance.toml milik image"


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
    (tmp_path / "etc/appliance/appliance.toml").write_text(BASE)
    return tmp_path


def test_good_site_file_is_installed_with_secret_mode_and_renamed(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    (tree / "state/provision-error.txt").write_text("old problem\n")
    result = provision(tree)
    assert result.returncode == 0, result.stderr
    installed = tree / "state/site.toml"
    assert installed.read_text() == GOOD
    assert installed.stat().st_mode & 0o777 == 0o640
    assert not (tree / "boot/appliance-site.toml").exists()
    applied = (tree / "boot/appliance-site.toml.applied").read_text()
    assert "s3cret" not in applied and "password removed" in applied  # the card no longer carries it
    assert tomllib.loads(applied)["site"]["id"] == "kalibaru"
    assert applied == GOOD.replace('password = "s3cret"', PASSWORD_REMOVED)  # the rest stays for the record
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
    assert "bukan TOML yang sah" in result.stderr
    assert not (tree / "state/site.toml").exists()
    assert (tree / "etc/hostname").read_text() == "rapat-unprovisioned\n"


def test_site_file_is_checked_on_top_of_the_image_defaults(tree: Path) -> None:
    """The daemon reads /etc/appliance/appliance.toml first; a site file may rely on it."""
    # A lab image: only the image's own file may name a plain mqtt:// broker or switch signing off.
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
    assert "broker.password_file" in result.stderr and "tidak ada" in result.stderr


def test_no_site_file_reapplies_hostname_from_installed_config(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    assert provision(tree).returncode == 0
    (tree / "etc/hostname").write_text("raspberrypi\n")  # what a RAM overlay root shows after a reboot
    result = provision(tree)
    assert result.returncode == 0
    assert "no new site file" in result.stderr
    assert (tree / "etc/hostname").read_text() == "rapat-kalibaru\n"




@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private UTS namespace")
def test_set_hostname_changes_the_running_hostname_in_a_private_namespace(tree: Path) -> None:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    script = (f"{sys.executable} -m appliance.provision --boot-file {tree}/boot/appliance-site.toml "
              f"--target {tree}/state/site.toml --base {tree}/etc/appliance/appliance.toml --etc {tree}/etc --set-hostname "
              ">/dev/null 2>&1 && hostname")
    # A private UTS namespace: the test machine's own hostname is not touched.
    result = subprocess.run(["unshare", "--uts", "sh", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "rapat-kalibaru", result.stderr
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() != "rapat-kalibaru"


def test_console_ca_beside_the_site_file_is_installed_with_it(tree: Path) -> None:
    with_ca = GOOD.replace('password = "s3cret"', f'password = "s3cret"\nca_file = "{tree}/state/ca.pem"')
    (tree / "boot/appliance-site.toml").write_text(with_ca)
    (tree / "boot/ca.pem").write_bytes(CA_PEM)
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


# --- What the boot partition may not do (issue 15, finding 1; docs/security.md) --------------------

def previous_config_kept(tree: Path, result: subprocess.CompletedProcess, *reasons: str) -> str:
    """Rejected: exit 2, the installed file untouched, the file left on the card, the reasons on the
    screen (provision-error.txt, which the daemon shows as 'site file rejected') and in the journal."""
    assert result.returncode == 2, result.stderr
    assert (tree / "state/site.toml").read_text() == GOOD
    assert (tree / "boot/appliance-site.toml").exists()
    error = (tree / "state/provision-error.txt").read_text()
    assert error.startswith(f"site file rejected, previous configuration kept: {tree}/boot/appliance-site.toml\n")
    for reason in reasons:
        assert reason in error and reason in result.stderr, (reason, error)
    return error


@pytest.fixture
def provisioned(tree: Path) -> Path:
    (tree / "boot/appliance-site.toml").write_text(GOOD)
    assert provision(tree).returncode == 0
    return tree


@pytest.mark.parametrize("hostile, reasons", [
    ('[security]\nallow_unsigned = true\n', ["security.allow_unsigned: " + NOT_ALLOWED]),
    (f'[security]\nconsole_public_key = "{OTHER_KEY}"\n', ["security.console_public_key: " + NOT_ALLOWED]),
    ('[security]\nmax_command_age_s = 2592000\n', ["security.max_command_age_s: " + NOT_ALLOWED]),
    ('[paths]\nstate_dir = "/var/lib/appliance/../../etc"\n', ["paths.state_dir: " + NOT_ALLOWED]),
    ('[paths]\ncontrol_socket = "/tmp/control.sock"\n', ["paths.control_socket: " + NOT_ALLOWED]),
], ids=["allow_unsigned", "console_key", "command_age_30_days", "state_dir_dotdot", "control_socket"])
def test_boot_file_may_not_set_security_or_paths(provisioned: Path, hostile: str, reasons: list[str]) -> None:
    (provisioned / "boot/appliance-site.toml").write_text(GOOD.replace("[broker]", hostile + "[broker]"))
    previous_config_kept(provisioned, provision(provisioned), *reasons)


def test_boot_file_may_not_name_a_plain_mqtt_broker(provisioned: Path) -> None:
    (provisioned / "boot/appliance-site.toml").write_text(GOOD.replace("mqtts://broker.example:8883",
                                                                      "mqtt://evil.example:1883"))
    error = previous_config_kept(provisioned, provision(provisioned), "broker.url: mqtt:// biasa (tanpa TLS) ditolak")
    assert "mqtts://" in error


@pytest.mark.parametrize("disguised", ["m\\tqtt://evil.example:1883", "\\u0001mqtt://evil.example:1883",
                                       "mqtt\\n://evil.example:1883", "MQTT://evil.example:1883"])
def test_a_disguised_plain_mqtt_broker_is_refused_too(provisioned: Path, disguised: str) -> None:
    """urlsplit drops tabs and newlines and strips control characters: judged as the link will read it."""
    (provisioned / "boot/appliance-site.toml").write_text(GOOD.replace('"mqtts://broker.example:8883"', f'"{disguised}"'))
    error = previous_config_kept(provisioned, provision(provisioned))
    assert "broker.url" in error


def test_every_hostile_field_at_once_is_refused_with_every_reason(provisioned: Path) -> None:
    """The finding's site file: signing off, plain mqtt, another media host, 30 days, ../.., not a CA."""
    hostile = GOOD.replace("mqtts://broker.example:8883", "mqtt://evil.example") + (
        '[security]\nallow_unsigned = true\nallowed_media_hosts = ["evil.example"]\n'
        'max_command_age_s = 2592000\n[paths]\nstate_dir = "/var/lib/appliance/../.."\n')
    (provisioned / "boot/appliance-site.toml").write_text(hostile)
    (provisioned / "boot/ca.pem").write_text("not a certificate\n")
    previous_config_kept(provisioned, provision(provisioned), "security.allow_unsigned", "broker.url",
                         "security.max_command_age_s", "paths.state_dir", "ca.pem: bukan sertifikat PEM")
    assert not (provisioned / "state/ca.pem").exists()


def test_boot_file_may_set_the_media_hosts_as_plain_host_names(provisioned: Path) -> None:
    """Allowed: every media URL still comes in a command signed with the image's console key."""
    site = GOOD + '[security]\nallowed_media_hosts = ["media2.example.go.id", "10.20.0.5"]\n'
    (provisioned / "boot/appliance-site.toml").write_text(site)
    assert provision(provisioned).returncode == 0
    assert (provisioned / "state/site.toml").read_text() == site

    (provisioned / "boot/appliance-site.toml").write_text(GOOD + '[security]\nallowed_media_hosts = ["*"]\n')
    refused = provision(provisioned)
    assert refused.returncode == 2
    assert "'*' bukan nama host biasa" in refused.stderr


def test_boot_file_may_repeat_what_the_image_says(provisioned: Path) -> None:
    """appliance-console writes the console key and the topic prefix into every site file: accepted
    while they are the image's own values (a different key is refused, above)."""
    site = GOOD.replace("[broker]", f'[security]\nconsole_public_key = "{CONSOLE_KEY}"\nallow_unsigned = false\n'
                        '[broker]\ntopic_prefix = "rapat/v1"')
    (provisioned / "boot/appliance-site.toml").write_text(site)
    result = provision(provisioned)
    assert result.returncode == 0, result.stderr


def test_boot_file_may_not_set_other_sections(provisioned: Path) -> None:
    (provisioned / "boot/appliance-site.toml").write_text(GOOD + '[panel]\nbackend = "mock"\n')
    previous_config_kept(provisioned, provision(provisioned), "panel.backend: " + NOT_ALLOWED)


def test_an_unknown_wifi_key_is_refused_like_any_other(provisioned: Path) -> None:
    """[wifi] is the site file's own (tests/test_provision_wifi.py); its keys are checked all the same."""
    (provisioned / "boot/appliance-site.toml").write_text(GOOD + '[wifi]\nssid = "kantor"\nchannel = 6\n')
    previous_config_kept(provisioned, provision(provisioned), "wifi.channel")


@pytest.mark.parametrize("ca, reason", [
    (b"-----BEGIN CERTIFICATE-----\nZmFrZQ==\n-----END CERTIFICATE-----\n", "bukan sertifikat PEM"),
    (b"garbage\n", "bukan sertifikat PEM"),
    (SERVER_PEM, "berisi sertifikat yang bukan sertifikat CA (CN=broker.example)"),
    (CA_PEM + SERVER_PEM, "berisi sertifikat yang bukan sertifikat CA (CN=broker.example)"),
], ids=["fake_pem", "garbage", "server_cert", "ca_then_server_cert"])
def test_ca_beside_the_site_file_must_be_a_ca_certificate(provisioned: Path, ca: bytes, reason: str) -> None:
    with_ca = GOOD.replace('password = "s3cret"', f'password = "s3cret"\nca_file = "{provisioned}/state/ca.pem"')
    (provisioned / "boot/appliance-site.toml").write_text(with_ca)
    (provisioned / "boot/ca.pem").write_bytes(ca)
    previous_config_kept(provisioned, provision(provisioned), f"{provisioned}/boot/ca.pem: {reason}")
    assert not (provisioned / "state/ca.pem").exists()


def test_ca_file_already_on_the_device_must_be_a_ca_certificate(provisioned: Path) -> None:
    (provisioned / "etc/not-a-ca.pem").write_bytes(SERVER_PEM)
    (provisioned / "boot/appliance-site.toml").write_text(
        GOOD.replace('password = "s3cret"', f'password = "s3cret"\nca_file = "{provisioned}/etc/not-a-ca.pem"'))
    previous_config_kept(provisioned, provision(provisioned), f"broker.ca_file: {provisioned}/etc/not-a-ca.pem berisi "
                         "sertifikat yang bukan sertifikat CA (CN=broker.example)")


def test_the_daemon_refuses_a_tampered_installed_site_file(tmp_path: Path, monkeypatch) -> None:
    """The installed file lives in the daemon's own state directory, which the daemon's user owns and
    so could replace: the daemon applies the same limits to it (only to that file: --config files
    still override each other freely)."""
    base, site = tmp_path / "appliance.toml", tmp_path / "site.toml"
    base.write_text(BASE)
    site.write_text(GOOD + '[security]\nallow_unsigned = true\n[paths]\nstate_dir = "/tmp"\n')
    assert appliance_config.load([str(base), str(site)])["security"]["allow_unsigned"] is True
    monkeypatch.setattr(appliance_config, "SITE_FILE", str(site))
    with pytest.raises(appliance_config.ConfigError) as refused:
        appliance_config.load([str(base), str(site)])
    assert refused.value.problems == [f"{site}: security.allow_unsigned: {NOT_ALLOWED}, bukan di berkas situs",
                                      f"{site}: paths.state_dir: {NOT_ALLOWED}, bukan di berkas situs"]
    site.write_text(GOOD)
    assert appliance_config.load([str(base), str(site)])["site"]["id"] == "kalibaru"


def test_leftover_applied_file_loses_its_password_on_the_next_boot(tree: Path) -> None:
    """An .applied file from an older version (or a power cut between rename and scrub)."""
    (tree / "boot/appliance-site.toml.applied").write_text(GOOD)
    result = provision(tree)
    assert result.returncode == 0 and "removed the broker password" in result.stderr
    assert (tree / "boot/appliance-site.toml.applied").read_text() == GOOD.replace('password = "s3cret"',
                                                                                  PASSWORD_REMOVED)


@pytest.mark.parametrize("written", [
    'broker = { url = "mqtts://broker.example:8883", username = "kalibaru", password = "s3cret" }\n'
    + GOOD[:GOOD.index("[broker]")],
    GOOD.replace('password = "s3cret"', 'password = """\ns3cret"""'),
], ids=["inline_table", "multiline_string"])
def test_applied_file_without_a_password_line_to_remove_is_emptied(tree: Path, written: str) -> None:
    (tree / "boot/appliance-site.toml").write_text(written)
    result = provision(tree)
    assert result.returncode == 0, result.stderr
    assert (tree / "boot/appliance-site.toml.applied").read_text() == CONTENT_REMOVED


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_installed_files_belong_to_root_and_only_the_daemons_group_reads_the_site_file(tree: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    # What an older version left: the site file owned by the daemon's user, 0600.
    (tree / "state/site.toml").write_text(GOOD)
    os.chown(tree / "state/site.toml", nobody.pw_uid, nobody.pw_gid)
    os.chmod(tree / "state/site.toml", 0o600)
    result = provision(tree, "--user", "nobody")
    assert result.returncode == 0, result.stderr
    info = (tree / "state/site.toml").stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, nobody.pw_gid, 0o640)  # made root's

    with_ca = GOOD.replace('password = "s3cret"', f'password = "s3cret"\nca_file = "{tree}/state/ca.pem"')
    (tree / "boot/appliance-site.toml").write_text(with_ca)
    (tree / "boot/ca.pem").write_bytes(CA_PEM)
    result = provision(tree, "--user", "nobody")
    assert result.returncode == 0, result.stderr
    info = (tree / "state/site.toml").stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, nobody.pw_gid, 0o640)
    ca = (tree / "state/ca.pem").stat()
    assert (ca.st_uid, ca.st_mode & 0o7777) == (0, 0o644)
    (tree / "boot/appliance-site.toml").write_text(BAD)
    assert provision(tree, "--user", "nobody").returncode == 2
    error = (tree / "state/provision-error.txt").stat()
    assert (error.st_uid, error.st_gid, error.st_mode & 0o7777) == (0, nobody.pw_gid, 0o640)

    # As the daemon's user (here: nobody, in its group only): it reads the file but cannot change it.
    state = os.open(tree / "state", os.O_RDONLY | os.O_DIRECTORY)  # pytest's tmp root is root's alone
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.close(os.open("site.toml", os.O_RDONLY, dir_fd=state))
            try:
                os.open("site.toml", os.O_WRONLY, dir_fd=state)
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    os.close(state)
    assert os.waitpid(child, 0)[1] == 0
