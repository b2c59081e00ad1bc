"""sd_notify without systemd: READY, STATUS and WATCHDOG arrive on a real datagram socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from appliance_dev.broker import Mosquitto
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.site import ConsoleKey


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[tuple[float, str]]:
    received: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        received.append((time.monotonic(), data))
        if wanted in data:
            break
    return received


def test_ready_status_and_watchdog(tmp_path: Path, broker: Mosquitto, console_key: ConsoleKey) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        config = site_config(tmp_path, "kalibaru", broker.url, console_key.public_b64)
        daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"})
        started = time.monotonic()
        daemon.start(wait=False)
        try:
            messages = receive_until(sock, "READY=1", timeout=10)
            assert any("READY=1" in text for _, text in messages), messages
            ready_at = next(at for at, text in messages if "READY=1" in text)
            assert ready_at - started < 10
            # The control socket listens by the time READY is sent.
            assert daemon.control({"cmd": "version"})["ok"]
            later = receive_until(sock, "never", timeout=2.2)
            watchdogs = [at for at, text in later if "WATCHDOG=1" in text]
            assert len(watchdogs) >= 3  # every 0.5 s for WATCHDOG_USEC = 1 s
            assert any(text.startswith("STATUS=") for _, text in messages + later)
        finally:
            daemon.stop()


def test_hung_loop_stops_watchdog(tmp_path: Path, broker: Mosquitto, console_key: ConsoleKey) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        config = site_config(tmp_path, "kalibaru", broker.url, console_key.public_b64)
        daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000",
                                            "APPLIANCE_DEBUG_HOOKS": "1"}).start(wait=False)
        try:
            receive_until(sock, "READY=1", timeout=10)
            import threading

            hang = threading.Thread(target=daemon.control, args=({"cmd": "debug.hang", "seconds": 2.0},))
            hang.start()
            time.sleep(0.3)  # deliberate: the hang begins; only the missing pings show it, and they are the test
            during = receive_until(sock, "never", timeout=1.5)
            hang.join()
            after = receive_until(sock, "never", timeout=1.0)
            assert not [text for _, text in during if "WATCHDOG=1" in text]
            assert [text for _, text in after if "WATCHDOG=1" in text]
        finally:
            daemon.stop()


def test_debug_hang_is_refused_without_the_hook(start_site) -> None:
    daemon = start_site("kalibaru")
    reply = daemon.control({"cmd": "debug.hang", "seconds": 5})
    assert reply["ok"] is False
