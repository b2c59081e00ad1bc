"""The local control socket: one JSON request line in, one JSON reply line out.

The server thread never touches daemon state: it posts each request to the loop and waits for the reply.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REPLY_TIMEOUT_S = 90.0


class NoDaemon(Exception):
    """Nothing answers on the control socket."""


class ControlRequest:
    """A request waiting for the loop's reply; `reply` may be called from any thread, once."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self._done = threading.Event()
        self.response: dict[str, Any] = {}

    def reply(self, response: dict[str, Any]) -> None:
        if not self._done.is_set():
            self.response = response
            self._done.set()

    def wait(self, timeout: float) -> dict[str, Any]:
        if not self._done.wait(timeout):
            return {"ok": False, "error": "the daemon did not answer in time"}
        return self.response


class ControlServer:
    def __init__(self, path: str, post: Callable[[Any], None]) -> None:
        self.path = path
        self._post = post
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Bind and listen (so READY can follow); refuse to steal a socket another daemon answers on."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.path):
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            try:
                request(self.path, {"cmd": "version"}, timeout=1.0)
            except NoDaemon:
                os.unlink(self.path)  # left behind by a daemon that died
            else:
                raise OSError(f"another daemon is already answering on {self.path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o660)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                connection, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), name="control-client", daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5.0)
            try:
                line = _read_line(connection)
                body = json.loads(line)
                if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
                    raise ValueError("request must be a JSON object with a string 'cmd'")
            except (OSError, ValueError) as exc:
                _send(connection, {"ok": False, "error": f"bad request: {exc}"})
                return
            pending = ControlRequest(body)
            self._post(pending)
            _send(connection, pending.wait(REPLY_TIMEOUT_S))


def request(path: str, body: dict[str, Any], timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the daemon; raise NoDaemon when nothing listens on `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise NoDaemon(f"no daemon answers on {path} ({exc.strerror or exc})") from None
        _send(sock, body)
        try:
            return json.loads(_read_line(sock))
        except (OSError, ValueError) as exc:
            raise NoDaemon(f"the daemon on {path} gave no usable answer ({exc})") from None
    finally:
        sock.close()


def _send(sock: socket.socket, body: dict[str, Any]) -> None:
    sock.sendall(json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n")


def _read_line(sock: socket.socket) -> str:
    chunks = bytearray()
    while b"\n" not in chunks:
        chunk = sock.recv(4096)
        if not chunk:
            break
        chunks += chunk
        if len(chunks) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    if not chunks:
        raise ValueError("empty request")
    return chunks.split(b"\n", 1)[0].decode("utf-8")
