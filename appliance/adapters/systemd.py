"""sd_notify and journald, each used only when systemd is really there."""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


class Notifier:
    """READY/WATCHDOG/STATUS to systemd; systemd-python when importable, a raw datagram otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET", "")
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        pid_matches = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval_s = int(watchdog_usec) / 1e6 / 2 if watchdog_usec.isdigit() and pid_matches else None
        self._systemd_notify = None
        try:
            from systemd import daemon  # noqa: PLC0415 - optional, Pi-side package

            self._systemd_notify = daemon.notify
        except ImportError:
            pass

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        if self._systemd_notify is not None:
            return bool(self._systemd_notify(message))
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self) -> None:
        self.notify("READY=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")


def under_systemd(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


def setup_logging(level: int = logging.INFO) -> str:
    """Log to the journal under systemd, to stderr otherwise; return which one was chosen."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    if under_systemd():
        try:
            from systemd.journal import JournalHandler  # noqa: PLC0415

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="appliance"))
            return "journal"
        except ImportError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return "stderr"
