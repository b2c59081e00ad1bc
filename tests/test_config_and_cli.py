"""Layered configuration, its error lines, and the local commands' exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import ConfigError, config_files, load
from tests.support.site import REPO, ConsoleKey

KEY = ConsoleKey().public_b64
BASE = f"""
[site]
id = "kalibaru"
kind = "kecamatan"
[broker]
url = "mqtts://broker.example:8883"
[security]
console_public_key = "{KEY}"
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def appliance(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("APPLIANCE_CONFIG", "APPLIANCE_LANG")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
                          cwd=REPO, env=environment, timeout=30)


def test_later_files_override_key_by_key(tmp_path: Path) -> None:
    base = write(tmp_path / "appliance.toml", BASE + '[panel]\nhold_s = 2.5\nbutton_pin = 5\n')
    site = write(tmp_path / "site.toml", '[panel]\nhold_s = 4\n[site]\nname = "Kalibaru"\n')
    config = load([base, site])
    assert config["panel"]["hold_s"] == 4 and config["panel"]["button_pin"] == 5
    assert config["site"]["name"] == "Kalibaru" and config["site"]["id"] == "kalibaru"
    assert config["camera"]["backend"] == "picamera2" and config["time"]["timezone"] == "Asia/Jakarta"
    assert config.where("panel", "hold_s") == site


def test_every_problem_named_with_file_and_key(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", """
[site]
id = "Kali Baru"
kind = "kota"
[broker]
url = "http://broker"
keepalive_s = "30"
[security]
console_public_key = "not-base64!"
[panel]
hold_s = 100
colour = "red"
[gpio]
x = 1
""")
    with pytest.raises(ConfigError) as caught:
        load([bad])
    problems = caught.value.problems
    expected = ["site.id", "site.kind", "broker.url", "broker.keepalive_s", "security.console_public_key",
                "panel.hold_s", "panel.colour", "[gpio]"]
    for key in expected:
        assert any(line.startswith(f"{bad}: {key}") for line in problems), (key, problems)
    assert len(problems) == len(expected)


def test_missing_required_and_cross_checks(tmp_path: Path) -> None:
    path = write(tmp_path / "partial.toml", '[broker]\nurl = "mqtt://b"\npassword = "x"\npassword_file = "/p"\n'
                                            'ca_file = "/ca.pem"\n')
    with pytest.raises(ConfigError) as caught:
        load([path])
    text = "\n".join(caught.value.problems)  # a problem is its Bahasa Indonesia line; text("en") the English one
    english = "\n".join(problem.text("en") for problem in caught.value.problems)
    assert "site.id: wajib diisi, tetapi tidak ada" in text and "site.id: required but missing" in english
    assert "security.console_public_key: wajib diisi kecuali security.allow_unsigned" in text
    assert "security.console_public_key: required unless security.allow_unsigned" in english
    assert "jangan keduanya" in text and "not both" in english
    assert "berkas TLS memerlukan broker.url mqtts://" in text and "TLS files need an mqtts://" in english
    assert [problem.code for problem in caught.value.problems] == [
        "config.required", "config.console_key_required", "config.password_twice", "config.tls_needs_mqtts"]


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.toml", "[site\nid=1")
    with pytest.raises(ConfigError) as caught:
        load([broken, str(tmp_path / "absent.toml")])
    assert caught.value.problems[0].startswith(f"{broken}: bukan TOML yang sah")
    assert caught.value.problems[0].text("en").startswith(f"{broken}: not valid TOML")
    assert "absent.toml: berkas tidak bisa dibaca" in caught.value.problems[1]
    assert "absent.toml: cannot read the file" in caught.value.problems[1].text("en")


def test_config_files_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_files(["a", "b"], {}) == (["a", "b"], True)
    assert config_files(None, {"APPLIANCE_CONFIG": "x.toml:y.toml"}) == (["x.toml", "y.toml"], True)


def test_simulate_fills_only_unnamed_backends(tmp_path: Path) -> None:
    path = write(tmp_path / "sim.toml", BASE + '[camera]\nbackend = "none"\n')
    config = load([path], simulate=True)
    assert config["panel"]["backend"] == "mock" and config["camera"]["backend"] == "none"
    assert config["display"]["backend"] == "vlc"


def test_check_config_cli(tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", BASE)
    result = appliance("check-config", good)
    assert result.returncode == 0 and result.stdout == "OK: situs kalibaru (kecamatan), broker mqtts://broker.example:8883\n"
    assert "OK: site kalibaru" in appliance("check-config", "--lang", "en", good).stdout
    bad = write(tmp_path / "bad.toml", BASE.replace('"kecamatan"', '"kota"'))
    result = appliance("check-config", good, bad)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{bad}: site.kind: harus salah satu dari kecamatan, desa, other, bukan 'kota'"


def test_check_config_speaks_english_when_asked(tmp_path: Path) -> None:
    """Bahasa Indonesia first; English with --lang en or APPLIANCE_LANG=en, same file, key and exit code."""
    bad = write(tmp_path / "bad.toml", BASE.replace('"kecamatan"', '"kota"') + '[wifi]\nssid = "Kantor"\npsk = "short"\n')
    english = [f"{bad}: site.kind: must be one of kecamatan, desa, other, not 'kota'",
               f"{bad}: wifi.psk: a WPA passphrase is 8-63 characters (this one has 5), or 64 hex digits"]
    for result in (appliance("check-config", "--lang", "en", bad), appliance("check-config", bad, env={"APPLIANCE_LANG": "en"})):
        assert result.returncode == 2 and result.stderr.splitlines() == english
    indonesian = appliance("check-config", bad, env={"LANG": "en_GB.UTF-8"})  # Pi OS's default locale is not a choice
    assert indonesian.returncode == 2 and indonesian.stderr.splitlines() == [
        f"{bad}: site.kind: harus salah satu dari kecamatan, desa, other, bukan 'kota'",
        f"{bad}: wifi.psk: kata sandi WPA 8-63 karakter (yang ini 5), atau 64 digit heksadesimal"]
    started = appliance("run", "--lang", "en", "--config", bad)
    assert started.returncode == 2 and started.stderr.splitlines() == english


def test_run_with_invalid_config_exits_2_without_starting(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", BASE.replace('id = "kalibaru"', 'id = ""'))
    result = appliance("run", "--config", bad)
    assert result.returncode == 2 and "site.id" in result.stderr


def test_run_reads_appliance_config_env(tmp_path: Path) -> None:
    bad = write(tmp_path / "env.toml", BASE.replace("mqtts://", "ftp://"))
    result = appliance("run", env={"APPLIANCE_CONFIG": bad})
    assert result.returncode == 2 and f"{bad}: broker.url" in result.stderr


def test_run_refuses_missing_password_file(tmp_path: Path) -> None:
    path = write(tmp_path / "pw.toml", BASE.replace('url = "mqtts://broker.example:8883"',
                                                    f'url = "mqtts://broker.example:8883"\npassword_file = "{tmp_path}/nope"'))
    assert appliance("check-config", path).returncode == 0  # a laptop lacks the device's files
    result = appliance("run", "--config", path)
    assert result.returncode == 2 and "broker.password_file" in result.stderr and "nope tidak ada" in result.stderr


def test_local_commands_without_daemon_exit_3(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", BASE + f'[paths]\ncontrol_socket = "{tmp_path}/none.sock"\n')
    for command in ("status", "press", "join", "leave"):
        result = appliance(command, "--config", path)
        assert result.returncode == 3, (command, result.stderr)
        assert "no daemon answers" in result.stderr


def test_version_without_daemon_is_not_a_failure(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", BASE + f'[paths]\ncontrol_socket = "{tmp_path}/none.sock"\n')
    result = appliance("version", "--config", path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.splitlines() == ["installed: 0.1.0", f"running: - (no daemon answers on {tmp_path}/none.sock)"]


def test_local_commands_against_running_daemon(start_site) -> None:
    daemon = start_site("kalibaru")
    config = str(daemon.config)
    status = appliance("status", "--config", config)
    assert status.returncode == 0 and "idle" in status.stdout and "health.broker" in status.stdout
    as_json = appliance("status", "--json", "--config", config)
    assert '"state": "idle"' in as_json.stdout
    refused = appliance("join", "--config", config)
    assert refused.returncode == 1 and "no meeting has been announced" in refused.stderr
    assert appliance("leave", "--config", config).returncode == 0
    pressed = appliance("press", "--config", config)
    assert pressed.returncode == 0 and "state: idle" in pressed.stdout
    assert appliance("press", "--hold", "-1", "--config", config).returncode == 1
    version = appliance("version", "--config", config)
    assert version.returncode == 0 and "running: 0.1.0" in version.stdout
    assert os.stat(daemon.socket).st_mode & 0o777 == 0o660
