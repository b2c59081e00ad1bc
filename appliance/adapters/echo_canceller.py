"""The echo canceller's process, kept running by the audio watcher (`audio.py`), and the site's
measured echo delay it is told (`echo-delay.json` in the state directory, written by the self-test).

The canceller is a PipeWire client (`pipewire -c <conf>`, settings from `media/echo_canceller.py`).
It does not survive the engine: when the engine restarts, the old process stays alive with a dead
connection, so the watcher restarts it whenever the engine answers without the canceller's nodes,
whenever its microphone or speaker changed, and whenever the self-test measured a new delay.
Spawned and stopped only from the watcher's thread (PR_SET_PDEATHSIG follows the spawning thread).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.adapters.storage import write_atomic
from appliance.media import echo_canceller, proc

log = logging.getLogger("appliance.audio")

DELAY_FILE = "echo-delay.json"
# A canceller that keeps dying is restarted no faster than this (its log line once per restart).
MIN_RESTART_INTERVAL_S = 5.0


def delay_path(state_dir: str) -> Path:
    return Path(state_dir) / DELAY_FILE


def load_delay(state_dir: str) -> float | None:
    """The measured echo delay in seconds; None before the first measurement (or for a bad file,
    which the next self-test replaces)."""
    path = delay_path(state_dir)
    try:
        delay = float(json.loads(path.read_text())["delay_s"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s (%s): the canceller runs uncalibrated until the next self-test", path, exc)
        return None
    if not echo_canceller.MIN_DELAY_S <= delay <= echo_canceller.MAX_DELAY_S:
        log.warning("ignoring %s: %.3f s is not an echo delay", path, delay)
        return None
    return delay


def save_delay(state_dir: str, delay_s: float, measured_at: str) -> None:
    body = {"delay_s": round(delay_s, 4), "measured_at": measured_at}
    write_atomic(delay_path(state_dir), (json.dumps(body) + "\n").encode(), mode=0o640)


@dataclass(frozen=True)
class CancellerTargets:
    microphone: str | None
    speaker: str | None
    delay_s: float | None


class CancellerProcess:
    def __init__(self, state_dir: str, conf_dir: str, *, spawn: Callable[..., Any] = proc.spawn) -> None:
        self.state_dir = state_dir
        self.conf_path = Path(conf_dir) / "echo-cancel.conf"
        self._spawn = spawn
        self.child: subprocess.Popen | None = None
        self.targets: CancellerTargets | None = None
        self.restarts = 0
        self._started_at = -MIN_RESTART_INTERVAL_S

    def wanted(self, microphone: str | None, speaker: str | None) -> CancellerTargets:
        return CancellerTargets(microphone, speaker, load_delay(self.state_dir))

    def needs_start(self, wanted: CancellerTargets, loaded: bool) -> bool:
        running = self.child is not None and self.child.poll() is None
        return not (running and loaded and self.targets == wanted)

    def may_start(self) -> bool:
        """False while the last start is too recent to try again (a canceller that keeps dying)."""
        return time.monotonic() - self._started_at >= MIN_RESTART_INTERVAL_S

    def start(self, wanted: CancellerTargets) -> None:
        """Start the canceller for `wanted` (stop the previous one first, and let its nodes go)."""
        self.stop()
        args = echo_canceller.module_args(capture_target=wanted.microphone, playback_target=wanted.speaker,
                                          play_delay_s=wanted.delay_s)
        self.conf_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.conf_path, echo_canceller.client_conf(args).encode(), mode=0o640)
        delay = f"echo delay {wanted.delay_s * 1000:.0f} ms" if wanted.delay_s is not None else "uncalibrated"
        log.info("starting the echo canceller: microphone %s, speaker %s, %s",
                 wanted.microphone or "(default)", wanted.speaker or "(default)", delay)
        self.child = self._spawn(["pipewire", "-c", str(self.conf_path)], stdout=subprocess.DEVNULL)
        self.targets = wanted
        self.restarts += 1
        self._started_at = time.monotonic()

    def stop(self) -> None:
        proc.kill(self.child, 1.0)
        self.child = None
        self.targets = None

    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.poll() is None else None


def describe_delay(state_dir: str) -> str:
    delay = load_delay(state_dir)
    return (f"echo delay {delay * 1000:.0f} ms" if delay is not None
            else "echo delay not measured yet: run the self-test with the TV's sound on")


def config_dirs(config: Any) -> tuple[str, str]:
    """(state dir, where the canceller's generated configuration goes: beside the control socket,
    in the daemon's runtime directory)."""
    return config["paths"]["state_dir"], os.path.dirname(config["paths"]["control_socket"]) or "."
