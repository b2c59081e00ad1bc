"""Who may do what, in a real browser (test_http.py checks the same over plain HTTP): a viewer's page cannot
change anything even with its own CSRF token, another site's page cannot start a meeting in a logged-in
operator's browser, and repeated wrong passwords lock the name out, the right one too."""

from __future__ import annotations

import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance_dev.waiting import wait_until
from tests.dashboard.conftest import PASSWORDS, Dash, log_in, wait_for

START = {"title": "Rapat Peninjau", "sites": "kalibaru,licin", "auto_join": True,
         "program_url": "rtmp://127.0.0.1/live/program", "ingest_url": "rtmp://127.0.0.1/live/{site}"}
ATTACK_TITLE = "Serangan Lintas Situs"


def commands_sent(dash: Dash) -> int:
    """Rows in the console's command log: every command the dashboard sends is one."""
    db = sqlite3.connect(dash.console.home / "console.db")
    try:
        return db.execute("SELECT count(*) FROM commands").fetchone()[0]
    finally:
        db.close()


def attack_pages(dashboard: str) -> dict[str, str]:
    """What another web site could serve to an operator's browser: a form that posts itself to the
    dashboard, and a script that posts with fetch (no-cors: it cannot read the answer, nor add headers)."""
    fields = {"title": ATTACK_TITLE, "group": "kecamatan", "auto_join": "1",
              "program_url": "rtmp://127.0.0.1/live/x", "ingest_url": "rtmp://127.0.0.1/live/{site}"}
    inputs = "".join(f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items())
    body = ('{"title": "' + ATTACK_TITLE + '", "group": "kecamatan", "program_url": "rtmp://127.0.0.1/live/x", '
            '"ingest_url": "rtmp://127.0.0.1/live/{site}"}')
    return {
        "/form.html": f'<!doctype html><form id="f" method="post" action="{dashboard}/api/meetings">{inputs}</form>'
                      '<script>document.getElementById("f").submit()</script>',
        "/fetch.html": '<!doctype html><title>waiting</title><script>'
                       f'fetch("{dashboard}/api/meetings", {{method: "POST", mode: "no-cors", credentials: "include", '
                       f'headers: {{"Content-Type": "text/plain", "X-CSRF-Token": "guess"}}, body: {body!r}}})'
                       '.then(() => { document.title = "sent"; }, () => { document.title = "failed"; });</script>',
    }


@pytest.fixture(scope="module")
def attacker(dash: Dash):
    """Another web server on this machine: http://localhost:PORT is another site than the dashboard's
    http://127.0.0.1:..., and http://127.0.0.1:PORT the same site on another origin."""
    pages = attack_pages(dash.url)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            page = pages.get(self.path, "").encode()
            self.send_response(200 if page else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_viewer_in_the_browser_cannot_change_anything(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    ani, ani_csrf = dash.login("ani")
    started = dash.request("POST", "/api/meetings", START, headers={"X-CSRF-Token": ani_csrf}, cookie=ani)
    assert started.status == 200, started.body
    meeting_id = started.json["command"]["body"]["meeting_id"]

    def meeting() -> dict:
        return next((m for m in dash.meetings(ani) if m["meeting_id"] == meeting_id), {"grid": [], "speaking": []})

    wait_until(lambda: len(meeting()["grid"]) == 2, 10, what="the meeting running at two sites")
    sent = commands_sent(dash)

    log_in(browser, dash, "vera", "/meeting")
    wait_for(browser, f"document.querySelector('.meeting-panel[data-meeting=\"{meeting_id}\"] .cell')", 5, "the panel")
    assert browser.find_elements(By.ID, "start-form") == []  # no start form
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []  # no end, grant or revoke buttons
    # The page's own CSRF token, from the page itself: still refused, because vera is a viewer.
    statuses = browser.execute_async_script("""
        const [meeting, start, done] = arguments;
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const post = (path, body) => fetch(path, {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)})
            .then(r => r.status);
        Promise.all([post("/api/meetings", start), post("/api/floor/grant", {site: "licin", meeting_id: meeting}),
                     post("/api/floor/revoke", {site: "licin"}), post("/api/meetings/" + meeting + "/end", {})])
            .then(done, (e) => done(String(e)));
    """, meeting_id, {**START, "title": "Rapat Tidak Sah"})
    assert statuses == [403, 403, 403, 403]
    assert commands_sent(dash) == sent  # nothing was sent to any site
    running = meeting()
    assert len(running["grid"]) == 2 and running["speaking"] == []  # the meeting runs on, nobody granted
    assert all(m["title"] != "Rapat Tidak Sah" for m in dash.meetings(ani))


def test_another_web_site_cannot_start_a_meeting_in_an_operators_browser(dash: Dash, browser, attacker: int) -> None:
    from selenium.webdriver.common.by import By

    def answer_shows(text: str) -> str:
        """The dashboard's answer to the posted form, as the browser shows it."""
        return (f"location.origin === {dash.url!r} && location.pathname === '/api/meetings' && "
                f"document.body && document.body.textContent.includes({text!r})")

    log_in(browser, dash, "ani")  # the operator is logged in, in this browser
    sent = commands_sent(dash)
    # Another site (localhost is not 127.0.0.1): the SameSite=Strict session cookie is not even sent (401).
    browser.get(f"http://localhost:{attacker}/form.html")
    wait_for(browser, answer_shows("not logged in"), 10, "the dashboard's 401 to the other site's form")
    # The same site on another origin (another port): the cookie goes along, the CSRF token cannot (403).
    browser.get(f"http://127.0.0.1:{attacker}/form.html")
    wait_for(browser, answer_shows("missing or wrong X-CSRF-Token"), 10, "the dashboard's 403 to the other origin's form")
    for origin in (f"http://localhost:{attacker}", f"http://127.0.0.1:{attacker}"):
        browser.get(origin + "/fetch.html")
        wait_until(lambda: browser.title != "waiting", 10, what="the attacker's fetch done")
    assert commands_sent(dash) == sent  # no meeting was started, nothing was sent
    ani, _ = dash.login("ani")
    assert all(m["title"] != ATTACK_TITLE for m in dash.meetings(ani))
    browser.get(dash.url + "/meeting")  # and the operator is still logged in
    assert "/login" not in browser.current_url and browser.find_elements(By.ID, "start-form")


def test_wrong_passwords_in_the_browser_are_rate_limited(dash: Dash, browser) -> None:
    """Last in this module: it locks budi out."""
    from selenium.webdriver.common.by import By

    def attempt(password: str) -> str:
        name = browser.find_element(By.ID, "username")
        name.clear()
        name.send_keys("budi")
        browser.find_element(By.ID, "password").send_keys(password)
        browser.execute_script("window.answered = false")  # gone with this page: the answer is a new page
        browser.find_element(By.ID, "login-button").click()
        return wait_for(browser, "window.answered !== false && document.readyState === 'complete' && "
                        "(document.getElementById('login-error') || {}).textContent", 5, "the login's answer")

    browser.delete_all_cookies()
    browser.get(dash.url + "/login")
    for number in range(5):
        assert "salah" in attempt(f"wrong-password-{number}")  # "Nama pengguna atau kata sandi salah."
    limited = attempt("wrong-password-5")
    assert "Terlalu banyak percobaan gagal" in limited and "detik" in limited
    assert "Terlalu banyak percobaan gagal" in attempt(PASSWORDS["budi"])  # the right password is refused too
    assert "/login" in browser.current_url and browser.get_cookie("rapat_session") is None
    browser.get(dash.url + "/meeting")
    assert "/login" in browser.current_url  # not logged in
