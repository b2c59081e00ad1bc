"""Free loopback ports and waiting for a listener: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import socket
from pathlib import Path

from appliance_dev.waiting import wait_until


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def udp_bound(port: int) -> bool:
    """Whether a UDP socket is bound to `port` (an SRT listener, which answers no probe before a handshake)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        path = Path(table)
        if path.exists():
            lines = path.read_text().splitlines()[1:]
            if any(line.split()[1].endswith(suffix) for line in lines):
                return True
    return False


def wait_for_port(port: int, timeout_s: float = 5.0) -> None:
    wait_until(lambda: listening(port), timeout_s, what=f"a listener on 127.0.0.1:{port}", interval=0.02)


def wait_for_udp_port(port: int, timeout_s: float = 5.0) -> None:
    wait_until(lambda: udp_bound(port), timeout_s, what=f"a UDP socket bound to port {port}", interval=0.02)
