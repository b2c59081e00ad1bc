"""The dashboard's HTTP face without a browser: what is refused to whom, the headers, the login limit,
and two operators granting the floor at the same moment."""

from __future__ import annotations

import re
import threading

from appliance_dev.waiting import wait_until
from tests.dashboard.conftest import Dash

START = {"title": "Rapat Koordinasi", "sites": "kalibaru,licin,muncar", "auto_join": True,
         "program_url": "rtmp://127.0.0.1/live/program", "ingest_url": "rtmp://127.0.0.1/live/{site}"}


def test_nothing_but_login_and_static_files_without_a_session(dash: Dash) -> None:
    page = dash.request("GET", "/meeting")
    assert page.status == 303 and page.headers["location"] == "/login?next=%2Fmeeting"
    for path in ("/", "/rollout", "/sites/kalibaru"):
        assert dash.request("GET", path).status == 303, path
    for method, path in (("GET", "/api/sites"), ("GET", "/api/sites/kalibaru"), ("GET", "/api/events"),
                         ("GET", "/api/meetings"), ("POST", "/api/meetings"), ("POST", "/api/floor/grant"),
                         ("POST", "/api/floor/revoke"), ("POST", "/api/meetings/x/end"), ("POST", "/logout")):
        assert dash.request(method, path, {} if method == "POST" else None).status == 401, path
    assert dash.request("GET", "/login").status == 200
    assert dash.request("GET", "/static/dashboard.js").status == 200
    # A forged or stale cookie is no session either.
    assert dash.request("GET", "/api/sites", cookie="forged").status == 401


def test_security_headers_on_every_answer(dash: Dash) -> None:
    cookie, _ = dash.login("ani")
    for path, who in (("/login", None), ("/static/dashboard.css", None), ("/api/sites", None), ("/api/sites", cookie),
                      ("/", cookie)):
        headers = dash.request("GET", path, cookie=who).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
    login = dash.request("POST", "/login", {"username": "ani", "password": "ani-operator-pw"}, form=True)
    cookie_line = login.headers["set-cookie"].lower()
    assert "httponly" in cookie_line and "samesite=strict" in cookie_line and "secure" not in cookie_line  # plain HTTP


def test_a_state_change_without_the_csrf_token_is_refused(dash: Dash) -> None:
    cookie, csrf = dash.login("ani")
    body = {"site": "licin"}
    assert dash.request("POST", "/api/floor/grant", body, cookie=cookie).status == 403
    assert dash.request("POST", "/api/floor/grant", body, headers={"X-CSRF-Token": "guess"}, cookie=cookie).status == 403
    other_cookie, other_csrf = dash.login("budi")  # another session's token is no good either
    assert dash.request("POST", "/api/floor/grant", body, headers={"X-CSRF-Token": other_csrf}, cookie=cookie).status == 403
    # With the right token the request gets through to the checks (atlantis is no site: 400, nothing sent).
    answer = dash.request("POST", "/api/floor/grant", {"site": "atlantis"}, headers={"X-CSRF-Token": csrf}, cookie=cookie)
    assert answer.status == 400 and "atlantis" in answer.json["error"]
    assert dash.request("POST", "/logout", cookie=cookie).status == 403  # logout too needs the token
    assert dash.request("POST", "/logout", headers={"X-CSRF-Token": csrf}, cookie=cookie).status == 303
    assert dash.request("GET", "/api/sites", cookie=cookie).status == 401  # logged out
    assert dash.request("GET", "/api/sites", cookie=other_cookie).status == 200


def test_repeated_wrong_passwords_are_rate_limited(dash: Dash) -> None:
    for _ in range(5):
        answer = dash.request("POST", "/login", {"username": "budi", "password": "wrong"}, form=True)
        assert answer.status == 401 and b"salah" in answer.body
    limited = dash.request("POST", "/login", {"username": "budi", "password": "budi-operator-pw"}, form=True)
    assert limited.status == 429 and int(limited.headers["retry-after"]) > 0  # even the right password now
    # Another account from the same address is not locked out by budi's failures (under the address limit).
    assert dash.request("POST", "/login", {"username": "vera", "password": "vera-viewer-pw"}, form=True).status == 303


def test_two_operators_granting_at_once_get_one_consistent_floor(dash: Dash) -> None:
    ani, ani_csrf = dash.login("ani")
    citra, citra_csrf = dash.login("citra")
    started = dash.request("POST", "/api/meetings", START, headers={"X-CSRF-Token": ani_csrf}, cookie=ani)
    assert started.status == 200, started.body
    assert started.json["summary"]["ok"] == 3 and started.json["operator"] == "ani"
    meeting_id = started.json["command"]["body"]["meeting_id"]

    def meeting() -> dict:
        return next((m for m in dash.meetings(ani) if m["meeting_id"] == meeting_id), {"grid": [], "hands": []})

    wait_until(lambda: sum(1 for c in meeting()["grid"] if c["floor"] == "listening") == 3, 10, what="3 listening")
    dash.sims["licin"].press()
    dash.sims["muncar"].press()
    wait_until(lambda: len(meeting()["hands"]) == 2, 5, what="two raised hands")

    answers: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def grant(cookie: str, csrf: str, site: str) -> None:
        barrier.wait()
        answers[site] = dash.request("POST", "/api/floor/grant", {"site": site}, headers={"X-CSRF-Token": csrf},
                                     cookie=cookie)

    threads = [threading.Thread(target=grant, args=(ani, ani_csrf, "licin")),
               threading.Thread(target=grant, args=(citra, citra_csrf, "muncar"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(answer.status == 200 for answer in answers.values()), answers
    plans = {site: answer.json["plan"] for site, answer in answers.items()}
    # Serialised: whichever went second revoked the first, so exactly one site speaks.
    second = next(site for site, plan in plans.items() if plan["revoke"])
    first = "licin" if second == "muncar" else "muncar"
    assert plans[second]["revoke"] == [first] and plans[first]["revoke"] == []
    wait_until(lambda: meeting()["speaking"] == [second], 5, what=f"{second} alone speaking")
    floors = {c["site"]: c["floor"] for c in meeting()["grid"]}
    assert floors[first] == "listening" and floors[second] == "speaking"


def test_the_start_form_offers_the_streams_of_earlier_meetings_newest_first(dash: Dash) -> None:
    cookie, csrf = dash.login("ani")
    for title, sites, program in (("Rapat Pagi", "kalibaru", "rtmp://127.0.0.1/live/pagi"),
                                  ("Rapat Siang", "licin", "rtmp://127.0.0.1/live/siang"),
                                  ("Rapat Sore", "muncar", "rtmp://127.0.0.1/live/pagi")):
        body = {**START, "title": title, "sites": sites, "program_url": program, "auto_join": False}
        assert dash.request("POST", "/api/meetings", body, headers={"X-CSRF-Token": csrf}, cookie=cookie).status == 200
    page = dash.request("GET", "/meeting", cookie=cookie).body.decode()
    offered = re.findall(r'<option data-program="([^"]+)"', page)
    # Each pair once, newest first (earlier tests' meetings follow).
    assert offered[:2] == ["rtmp://127.0.0.1/live/pagi", "rtmp://127.0.0.1/live/siang"]
    assert len(offered) == len(set(offered))
    assert 'id="f-program" value="rtmp://127.0.0.1/live/pagi"' in page  # the newest fills the form
