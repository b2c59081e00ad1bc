"""The microphone's runtime gain inside a running ffmpeg: the filters, and the worker that changes it.

The audio chain is `azmq` (a ZeroMQ REP socket at `ipc://` in a private 0700 directory of the
uplink session, one socket per ffmpeg) followed by `volume@mic`. Each ffmpeg starts with the gain
wanted at that moment (`microphone_filters`); a change is sent by `MicrophoneControl`, a small
worker thread of the session, and confirmed by ffmpeg's "0 Success". When ffmpeg cannot be told,
that ffmpeg is killed and the session's next one starts at the wanted gain: the mute fails closed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from appliance.media import proc

if TYPE_CHECKING:
    from appliance.media.uplink import _Session

log = logging.getLogger("appliance.uplink")

MIC_REPLY_S = 1.0        # a running ffmpeg that has not confirmed a gain change by then is restarted at that gain
MIC_POLL_S = 0.05

MIC_FILTER = "volume@mic"  # the instance the control socket addresses: "volume@mic volume 0|1"


def microphone_filters(live: bool, control_socket: str | None = None) -> str:
    """The audio filters between the microphone and the AAC encoder: the runtime gain.

    `volume@mic` starts at 1 (live) or 0 (muted). With `control_socket` (a path), an `azmq` filter
    in front of it listens there for commands; without, the gain is fixed (the self-test, baselines).
    """
    gain = f"{MIC_FILTER}=volume={1 if live else 0}"
    if control_socket is None:
        return gain
    return f"azmq=bind_address={_filter_value('ipc://' + control_socket)},{gain}"


def _filter_value(value: str) -> str:
    """`value` as one option value inside a filtergraph text (ffmpeg unescapes it twice).

    First for the filter's option parser (`:` separates options, so the colon of `ipc:` is `\\:`),
    then for the graph parser (which would take `,;[]` as its own). No shell is involved: argv.
    """
    value = "".join("\\" + char if char in "\\':" else char for char in value)
    return "".join("\\" + char if char in "\\'[],;" else char for char in value)


class Attempt:
    """One ffmpeg of a session, as the microphone worker sees it (guarded by the session's `cond`)."""

    def __init__(self, child: subprocess.Popen, control_socket: str, gain: bool) -> None:
        self.child = child
        self.control_socket = control_socket
        self.gain = gain                      # its gain now: the one on its command line, then each confirmed change
        self.live_at: float | None = None     # when it first sent bytes (its audio filters exist by then)
        self.restart_reason: str | None = None


class MicrophoneControl(threading.Thread):
    """The session's worker that tells its running ffmpeg the wanted gain, so no caller waits on ffmpeg.

    One REQ socket per change (LINGER 0): a REQ that missed its reply cannot be reused. The reply
    must begin with "0 Success". An ffmpeg that is still starting gets the command once its azmq
    binds (ZeroMQ queues it); the `MIC_REPLY_S` clock runs from when it is live. No confirmation in
    time, an error reply or no socket: that ffmpeg is killed and the next starts at the wanted gain.
    """

    def __init__(self, session: _Session) -> None:
        super().__init__(name="uplink-mic", daemon=True)
        self.session = session

    def run(self) -> None:
        session = self.session
        while True:
            with session.cond:
                while not session.stopping.is_set() and not self._due():
                    session.cond.wait()
                if session.stopping.is_set():
                    return
                attempt = session.attempt
                live = session.owner.microphone_wanted
            assert attempt is not None
            started = time.monotonic()
            ok, why = self._tell(attempt, live)
            state = "live" if live else "muted"
            with session.cond:
                if ok:
                    attempt.gain = live
                    log.info("microphone %s (confirmed by the encoder in %.0f ms)", state,
                             1000 * (time.monotonic() - started))
                    continue
                if session.attempt is not attempt or session.stopping.is_set():
                    continue  # that ffmpeg is gone; the next one starts at the gain wanted by then
                attempt.restart_reason = f"the encoder did not confirm the microphone {state} ({why})"
                # Under `cond`: the session has not reaped this child yet, so its pid is still its own.
                try:
                    os.killpg(attempt.child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log.warning("uplink: %s; restarting the encoder with the microphone %s", attempt.restart_reason, state)

    def _due(self) -> bool:
        attempt = self.session.attempt
        return (attempt is not None and attempt.restart_reason is None
                and attempt.gain != self.session.owner.microphone_wanted)

    def _tell(self, attempt: Attempt, gain: bool) -> tuple[bool, str]:
        try:
            import zmq  # noqa: PLC0415 - lazily: ~25 ms on x86, more on a Pi, and only needed once a meeting has a floor
        except ImportError as exc:
            return False, f"pyzmq is not installed: {exc}"
        session = self.session
        with session.cond:
            live = attempt.live_at is not None
        if live and not os.path.exists(attempt.control_socket):  # azmq binds before any byte goes out
            return False, "its control socket is gone"
        sock = zmq.Context.instance().socket(zmq.REQ)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 20)  # ffmpeg may bind just after this connects
            sock.setsockopt(zmq.SNDTIMEO, int(MIC_REPLY_S * 1000))
            sock.connect("ipc://" + attempt.control_socket)
            sock.send_string(f"{MIC_FILTER} volume {1 if gain else 0}")
            sent = time.monotonic()
            while not sock.poll(int(MIC_POLL_S * 1000)):
                with session.cond:
                    if session.attempt is not attempt or session.stopping.is_set():
                        return False, "ffmpeg ended"
                    since = max(sent, attempt.live_at) if attempt.live_at is not None else None
                if since is not None and time.monotonic() - since > MIC_REPLY_S:
                    return False, f"no answer within {MIC_REPLY_S:g} s"
            reply = sock.recv(zmq.NOBLOCK).decode(errors="replace").strip()
        except zmq.ZMQError as exc:
            return False, f"control socket: {exc}"
        finally:
            sock.close(linger=0)
        if not reply.startswith("0 Success"):
            return False, f"ffmpeg answered {reply!r}"
        return True, reply


def control_parent() -> str | None:
    """Where the session's private control directory goes: systemd's RuntimeDirectory (emptied when
    the service stops, even after a SIGKILL), else /dev/shm or the temp directory."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return runtime if runtime and os.access(runtime, os.W_OK) else proc.scratch_dir()
