"""The local control socket: one JSON request line in, one JSON reply line out.

One thread serves every client through a selector, so idle or slow clients cost a file descriptor,
not a thread. It never touches daemon state: it posts each request to the loop, and the loop's reply
comes back to it through a wake-up socket. Limits: at most MAX_CLIENTS connections (when full, the
oldest one still sending its request is answered `busy` to make room; if every one waits for the
daemon, the newcomer is); REQUEST_DEADLINE_S for the whole request line from the moment of accept;
MAX_REQUEST_BYTES for its size. Every request is answered, and every failure (bad request, deadline,
busy, a client that hangs up) is one log line, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REPLY_TIMEOUT_S = 90.0  # the loop's answer: a press may hold for 60 s, an interactive self-test waits 30 s
REQUEST_DEADLINE_S = 5.0  # from accept to the end of the request line, however the bytes dribble in
SEND_DEADLINE_S = 5.0  # for a client to take its answer
MAX_CLIENTS = 64  # connections at once; each costs a descriptor and at most 64 KiB of buffer
LISTEN_BACKLOG = 64
BUSY = "busy"


class NoDaemon(Exception):
    """Nothing answers on the control socket."""


class ControlRequest:
    """A request waiting for the loop's reply; `reply` may be called from any thread, once (later calls
    are ignored). `on_reply`, if given, is called with the response by the thread that replies."""

    def __init__(self, body: dict[str, Any], on_reply: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.body = body
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._on_reply = on_reply
        self.response: dict[str, Any] = {}

    def reply(self, response: dict[str, Any]) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.response = response
            self._done.set()
        if self._on_reply is not None:
            self._on_reply(response)

    def wait(self, timeout: float) -> dict[str, Any]:
        if not self._done.wait(timeout):
            return {"ok": False, "error": "the daemon did not answer in time"}
        return self.response


_READING, _WAITING, _SENDING, _CLOSED = "reading", "waiting", "sending", "closed"


class _Client:
    """One connection: reading its request, waiting for the loop's reply, or sending that reply."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.phase = _READING
        self.deadline = now + REQUEST_DEADLINE_S
        self.inbox = bytearray()
        self.outbox = b""
        self.watching = 0  # the selector events registered for it, 0 when not registered
        self.command: str | None = None  # the request's `cmd`, for the log
        self.problem: str | None = None  # why it failed, logged once when it closes


class ControlServer:
    def __init__(self, path: str, post: Callable[[Any], None]) -> None:
        self.path = path
        self._post = post
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._clients: dict[socket.socket, _Client] = {}  # in the order they were accepted
        self._replies: deque[tuple[_Client, dict[str, Any]]] = deque()  # from the loop, for the server thread
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._closing = threading.Event()

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
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._sock = sock
        self._closing.clear()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._closing.set()
            self._wake()
            self._thread.join(2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # --- any thread -----------------------------------------------------------------------------
    def _replied(self, client: _Client, response: dict[str, Any]) -> None:
        self._replies.append((client, response))
        self._wake()

    def _wake(self) -> None:
        wake = self._wake_w  # read once: the server thread clears it as it stops
        if wake is None:
            return
        try:
            wake.send(b"\0")
        except OSError:  # full: a wake-up is pending anyway; closed: the server has stopped
            pass

    # --- the server thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        assert self._selector is not None
        try:
            while not self._closing.is_set():
                for key, _ in self._selector.select(self._timeout()):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._take_replies()
                    elif key.data.phase is not _CLOSED:  # not closed earlier in this round
                        self._step(key.data)
                self._expire()
        finally:
            for client in list(self._clients.values()):
                if client.phase in (_READING, _WAITING):
                    self._fail(client, "the daemon is stopping")  # one try; it closes unless the client is full
                self._close(client)
            self._selector.close()
            for end in (self._wake_r, self._wake_w):
                if end is not None:
                    end.close()
            self._wake_r = self._wake_w = None

    def _timeout(self) -> float:
        if not self._clients:
            return 1.0
        soonest = min(client.deadline for client in self._clients.values())
        return min(1.0, max(0.0, soonest - time.monotonic()))

    def _accept(self) -> None:
        assert self._sock is not None and self._selector is not None
        while True:
            try:
                connection, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: let the backlog wait rather than spin
                log.warning("control socket: cannot accept a client: %s", exc)
                time.sleep(0.5)
                return
            connection.setblocking(False)
            if len(self._clients) >= MAX_CLIENTS:
                oldest_reading = next((c for c in self._clients.values() if c.phase is _READING), None)
                if oldest_reading is None:
                    newcomer = self._clients[connection] = _Client(connection, time.monotonic())
                    self._fail(newcomer, BUSY, f"{BUSY}: {MAX_CLIENTS} clients wait for the daemon; refused one more")
                    continue
                self._fail(oldest_reading, BUSY, f"{BUSY}: {MAX_CLIENTS} clients connected; closed the oldest "
                           "one still sending its request")
            client = _Client(connection, time.monotonic())
            self._clients[connection] = client
            self._watch(client, selectors.EVENT_READ)

    def _step(self, client: _Client) -> None:
        try:
            if client.phase is _READING:
                self._read(client)
            elif client.phase is _SENDING:
                self._flush(client)
        except Exception:  # noqa: BLE001 - a bug with one client must not stop the socket for the others
            log.exception("control socket: serving a client failed")
            self._close(client)

    def _read(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(client, f"client hung up ({type(exc).__name__})")
            return
        if chunk:
            searched = len(client.inbox)
            client.inbox += chunk
            end = client.inbox.find(b"\n", searched)
            if end < 0:
                if len(client.inbox) > MAX_REQUEST_BYTES:
                    self._fail(client, f"bad request: request too large (over {MAX_REQUEST_BYTES} bytes)")
                return
            line = bytes(client.inbox[:end])
        else:
            line = bytes(client.inbox)  # the client stopped sending: what came is the request
        if len(line) > MAX_REQUEST_BYTES:
            self._fail(client, f"bad request: request too large (over {MAX_REQUEST_BYTES} bytes)")
        elif not line.strip():
            self._fail(client, "bad request: empty request")
        else:
            self._handle(client, line)

    def _handle(self, client: _Client, line: bytes) -> None:
        try:
            body = json.loads(line.decode("utf-8"))
            if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
                raise ValueError("request must be a JSON object with a string 'cmd'")
        except RecursionError:
            self._fail(client, "bad request: nested too deeply")
            return
        except ValueError as exc:  # UnicodeDecodeError included
            self._fail(client, f"bad request: {exc}")
            return
        client.command = body["cmd"][:40]
        client.phase = _WAITING
        client.deadline = time.monotonic() + REPLY_TIMEOUT_S
        self._watch(client, 0)  # a hang-up shows when the answer is sent
        self._post(ControlRequest(body, on_reply=lambda response: self._replied(client, response)))

    def _take_replies(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._replies:
            client, response = self._replies.popleft()
            if client.phase is _WAITING:  # not timed out meanwhile
                self._send(client, response)

    def _expire(self) -> None:
        now = time.monotonic()
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            if client.phase is _READING:
                self._fail(client, f"bad request: no complete request within {REQUEST_DEADLINE_S:g} s")
            elif client.phase is _WAITING:
                self._fail(client, "the daemon did not answer in time")
            elif client.phase is _SENDING:
                self._close(client, f"client did not take its answer within {SEND_DEADLINE_S:g} s")

    def _fail(self, client: _Client, error: str, problem: str | None = None) -> None:
        """Answer `error` and close; the log gets one line, `problem` (by default the error itself)."""
        client.problem = problem or error
        self._send(client, {"ok": False, "error": error})

    def _send(self, client: _Client, response: dict[str, Any]) -> None:
        try:
            data = json.dumps(response, ensure_ascii=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as exc:
            client.problem = f"unencodable answer ({exc})"
            data = json.dumps({"ok": False, "error": "the daemon's answer could not be encoded"}).encode() + b"\n"
        client.phase = _SENDING
        client.outbox = data
        client.deadline = time.monotonic() + SEND_DEADLINE_S
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            answer = f"the answer to {client.command!r}" if client.command else "the answer"
            self._close(client, f"client hung up before {answer} ({type(exc).__name__})")
            return
        client.outbox = client.outbox[sent:]
        if client.outbox:
            self._watch(client, selectors.EVENT_WRITE)
        else:
            self._close(client)

    def _watch(self, client: _Client, events: int) -> None:
        assert self._selector is not None
        if events == client.watching:
            return
        if not events:
            self._selector.unregister(client.sock)
        elif client.watching:
            self._selector.modify(client.sock, events, client)
        else:
            self._selector.register(client.sock, events, client)
        client.watching = events

    def _close(self, client: _Client, trouble: str | None = None) -> None:
        if client.phase is _CLOSED:
            return
        problem = "; ".join(part for part in (client.problem, trouble) if part)
        if problem:
            request_name = f" (request {client.command!r})" if client.command and client.command not in problem else ""
            log.warning("control socket: %s%s", problem, request_name)
        self._watch(client, 0)
        client.sock.close()
        client.phase = _CLOSED
        self._clients.pop(client.sock, None)


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
