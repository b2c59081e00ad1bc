"""The audio engine as appliance-audio.service starts it (its ExecStart= and Environment=, with the
image's paths moved into a temporary directory): one command brings up PipeWire, WirePlumber and the
PulseAudio protocol headless, where the daemon's unit looks for them; the daemon's echo canceller
runs on it; killing the engine takes all of it down (so systemd's restart brings all of it back).
systemd itself, the user and the sandbox are not here: docs/media.md says what has not run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from appliance.adapters.audio import AudioEngine
from appliance_dev.waiting import wait_until
from tests.test_systemd_units import UNITS, unit_environment, unit_values

ENGINE_UNIT = UNITS / "appliance-audio.service"


def _moved(value: str, tmp: Path) -> str:
    return (value.replace("/usr/share/rapat-appliance/audio", str(UNITS / "audio"))
            .replace("/usr/lib/rapat-appliance/audio-engine", str(UNITS / "audio/rapat-audio-engine"))
            .replace("/run/appliance-audio", str(tmp / "run")).replace("/var/lib/appliance-audio", str(tmp / "state")))


@pytest.fixture
def engine(tmp_path: Path):  # noqa: ANN201
    for sub in ("run", "state"):
        (tmp_path / sub).mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    for value in unit_values(ENGINE_UNIT, "Service", "Environment"):
        env.update((key, _moved(item, tmp_path)) for key, item in (part.split("=", 1) for part in shlex.split(value)))
    argv = [_moved(arg, tmp_path) for arg in shlex.split(unit_values(ENGINE_UNIT, "Service", "ExecStart")[0])]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    client = {key: _moved(value, tmp_path) for key, value in unit_environment().items()
              if key in ("PULSE_SERVER", "PIPEWIRE_RUNTIME_DIR")}
    try:
        yield child, client
    finally:
        with_group = os.getpgid(child.pid) if child.poll() is None else None
        if with_group:
            os.killpg(with_group, signal.SIGKILL)
        child.wait(5)


def _pactl(client: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], env={**os.environ, **client}, capture_output=True, text=True, timeout=5)


def _started(child: subprocess.Popen, client: dict[str, str]) -> None:
    wait_until(lambda: _pactl(client, "info").returncode == 0, 10, what="the engine's PulseAudio protocol")
    wait_until(lambda: any("wireplumber" in cmd for cmd in _processes(child.pid)), 10,
               what=lambda: f"wireplumber started with the engine: {_processes(child.pid)}")


def _processes(session: int) -> set[str]:
    """Command lines of the processes in the engine's session (the unit's cgroup, here)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except OSError:
                continue
    return found


def test_the_engine_serves_the_daemon_headless(engine, make_config, monkeypatch) -> None:
    child, client = engine
    _started(child, client)
    assert "PipeWire" in _pactl(client, "info").stdout
    # A sound card stands in for the TV and the webcam's microphone (none on this machine).
    assert _pactl(client, "load-module", "module-null-sink", "sink_name=tv").returncode == 0
    assert _pactl(client, "load-module", "module-remap-source", "source_name=webcam_mic", "master=tv.monitor").returncode == 0

    for key, value in client.items():
        monkeypatch.setenv(key, value)
    config = make_config(camera={"test_audio": "engine"}, audio={"echo": "aec"})
    watcher = AudioEngine(config, lambda report: None)
    watcher.open()
    try:
        wait_until(lambda: watcher.health and watcher.health[0] == "ok", 15, what=lambda: f"{watcher.health}")
        assert (watcher.canceller.targets.microphone, watcher.canceller.targets.speaker) == ("webcam_mic", "tv")
        assert "rapat_echo_source" in _pactl(client, "list", "short", "sources").stdout
        os.killpg(child.pid, signal.SIGKILL)  # the whole engine goes (systemd would start it again)
        wait_until(lambda: watcher.health[0] == "error", 10, what=lambda: f"audio error: {watcher.health}")
    finally:
        watcher.close()
    assert "does not answer" in watcher.health[1] and "appliance-audio" in watcher.health[1]


@pytest.mark.parametrize("victim", ["wireplumber", "pipewire -c pipewire-pulse.conf", "pipewire -c rapat-engine.conf"])
def test_one_engine_process_ending_ends_the_engine_for_a_clean_restart(engine, victim: str) -> None:
    child, client = engine
    _started(child, client)
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
            and _cmdline(entry).endswith(victim) and os.getsid(int(entry.name)) == child.pid]
    assert len(pids) == 1, _processes(child.pid)
    os.kill(pids[0], signal.SIGKILL)
    assert child.wait(10) != 0  # the unit's main process ends: systemd restarts the whole engine
    wait_until(lambda: not _processes(child.pid), 10, what=lambda: f"nothing left behind: {_processes(child.pid)}")


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
