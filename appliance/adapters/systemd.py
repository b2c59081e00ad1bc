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


# The syslog priority journald gives a line that starts with "<N>" (SyslogLevelPrefix=, on by default).
SYSLOG_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class JournalLineFormatter(logging.Formatter):
    """For stderr when it is the unit's journal stream: the record's syslog priority as a "<N>" prefix on
    every line, so journald files each line (a traceback's too) at the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((number for level, number in SYSLOG_PRIORITY if record.levelno >= level), 7)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when systemd connected stderr to the journal: $JOURNAL_STREAM names stderr's device:inode."""
    environ = os.environ if environ is None else environ
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return environ.get("JOURNAL_STREAM", "") == f"{stat.st_dev}:{stat.st_ino}"


def setup_logging(level: int = logging.INFO) -> str:
    """Log to the journal under systemd, to stderr otherwise; return which one was chosen.

    Under systemd the lines go to the journal through the unit's stderr stream, each with its priority
    prefix, rather than python-systemd's JournalHandler: a stream entry carries one field that changes
    with every line (MESSAGE), a native one three more (the source timestamp journald adds, the
    handler's CODE_LINE and CODE_ARGS), and each such value lands on a scattered page of the journal
    file on the SD card. Measured: the day's journal writes to the card about halve
    (benchmarks/bench_journal.py, docs/performance.md "The journal on the card")."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    if stderr_is_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalLineFormatter("%(message)s"))
        root.addHandler(handler)
        return "journal"
    if under_systemd():  # stderr goes elsewhere (a terminal, a file): the native protocol then
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
