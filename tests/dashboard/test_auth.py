"""The dashboard's auth pieces without a server: the password KDF, the accounts file and CLI, session
expiry, CSRF and the login limit, with a clock the tests move."""

from __future__ import annotations

import contextlib
import io
import json
import stat
import sys
from pathlib import Path

import pytest

from appliance.console.cli import main
from appliance.console.errors import BadInput
from appliance.console.operators import OperatorBook, check_password, hash_password
from appliance.console.web.auth import LoginLimiter, Sessions
from appliance.console.web.serve import parse_bind


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(home: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--home", str(home), *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


def test_scrypt_hash_is_salted_and_verifies() -> None:
    first, second = hash_password("kata-sandi-rahasia"), hash_password("kata-sandi-rahasia")
    assert first != second and first.startswith("scrypt$32768$8$1$")  # random salt, parameters kept
    assert check_password("kata-sandi-rahasia", first) and check_password("kata-sandi-rahasia", second)
    assert not check_password("kata-sandi-rahasiA", first)
    assert not check_password("kata-sandi-rahasia", "$7$101$bm90$bm90")  # another scheme is never accepted
    assert not check_password("x", "garbage")


def test_accounts_file_is_private_atomic_and_has_no_clear_password(tmp_path: Path) -> None:
    book = OperatorBook(tmp_path)
    book.add("ani", "operator", "ani-operator-pw")
    path = tmp_path / "operators.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "ani-operator-pw" not in path.read_text()
    assert book.verify("ani", "ani-operator-pw").role == "operator"
    assert book.verify("ani", "wrong") is None and book.verify("nobody", "ani-operator-pw") is None
    book.passwd("ani", "a-new-password", role="viewer")
    assert book.verify("ani", "ani-operator-pw") is None and book.verify("ani", "a-new-password").role == "viewer"
    assert [p.name for p in tmp_path.iterdir()] == ["operators.json"]  # no temporary file left behind
    with pytest.raises(BadInput, match="already exists"):
        book.add("ani", "viewer", "whatever-long")
    with pytest.raises(BadInput, match="at least 10"):
        book.add("budi", "viewer", "short")
    with pytest.raises(BadInput, match="must match"):
        book.add("Budi Santoso", "viewer", "long-enough-pw")
    book.remove("ani")
    assert book.verify("ani", "a-new-password") is None
    assert json.loads(path.read_text())["operators"] == []


def test_operators_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run(home, "operators", "add", "ani", "--role", "operator", "--password-stdin", stdin="ani-operator-pw\n")[0] == 0
    code, out, _ = run(home, "operators", "list", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "ani" and "password_hash" not in out
    code, _, err = run(home, "operators", "add", "ani", "--role", "viewer", "--password-stdin", stdin="another-password\n")
    assert code == 2 and "already exists" in err
    assert run(home, "operators", "add", "budi", "--role", "admin", "--password-stdin", stdin="x" * 12)[0] == 2
    code, _, err = run(home, "operators", "add", "budi", "--role", "viewer", "--password-stdin", stdin="")
    assert code == 2 and "no password" in err
    code, _, err = run(home, "operators", "add", "budi", "--role", "viewer")  # stdin is no terminal: no prompt
    assert code == 2 and "--password-stdin" in err
    assert run(home, "operators", "passwd", "ani", "--password-stdin", stdin="changed-password\n")[0] == 0
    assert OperatorBook(home).verify("ani", "changed-password") is not None
    assert run(home, "operators", "remove", "nobody")[0] == 2
    assert run(home, "operators", "remove", "ani")[0] == 0


def test_sessions_expire_when_idle_and_after_a_working_day() -> None:
    clock = FakeClock()
    sessions = Sessions(clock=clock, idle_s=1800, absolute_s=12 * 3600)
    session = sessions.create("ani", "operator")
    clock.now += 1700
    assert sessions.get(session.token) is session  # used: the idle timer restarts
    clock.now += 1700
    assert sessions.get(session.token) is session
    clock.now += 1801
    assert sessions.get(session.token) is None  # idle too long
    long_day = sessions.create("ani", "operator")
    for _ in range(30):
        clock.now += 1500
        sessions.get(long_day.token)
    assert sessions.get(long_day.token) is None  # 12.5 h after login, however busy
    assert sessions.get(None) is None and sessions.get("forged") is None


def test_csrf_token_is_per_session_and_checked_exactly() -> None:
    sessions = Sessions(clock=FakeClock())
    first, second = sessions.create("ani", "operator"), sessions.create("ani", "operator")
    assert first.csrf != second.csrf and first.csrf != first.token
    assert first.check_csrf(first.csrf)
    assert not first.check_csrf(second.csrf) and not first.check_csrf("") and not first.check_csrf(None)
    assert not first.check_csrf(first.csrf[:-1])
    sessions.end_operator("ani")
    assert sessions.get(first.token) is None and sessions.get(second.token) is None


def test_login_limit_per_name_and_per_address() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock, per_name=5, per_address=8, window_s=900)
    for _ in range(5):
        assert limiter.retry_after("ani", "10.0.0.1") == 0
        limiter.failed("ani", "10.0.0.1")
    assert limiter.retry_after("ani", "10.0.0.9") == pytest.approx(900)  # the name is locked from anywhere
    assert limiter.retry_after("budi", "10.0.0.1") == 0
    for name in ("budi", "citra", "dedi"):
        limiter.failed(name, "10.0.0.1")
    assert limiter.retry_after("eko", "10.0.0.1") > 0  # 8 failures from one address: every name is refused there
    assert limiter.retry_after("eko", "10.0.0.2") == 0
    clock.now += 901
    assert limiter.retry_after("ani", "10.0.0.1") == 0  # the window passed
    limiter.failed("ani", "10.0.0.1")
    limiter.succeeded("ani")
    assert limiter.retry_after("ani", "10.0.0.3") == 0


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1", ":8080", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
                                  "bad host!:80"])
def test_bad_bind_addresses_are_refused_with_exit_2(tmp_path: Path, text: str) -> None:
    with pytest.raises(BadInput, match="--bind"):
        parse_bind(text)
    code, _, err = run(tmp_path / "home", "serve", "--bind", text)
    assert code == 2 and "--bind" in err


def test_good_bind_addresses() -> None:
    assert parse_bind("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    assert parse_bind("localhost:80") == ("localhost", 80)


def test_serve_on_an_uninitialised_home_is_refused(tmp_path: Path) -> None:
    code, _, err = run(tmp_path / "home", "serve", "--bind", "127.0.0.1:18080")
    assert code == 1 and "not initialised" in err
