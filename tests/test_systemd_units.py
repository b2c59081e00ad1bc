"""The units in systemd/: systemd-analyze verify and security, drop-ins, sysusers/tmpfiles, and the
daemon started the way appliance.service starts it, with a real NOTIFY_SOCKET."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
PATHS = sorted(UNITS.glob("*.path"))
SECURITY_THRESHOLD = 2.5
VENV_BIN = Path(sys.executable).parent

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (Debian package systemd)")


def unit_values(path: Path, section: str, key: str) -> list[str]:
    """All values of a key (units may repeat keys, which configparser cannot represent)."""
    values, current = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            if name.strip() == key:
                values.append(value.strip())
    return values


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory) -> Path:
    """A root holding systemd's own units, ours, and launchers at the paths our ExecStart= name
    (verify checks that the programs exist inside --root); the launchers run this checkout."""
    root = tmp_path_factory.mktemp("verify-root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for unit in SERVICES + PATHS:
        shutil.copy(unit, root / "usr/lib/systemd/system" / unit.name)
    bin_dir = root / "opt/rapat-appliance/bin"
    bin_dir.mkdir(parents=True)
    for name, target in (("appliance", VENV_BIN / "appliance"), ("python", Path(sys.executable)),
                         ("rapat-trial-guard", VENV_BIN / "rapat-trial-guard")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    (root / "usr/bin").mkdir(parents=True)  # the audio engine's launcher (Debian package dbus-daemon)
    (root / "usr/bin/dbus-run-session").write_text("#!/bin/sh\nexit 0\n")
    (root / "usr/bin/dbus-run-session").chmod(0o755)
    (root / "usr/lib/rapat-appliance").mkdir(parents=True)
    shutil.copy(UNITS / "reboot-on-request", root / "usr/lib/rapat-appliance/reboot-on-request")
    return root


@needs_systemd_analyze
def test_verify_prints_nothing(verify_root: Path) -> None:
    names = [unit.name for unit in SERVICES + PATHS]
    assert names == ["appliance-audio.service", "appliance-provision.service", "appliance-reboot.service",
                     "appliance-trial-guard.service", "appliance.service", "appliance-reboot.path"]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={verify_root}", *names],
                            capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values: any output at all is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(verify_root: Path) -> None:
    """The check above would be worthless if verify stayed silent on mistakes."""
    broken = verify_root / "usr/lib/systemd/system/broken.service"
    broken.write_text((UNITS / "appliance.service").read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = subprocess.run(["systemd-analyze", "verify", f"--root={verify_root}", "broken.service"],
                            capture_output=True, text=True)
    broken.unlink()
    assert "WatchdogSecs" in result.stdout + result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", [unit.name for unit in SERVICES])
def test_security_score_holds_threshold(unit: str) -> None:
    # --threshold takes the score times ten (0-100); the command fails above it.
    result = subprocess.run(["systemd-analyze", "security", "--offline=true",
                             f"--threshold={int(SECURITY_THRESHOLD * 10)}",
                             str(UNITS / unit)], capture_output=True, text=True)
    score = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= SECURITY_THRESHOLD
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", [unit.name for unit in SERVICES])
def test_units_keep_their_mounts_private(unit: str) -> None:
    assert unit_values(UNITS / unit, "Service", "PrivateMounts") == ["yes"]


def test_provision_unit_keeps_what_provisioning_needs() -> None:
    """Root with three capabilities: chown (root:appliance site file), writing into the daemon's 0750
    state directory, sethostname(); the boot partition, /etc and the state directory writable."""
    unit = UNITS / "appliance-provision.service"
    assert unit_values(unit, "Service", "User") == []
    assert unit_values(unit, "Service", "CapabilityBoundingSet") == ["CAP_CHOWN CAP_DAC_OVERRIDE CAP_SYS_ADMIN"]
    assert unit_values(unit, "Service", "ProtectHostname") == []  # it sets the hostname
    assert "sethostname" in unit_values(unit, "Service", "SystemCallFilter")[0].split()
    assert unit_values(unit, "Service", "ReadWritePaths") == ["/etc /var/lib/appliance /boot/firmware"]
    assert unit_values(unit, "Service", "PrivateDevices") == ["yes"]  # it touches no hardware


def test_daemon_unit_keeps_hardware_access() -> None:
    """Hardening must not cut off GPIO, camera, DRM or ALSA (measured facts in shared/STACK.md)."""
    unit = UNITS / "appliance.service"
    assert unit_values(unit, "Service", "PrivateDevices") == []
    allowed = " ".join(unit_values(unit, "Service", "DeviceAllow"))
    for device_class in ("char-gpiochip", "char-video4linux", "char-media", "char-dma_heap", "char-drm", "char-alsa"):
        assert f"{device_class} rw" in allowed
    assert unit_values(unit, "Service", "SupplementaryGroups") == ["gpio video render audio systemd-journal"]
    assert unit_values(unit, "Service", "User") == ["appliance"]
    assert unit_values(unit, "Service", "Type") == ["notify"]
    assert unit_values(unit, "Service", "Restart") == ["always"]
    assert unit_values(unit, "Unit", "StartLimitAction") == ["reboot"]
    assert unit_values(unit, "Service", "RuntimeDirectory") == ["appliance"]
    assert unit_values(unit, "Service", "StateDirectory") == ["appliance"]


def test_the_audio_engine_unit_serves_the_daemon_and_never_reboots() -> None:
    """The engine runs as the daemon's user, headless, where the daemon looks for it; restarted for
    ever (the uplink sends silence meanwhile) and never a reason to reboot."""
    engine, daemon = UNITS / "appliance-audio.service", UNITS / "appliance.service"
    assert unit_values(engine, "Service", "User") == unit_values(daemon, "Service", "User") == ["appliance"]
    assert unit_values(engine, "Service", "Restart") == ["always"]
    assert unit_values(engine, "Unit", "StartLimitIntervalSec") == ["0"]
    assert unit_values(engine, "Unit", "StartLimitAction") == []
    assert "/usr/bin/pipewire" in unit_values(engine, "Unit", "ConditionPathExists")
    assert unit_values(engine, "Service", "DeviceAllow") == ["char-alsa rw"]
    runtime = "/run/" + unit_values(engine, "Service", "RuntimeDirectory")[0]
    env = {}
    for value in unit_values(engine, "Service", "Environment"):
        env.update(item.split("=", 1) for item in shlex.split(value))
    assert env["PIPEWIRE_RUNTIME_DIR"] == env["XDG_RUNTIME_DIR"] == runtime
    assert unit_environment()["PULSE_SERVER"] == f"unix:{runtime}/pulse/native"
    assert unit_environment()["PIPEWIRE_RUNTIME_DIR"] == runtime
    assert "appliance-audio.service" in unit_values(daemon, "Unit", "Wants")[-1].split()
    config_home = Path(env["XDG_CONFIG_HOME"])
    assert config_home == Path("/usr/share/rapat-appliance/audio")
    assert (UNITS / "audio/pipewire/rapat-engine.conf").exists()  # what `-c rapat-engine.conf` finds there


def test_reboot_requests_reach_a_root_unit_that_only_reboots(tmp_path: Path) -> None:
    """The daemon asks by writing a file where the path unit looks; the script reboots once per request,
    with the firmware's tryboot flag only when asked for it (systemctl is a recorder here)."""
    path_unit, daemon = UNITS / "appliance-reboot.path", UNITS / "appliance.service"
    runtime = "/run/" + unit_values(daemon, "Service", "RuntimeDirectory")[0]
    assert unit_values(path_unit, "Path", "PathExists") == [f"{runtime}/reboot-request"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    request = tmp_path / "reboot-request"
    for kind in ("tryboot\n", "normal\n", "tryboot; rm -rf /\n"):
        request.write_text(kind)
        subprocess.run([str(UNITS / "reboot-on-request"), str(request)], env=env, check=True)
        assert not request.exists()
    subprocess.run([str(UNITS / "reboot-on-request"), str(request)], env=env, check=True)  # no request: nothing
    assert (tmp_path / "calls").read_text().splitlines() == ["reboot --reboot-argument=0 tryboot", "reboot", "reboot"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to run with the unit's capabilities")
def test_the_reboot_unit_can_read_the_daemons_request_with_only_its_own_capabilities(tmp_path: Path) -> None:
    """The request lies in the daemon's runtime directory (mode 0750, the appliance user's): root
    without CAP_DAC_OVERRIDE cannot even see it, and the path unit would fire again and again until
    systemd gives up, with no reboot (seen in the QEMU update test). Run the script as the unit runs
    it: root, bounded by the unit's CapabilityBoundingSet."""
    caps = unit_values(UNITS / "appliance-reboot.service", "Service", "CapabilityBoundingSet")[0].split()
    assert "CAP_SYS_BOOT" in caps and set(caps) <= {"CAP_SYS_BOOT", "CAP_DAC_OVERRIDE"}  # nothing else
    runtime = tmp_path / "run-appliance"
    runtime.mkdir(mode=0o750)
    os.chown(runtime, 65534, 65534)  # not root's, like /run/appliance
    request = runtime / "reboot-request"
    request.write_text("tryboot\n")
    os.chown(request, 65534, 65534)
    request.chmod(0o640)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    (bin_dir / "systemctl").chmod(0o755)
    bounding = "-all," + ",".join("+" + cap.removeprefix("CAP_").lower() for cap in caps)
    result = subprocess.run(["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--",
                             str(UNITS / "reboot-on-request"), str(request)], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["reboot --reboot-argument=0 tryboot"]
    assert not request.exists()


def test_provision_runs_before_the_daemon() -> None:
    provision = UNITS / "appliance-provision.service"
    assert unit_values(provision, "Service", "Type") == ["oneshot"]
    assert "appliance.service" in unit_values(provision, "Unit", "Before")[0].split()
    assert "appliance-provision.service" in unit_values(UNITS / "appliance.service", "Unit", "After")[0].split()


@pytest.mark.parametrize("conf, binary, section", [
    ("system.conf.d/10-rapat-watchdog.conf", "/lib/systemd/systemd", "Manager"),
    ("journald.conf.d/10-rapat-journal.conf", "/lib/systemd/systemd-journald", "Journal"),
])
def test_drop_in_keys_are_known_to_systemd(conf: str, binary: str, section: str) -> None:
    """No systemd-analyze check exists for system.conf/journald.conf: look the keys up in the parser
    tables of the installed systemd binaries instead, so a typo cannot pass silently."""
    if not os.path.exists(binary):
        pytest.skip(f"{binary} not installed (Debian package systemd)")
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read(UNITS / conf)
    assert parser.sections() == [section]
    program = Path(binary).read_bytes()
    keys = list(parser[section])
    assert keys
    for key in keys:
        assert b"\0" + key.encode() + b"\0" in program or f"{section}.{key}".encode() in program, key
    if section == "Manager":
        assert parser[section]["RuntimeWatchdogSec"] == "14"
    else:
        assert parser[section]["Storage"] == "persistent"
        assert parser[section]["SystemMaxUse"] and parser[section]["SystemKeepFree"] and parser[section]["RuntimeMaxUse"]


def test_the_daemon_logs_as_appliance_and_a_flood_is_capped() -> None:
    unit = UNITS / "appliance.service"
    assert unit_values(unit, "Service", "SyslogIdentifier") == ["appliance"]
    assert unit_values(unit, "Service", "LogRateLimitIntervalSec") == ["30s"]
    assert int(unit_values(unit, "Service", "LogRateLimitBurst")[0]) <= 1000  # journald's default is 10,000


def test_the_card_sees_the_journal_no_more_often_than_journald_syncs_it() -> None:
    """The sysctl drop-in names a real kernel setting (/proc/sys), and the kernel's writeback of unsynced
    pages waits as long as journald's own sync interval: without it, journald's pages reach the card
    every 30 s whatever SyncIntervalSec says (benchmarks/bench_journal.py)."""
    settings = {}
    for line in (UNITS / "sysctl.d/60-rapat-card-wear.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = int(value)
    assert list(settings) == ["vm.dirty_expire_centisecs"]
    assert Path("/proc/sys", *"vm.dirty_expire_centisecs".split(".")).exists()
    assert unit_values(UNITS / "journald.conf.d/10-rapat-journal.conf", "Journal", "SyncIntervalSec") == ["15min"]
    assert settings["vm.dirty_expire_centisecs"] == 15 * 60 * 100


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_and_tmpfiles_create_user_and_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "etc/group").write_text("root:x:0:\naudio:x:29:\nvideo:x:44:\n")
    for kind in ("sysusers.d", "tmpfiles.d"):
        shutil.copytree(UNITS / kind, tmp_path / "usr/lib" / kind)
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "rapat-appliance.conf"], check=True, capture_output=True)
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", "rapat-appliance.conf"], check=True)
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert users["appliance"][6] == "/usr/sbin/nologin"
    assert int(users["appliance"][2]) < 1000  # a system user
    for group in ("gpio", "video", "render", "audio"):
        assert "appliance" in groups[group][3].split(","), group
    state = (tmp_path / "var/lib/appliance").stat()
    assert (state.st_mode & 0o777, state.st_uid) == (0o750, int(users["appliance"][2]))
    etc = (tmp_path / "etc/appliance").stat()
    assert (etc.st_mode & 0o777, etc.st_uid, etc.st_gid) == (0o750, 0, int(groups["appliance"][2]))


# --- The daemon as the unit starts it ------------------------------------------------------------

def exec_start_argv() -> list[str]:
    """ExecStart= of appliance.service, with the image's venv replaced by this checkout's."""
    argv = shlex.split(unit_values(UNITS / "appliance.service", "Service", "ExecStart")[0])
    assert argv[0] == "/opt/rapat-appliance/bin/appliance"
    return [str(VENV_BIN / "appliance"), *argv[1:]]


def unit_environment() -> dict[str, str]:
    env = {}
    for value in unit_values(UNITS / "appliance.service", "Service", "Environment"):
        env.update(item.split("=", 1) for item in shlex.split(value))
    return env


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        end = time.monotonic() + seconds
        got = []
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            for line in data.decode().splitlines():
                got.append((time.monotonic(), line))
        self.messages += got
        return got

    def wait_for(self, line: str, seconds: float) -> float:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for stamp, seen in self.collect(min(0.5, end - time.monotonic())):
                if seen == line:
                    return stamp
        raise AssertionError(f"no {line} within {seconds}s; got {[m for _, m in self.messages][-10:]}")


def control(path: Path, request: dict, timeout: float = 10) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


@pytest.mark.skipif(not (VENV_BIN / "appliance").exists(), reason="appliance not installed in the venv (make setup)")
def test_daemon_notifies_ready_then_watchdog_and_a_hung_loop_stops_the_pings(tmp_path: Path) -> None:
    state, run_dir = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run_dir.mkdir()
    config = tmp_path / "appliance.toml"
    config.write_text(f"""[site]\nid = "unit-test"\nkind = "desa"\n[broker]\nurl = "mqtt://127.0.0.1:9"\n
[security]\nallow_unsigned = true\n[panel]\nbackend = "mock"\n[camera]\nbackend = "none"\n
[display]\nbackend = "none"\n[paths]\nstate_dir = "{state}"\ncontrol_socket = "{run_dir}/control.sock"\n""")
    notify = NotifySocket(tmp_path / "notify.sock")
    # What systemd passes: NOTIFY_SOCKET, and WATCHDOG_USEC from WatchdogSec= (1 s here to keep it short).
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
           "APPLIANCE_CONFIG": str(config), "APPLIANCE_DEBUG_HOOKS": "1", **unit_environment()}
    process = subprocess.Popen(exec_start_argv(), env=env, cwd=state, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        ready_at = notify.wait_for("READY=1", 30)
        assert (run_dir / "control.sock").exists()  # READY only once the control socket listens
        pings = [stamp for stamp, line in notify.collect(2.6) if line == "WATCHDOG=1"]
        assert len(pings) >= 4, notify.messages
        gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 0.8, gaps  # every WATCHDOG_USEC/2
        assert any(line == "WATCHDOG=1" and stamp > ready_at for stamp, line in notify.messages)

        hang_started = time.monotonic()
        assert control(run_dir / "control.sock", {"cmd": "debug.hang", "seconds": 3}) == {"ok": True}
        hang_ended = time.monotonic()
        assert hang_ended - hang_started >= 2.9
        during = [stamp for stamp, line in notify.collect(0.1)
                  if line == "WATCHDOG=1" and hang_started + 0.1 < stamp < hang_ended - 0.1]
        assert during == []  # systemd would have killed it after WatchdogSec
        notify.wait_for("WATCHDOG=1", 3)  # and pings resume once the loop runs again
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode(errors="replace")
    assert process.returncode in (0, -15), output
