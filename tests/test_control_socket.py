"""The local control socket of a real daemon against careless and hostile local clients: many idle
connections, a slow sender, a deeply nested request, clients that hang up."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from appliance.adapters.control import MAX_CLIENTS, REQUEST_DEADLINE_S
from appliance_dev.site_process import REPO, DaemonProcess
from appliance_dev.waiting import wait_until


@pytest.fixture
def daemon(start_site: Callable[..., DaemonProcess]) -> DaemonProcess:
    return start_site("kalibaru")


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def connect(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)  # blocking: waits while the listen backlog is full instead of failing
    client.settimeout(10)
    return client


def receive_all(client: socket.socket) -> bytes:
    """Everything the daemon sends until it closes (a reset after its answer counts as a close)."""
    data = b""
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def exchange(path: str, line: bytes) -> bytes:
    with connect(path) as client:
        client.sendall(line)
        client.shutdown(socket.SHUT_WR)
        return receive_all(client)


def one_reply(data: bytes) -> dict:
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data[:200]
    reply = json.loads(data)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool), reply
    return reply


def cli_status(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "status", "--config", str(daemon.config)],
                          capture_output=True, text=True, timeout=30, cwd=REPO)


@pytest.fixture
def idle_clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for client in opened:
        client.close()


def test_idle_connections_use_no_threads_and_status_still_answers(daemon: DaemonProcess,
                                                                  idle_clients: list[socket.socket]) -> None:
    assert daemon.process is not None
    pid = daemon.process.pid
    before = threads_of(pid)
    for _ in range(200):
        idle_clients.append(connect(daemon.socket))
    time.sleep(0.5)  # let the daemon accept them all
    assert threads_of(pid) <= before + 1, f"{threads_of(pid)} threads, {before} before 200 idle connections"
    started = time.monotonic()
    result = cli_status(daemon)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < REQUEST_DEADLINE_S, "status waited for the idle clients' deadline"
    # Beyond the cap, the oldest idle clients were answered `busy` and closed; the rest are cut off
    # by the request deadline. None of them is left open.
    answers = [receive_all(client) for client in idle_clients]
    replies = [one_reply(data) for data in answers if data]
    assert len(replies) == len(idle_clients)
    busy = [reply for reply in replies if reply["error"] == "busy"]
    assert len(busy) >= len(idle_clients) - MAX_CLIENTS
    assert all(not reply["ok"] for reply in replies)
    assert threads_of(pid) <= before
    assert "Traceback" not in daemon.log()


def test_slow_sender_is_cut_off_by_one_deadline_for_the_whole_request(daemon: DaemonProcess) -> None:
    request = b'{"cmd":' + b" " * 40 + b'"status"}\n'  # 50 bytes, one every 0.2 s: 10 s in all
    with connect(daemon.socket) as client:
        started = time.monotonic()
        answer = b""
        closed = False
        for byte in request:
            try:
                client.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed or select.select([client], [], [], 0.2)[0]:
                break
        client.settimeout(10)
        answer = receive_all(client)
        elapsed = time.monotonic() - started
    assert REQUEST_DEADLINE_S - 0.5 < elapsed < REQUEST_DEADLINE_S + 1.5, elapsed
    reply = one_reply(answer)
    assert reply["ok"] is False and "within" in reply["error"], reply
    assert daemon.alive() and daemon.status()["state"] == "idle"


@pytest.mark.parametrize("line", [
    b"[" * 10000 + b"]" * 10000,
    b'{"cmd": "status", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}",
    b'{"cmd": "status", "x": ' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}",
])
def test_deeply_nested_request_is_answered(daemon: DaemonProcess, line: bytes) -> None:
    reply = one_reply(exchange(daemon.socket, line + b"\n"))
    assert reply["ok"] is False and reply["error"].startswith("bad request"), reply
    assert daemon.status()["state"] == "idle"


def test_clients_that_hang_up_leave_one_log_line_and_no_traceback(daemon: DaemonProcess) -> None:
    # Gone before the answer (a short press answers after the release), gone without a word,
    # gone half-way through a request, gone with the answer unread.
    with connect(daemon.socket) as client:
        client.sendall(b'{"cmd": "press", "hold": 0.3}\n')
    with connect(daemon.socket):
        pass
    with connect(daemon.socket) as client:
        client.sendall(b'{"cmd": "sta')
    with connect(daemon.socket) as client:
        client.sendall(b'{"cmd": "status"}\n')
        time.sleep(0.3)
    wait_until(lambda: daemon.log().count("control socket:") >= 3, 5, what=lambda: f"log lines:\n{daemon.log()}")
    time.sleep(0.5)  # the press is answered after its release
    log = daemon.log()
    assert "Traceback" not in log, log
    problems = [line for line in log.splitlines() if "control socket:" in line]
    assert 3 <= len(problems) <= 4, problems
    assert any("hung up" in line and "press" in line for line in problems), problems
    assert cli_status(daemon).returncode == 0


def test_oversize_request_and_bad_requests_are_answered(daemon: DaemonProcess) -> None:
    too_large = one_reply(exchange(daemon.socket, b'{"cmd": "' + b"x" * 100_000 + b'"}\n'))
    assert too_large["ok"] is False and "too large" in too_large["error"]
    for line in (b"\n", b"\xff\xfe\n", b"[1]\n", b'{"cmd": 1}\n', b"", b'{"cmd": "version"}'):
        reply = one_reply(exchange(daemon.socket, line))
        assert reply["ok"] is (line == b'{"cmd": "version"}'), (line, reply)  # a request may end at EOF
    assert daemon.alive() and "Traceback" not in daemon.log()
    assert os.path.exists(daemon.socket)


def test_a_request_waiting_when_the_daemon_stops_is_answered(daemon: DaemonProcess) -> None:
    with connect(daemon.socket) as client:
        client.sendall(b'{"cmd": "press", "hold": 10}\n')  # answered after the release, 10 s from now
        time.sleep(0.5)
        assert daemon.stop() == 0
        reply = one_reply(receive_all(client))
    assert reply == {"ok": False, "error": "the daemon is stopping"}
    assert "Traceback" not in daemon.log()
