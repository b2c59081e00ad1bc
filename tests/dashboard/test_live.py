"""The site page and the rollout page follow the sites live, without a reload: a simulated site that comes
online, goes offline or changes its state shows in the open page within a second or two, and a burst of
changes costs the page about one request a second. And what the dashboard heard itself counts in the
rollout report as `collect` would store it."""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import time
from pathlib import Path

from appliance.console import records, rollout
from appliance.console.web.hub import LiveHub
from appliance.console.web.rollout_view import overlay
from appliance.core.clock import rfc3339
from appliance_dev.simulate import SimFleet
from appliance_dev.waiting import stop_process, wait_until
from tests.dashboard.conftest import SITES, Dash, log_in, start_server, wait_for

FRAGMENT_FETCHES = ("performance.getEntriesByType('resource')"
                    ".filter(e => e.name.includes('fragment=1')).length")


def text_of(selector: str) -> str:
    """A JavaScript expression: the element's text, '' while it is (re)drawn."""
    return f"(document.querySelector({selector!r}) || {{textContent: ''}}).textContent"


def not_ready_row(name: str) -> str:
    """A JavaScript expression: the text of the rollout page's not-ready row of the site named `name`."""
    return (f"(Array.from(document.querySelectorAll('#rollout-body tbody tr'))"
            f".find(r => r.cells[0].textContent === {name!r}) || {{textContent: ''}}).textContent")


def test_a_site_page_shows_the_site_coming_online_and_leaving_live(dash: Dash, browser) -> None:
    log_in(browser, dash, "ani", "/sites/bangorejo")  # registered, never simulated so far
    wait_for(browser, "document.body.dataset.connected === '1'", 5, "the live stream open")
    assert "belum terlihat" in browser.execute_script("return " + text_of("#site-state"))
    browser.execute_script("window.notReloaded = true")
    fleet = SimFleet(dash.console.sim_sites(("bangorejo",))).start()
    try:
        started = time.monotonic()
        wait_for(browser, text_of("#site-state") + ".includes('siaga')", 3, "bangorejo idle on its page")
        assert time.monotonic() - started < 2.0
        assert browser.execute_script("return " + text_of("#site-live tr:nth-child(2) td")) != "belum pernah"
        assert browser.execute_script("return window.notReloaded === true")  # swapped in, not reloaded
    finally:
        fleet.stop()  # leaves with its will: the broker says offline
    wait_for(browser, text_of("#site-state") + ".includes('luring')", 3, "bangorejo offline on its page")
    assert browser.execute_script("return window.notReloaded === true")


def test_a_site_page_follows_a_meeting_and_a_burst_costs_one_request_a_second(dash: Dash, browser) -> None:
    log_in(browser, dash, "ani", "/sites/licin")
    wait_for(browser, "document.body.dataset.connected === '1'", 5, "the live stream open")
    assert "siaga" in browser.execute_script("return " + text_of("#site-state"))
    browser.execute_script("window.notReloaded = true")
    cookie = browser.get_cookie("rapat_session")["value"]
    csrf = browser.find_element("css selector", 'meta[name="csrf-token"]').get_attribute("content")
    body = {"title": "Rapat Langsung", "sites": "licin", "auto_join": True, "meeting_id": "rapat-langsung",
            "program_url": "rtmp://127.0.0.1/live/program", "ingest_url": "rtmp://127.0.0.1/live/{site}"}
    assert dash.request("POST", "/api/meetings", body, headers={"X-CSRF-Token": csrf}, cookie=cookie).status == 200
    wait_for(browser, text_of("#site-state") + ".includes('dalam rapat · rapat-langsung')", 3, "licin in the meeting")
    assert browser.execute_script("return window.notReloaded === true")

    # Ten state changes in a second (a hand raised and lowered): about one fetch a second, not ten.
    # A second stream, opened by the test, counts the changes the server announced for licin.
    browser.execute_script("window.touches = 0; window.counter = new EventSource('/api/events');"
                           "window.counter.addEventListener('touched', (e) => {"
                           "  if (JSON.parse(e.data).sites.includes('licin')) window.touches++; })")
    time.sleep(1.2)
    browser.execute_script("window.touches = 0")
    before = browser.execute_script("return " + FRAGMENT_FETCHES)
    started = time.monotonic()
    for _ in range(10):
        dash.sims["licin"].press()
        time.sleep(0.1)
    time.sleep(1.5)
    fetched = browser.execute_script("return " + FRAGMENT_FETCHES) - before
    elapsed = time.monotonic() - started
    touches = browser.execute_script("window.counter.close(); return window.touches")
    assert touches >= 8, touches
    assert 1 <= fetched <= elapsed + 1, (fetched, touches, elapsed)
    assert browser.execute_script("return window.notReloaded === true")


def test_the_rollout_page_follows_the_sites_live(dash: Dash, browser) -> None:
    row = not_ready_row("Kecamatan Cluring")
    log_in(browser, dash, "ani", "/rollout")
    wait_for(browser, "document.body.dataset.connected === '1'", 5, "the live stream open")
    assert "belum pernah terhubung" in browser.execute_script("return " + row)
    browser.execute_script("window.notReloaded = true")
    fleet = SimFleet(dash.console.sim_sites(("cluring",))).start()
    try:
        started = time.monotonic()
        wait_for(browser, f"!{row}.includes('belum pernah terhubung')", 3, "cluring connected on the rollout page")
        assert time.monotonic() - started < 2.0
        assert browser.execute_script(f"return {row}.includes('belum ada uji mandiri')")  # still not ready
        assert browser.execute_script("return window.notReloaded === true")
    finally:
        fleet.stop()
    # What the dashboard heard itself counts at once (collect is not running here): no simulated site
    # online is "never connected".
    for site in dash.sims:
        assert "belum pernah terhubung" not in browser.execute_script("return " + not_ready_row(f"Kecamatan {site.title()}"))
    cookie = browser.get_cookie("rapat_session")["value"]
    wait_until(lambda: not next(r for r in dash.request("GET", "/api/sites", cookie=cookie).json["sites"]
                                if r["site"] == "cluring")["online"], 5, what="cluring offline again")


def test_what_the_dashboard_heard_counts_as_collect_would_store_it(tmp_path: Path) -> None:
    """The rollout page's live overlay gives the report the rows `collect` will have stored: no more, no less."""
    store = sqlite3.connect(":memory:")
    store.execute("CREATE TABLE sites (id TEXT, name TEXT, kind TEXT, distance_km REAL)")
    store.execute("INSERT INTO sites VALUES ('licin', 'Kecamatan Licin', 'kecamatan', NULL)")
    now = time.time()
    messages = [("state", {"v": 1, "site": "licin", "online": True, "state": "idle", "at": rfc3339(now - 900)}),
                ("telemetry", {"v": 1, "site": "licin", "at": rfc3339(now - 600), "cpu_temp_c": 50}),
                ("telemetry", {"v": 1, "site": "licin", "at": rfc3339(now - 10), "cpu_temp_c": 51}),
                ("selftest", {"v": 1, "site": "licin", "at": rfc3339(now - 5), "ok": False,
                              "checks": {"audio": {"ok": False, "detail": "no microphone"}, "panel": {"ok": True}}})]
    collected = records.connect(tmp_path / "collected.db")
    hub = LiveHub(None, None, None)  # type: ignore[arg-type] - only its bookkeeping of what it heard
    for leaf, document in messages:
        records.ingest(collected, f"rapat/v1/site/licin/{leaf}", json.dumps(document).encode(), now)
        if leaf != "selftest":
            hub._heard("licin", document["at"])
    selftests = {"licin": messages[-1][1]}
    nothing = records.connect(tmp_path / "empty.db")
    stored = rollout.load(collected, store)
    assert overlay(rollout.load(nothing, store), hub.heard, selftests) == stored
    assert overlay(stored, hub.heard, selftests) == stored  # heard and stored: counted once
    assert stored[0].selftests[-1][2] == ["audio"]


def test_a_change_is_rendered_once_for_every_page_that_shares_its_language_and_role(tmp_path: Path) -> None:
    """Twenty open pages cost one drawing of a flush's rows per (language, role), not twenty: made per page,
    the renders held the hub's lock while the meeting's acks waited (bench_dashboard: a meeting.start's
    per-site ack median 2-7 times slower with 20 pages open, 0.85-1.03 with one render)."""
    from appliance.console.context import Context
    from appliance.console.home import Home
    from appliance.console.web.app import render_change
    from appliance.console.web.hub import Change
    from appliance.console.web.serve import build_dashboard
    from tests.console.conftest import Console

    console = Console(tmp_path / "home")
    console.ok("init", "--broker-url", "mqtts://localhost:1", "--console-port", "2", "--media-host", "127.0.0.1")
    ctx = Context(Home(console.home))
    try:
        dash = build_dashboard(ctx, tls=False)
    finally:
        ctx.close()
    for site, state in (("licin", "idle"), ("muncar", "in_meeting")):
        document = {"v": 1, "site": site, "online": True, "state": state, "at": rfc3339(time.time())}
        dash.hub._take(f"rapat/v1/site/{site}/state", json.dumps(document).encode())
    drawn: list[str] = []  # the rows drawn as HTML, and the meeting panels
    row_html, panels = dash.views.row_html, dash.views.meeting_panels
    dash.views.row_html = lambda row, lang, now: drawn.append(row["site"]) or row_html(row, lang, now)
    dash.views.meeting_panels = lambda lang, role, now=None: drawn.append("panels") or panels(lang, role, now)
    change = Change(1, {"licin", "muncar"}, True, False, [], False, touched={"licin"})
    pages = [render_change(dash, change, lang, role) for lang, role in [("id", "operator")] * 10 + [("en", "viewer")] * 10]
    assert sorted(drawn) == ["licin", "licin", "muncar", "muncar", "panels", "panels"]  # once per (language, role)
    assert all(page == pages[0] for page in pages[:10]) and all(page == pages[10] for page in pages[10:])
    assert pages[0] != pages[10]  # the languages and roles still differ
    assert any("Kecamatan Licin" in message for message in pages[0])
    fresh = Change(2, {"licin"}, False, False, [], False)  # the next flush is drawn again
    render_change(dash, fresh, "id", "operator")
    assert drawn[6:] == ["licin"]


def first_rows(dash: Dash, cookie: str, since: str | None, last_event_id: str | None = None) -> tuple[str, set[str]]:
    """The first `rows` message a new event stream sends: its id and the sites it redraws."""
    connection = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
    headers = {"Cookie": f"rapat_session={cookie}", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    connection.request("GET", "/api/events" + (f"?since={since}" if since is not None else ""), headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    try:
        event_id, name = "", ""
        while True:
            line = response.fp.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "rows":
                return event_id, set(json.loads(line[6:])["rows"])
            elif not line:
                event_id, name = "", ""
    finally:
        connection.close()


def test_a_page_from_before_a_restart_is_sent_every_row_again(dash: Dash) -> None:
    """A page keeps its place in the change stream as this server run's id and flush number. A page
    loaded from an earlier run (the server restarted; its flush numbers start again) must get every
    row again, not only those changed after a number that meant something else, or it shows stale
    rows as live. A reconnecting stream's Last-Event-ID wins over the page's older mark."""
    cookie, _ = dash.login("ani")
    page = dash.request("GET", "/", cookie=cookie).body.decode()
    mark = re.search(r'data-seq="([^"]*)"', page).group(1)
    this_run, _, _ = mark.partition(".")
    assert first_rows(dash, cookie, mark)[1] == set()  # nothing changed since the page was drawn
    assert set(SITES) <= first_rows(dash, cookie, None)[1]  # a page with no mark gets everything
    assert set(SITES) <= first_rows(dash, cookie, f"{this_run}.999999")[1]  # a flush this run never made
    event_id, _ = first_rows(dash, cookie, "0")
    assert first_rows(dash, cookie, "0", last_event_id=event_id)[1] == set()  # the stream's own id wins

    process, port = start_server(dash.console, dash.log_path)  # the same console home, another run
    try:
        later = Dash(dash.console, port, process, dash.sims, dash.log_path)
        cookie = later.login("ani")[0]
        wait_until(lambda: sum(r["online"] for r in later.request("GET", "/api/sites", cookie=cookie).json["sites"])
                   == len(SITES), 15, what="the second run hearing every site")
        assert set(SITES) <= first_rows(later, cookie, mark)[1]
        assert set(SITES) <= first_rows(later, cookie, "0", last_event_id=mark)[1]
    finally:
        stop_process(process)
