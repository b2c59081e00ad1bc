"""Sessions, CSRF tokens and the login rate limit: pure, with an injectable clock (tests drive time).

Sessions live in the server's memory only: a restart logs everyone out, which is the safe side for a
door into the fleet. The cookie carries a random token (256 bits); the CSRF token is a second,
independent random value per session, sent by the page in the `X-CSRF-Token` header and compared
in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

IDLE_TIMEOUT_S = 30 * 60.0        # a session nobody used for half an hour ends
ABSOLUTE_TIMEOUT_S = 12 * 3600.0  # and every session ends after a working day, used or not
MAX_FAILURES_PER_NAME = 5         # failed logins for one username within the window, then 429
MAX_FAILURES_PER_ADDRESS = 20     # failed logins from one client address within the window, then 429
FAILURE_WINDOW_S = 15 * 60.0

Clock = Callable[[], float]


@dataclass
class Session:
    token: str
    operator: str
    role: str
    csrf: str
    created: float
    last_used: float
    lang: str = "id"

    def check_csrf(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), str(presented).encode())


@dataclass
class Sessions:
    clock: Clock = time.monotonic
    idle_s: float = IDLE_TIMEOUT_S
    absolute_s: float = ABSOLUTE_TIMEOUT_S
    _by_token: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, operator: str, role: str, lang: str = "id") -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), operator, role, secrets.token_urlsafe(32), now, now, lang)
        with self._lock:
            self._expire(now)
            self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session for a cookie's token (and its idle timer restarted); None when unknown or expired."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if now - session.last_used > self.idle_s or now - session.created > self.absolute_s:
                del self._by_token[token]
                return None
            session.last_used = now
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)

    def end_operator(self, operator: str) -> None:
        """Every session of an account that was removed or changed role."""
        with self._lock:
            for token in [t for t, s in self._by_token.items() if s.operator == operator]:
                del self._by_token[token]

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._by_token.items()
                      if now - s.last_used > self.idle_s or now - s.created > self.absolute_s]:
            del self._by_token[token]


@dataclass
class LoginLimiter:
    """Failed logins per username and per client address within a sliding window.

    Once either has too many, every attempt for that name or from that address is refused (429)
    until the oldest failure leaves the window, even with the right password: a guesser learns nothing.
    """

    clock: Clock = time.monotonic
    per_name: int = MAX_FAILURES_PER_NAME
    per_address: int = MAX_FAILURES_PER_ADDRESS
    window_s: float = FAILURE_WINDOW_S
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def retry_after(self, username: str, address: str) -> float:
        """0 when an attempt may be made now; else the seconds until one may."""
        now = self.clock()
        with self._lock:
            waits = []
            for key, limit in ((("name", username.lower()), self.per_name), (("addr", address), self.per_address)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    waits.append(self.window_s - (now - times[0]))
            return max(waits, default=0.0)

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (("name", username.lower()), ("addr", address)):
                self._recent(key, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(("name", username.lower()), None)
