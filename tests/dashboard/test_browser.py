"""The dashboard in a real browser against a real broker and simulated sites: log in, the fleet, a meeting,
a raised hand that appears without reloading, the grant, and who may do what."""

from __future__ import annotations

import sqlite3
import time

from appliance_dev.waiting import wait_until
from tests.dashboard.conftest import SITES, Dash, log_in, wait_for

MEETING_SITES = ("kalibaru", "licin", "muncar")


def test_operator_runs_a_meeting_and_gives_the_floor_live(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, dash, "ani")
    # The fleet: every registered site has a row; the simulated ones are online.
    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet-rows tr")
    assert len(rows) == 25  # the seeded kecamatan
    online = browser.execute_script("return Array.from(document.querySelectorAll('#fleet-rows tr'))"
                                    ".filter(r => r.dataset.state === 'idle').map(r => r.dataset.site)")
    assert sorted(online) == sorted(SITES)
    assert "6" in browser.find_element(By.ID, "counts").text

    browser.get(dash.url + "/meeting")
    browser.execute_script("window.notReloaded = true")
    browser.find_element(By.ID, "f-title").send_keys("Musrenbang Kecamatan")
    browser.find_element(By.ID, "f-sites").send_keys(",".join(MEETING_SITES))
    browser.find_element(By.ID, "f-program").send_keys("rtmp://127.0.0.1/live/program")
    browser.find_element(By.ID, "f-ingest").send_keys("rtmp://127.0.0.1/live/{site}")
    browser.find_element(By.ID, "f-auto").click()
    browser.find_element(By.ID, "start-button").click()
    # The grid fills as the sites join (auto-join), and the acks say who answered.
    wait_for(browser, "document.querySelectorAll('.cell.floor-listening').length === 3", 10, "three sites listening")
    wait_for(browser, "(document.querySelector('.acks') || {}).textContent.includes('3 menjawab')", 5, "3 acks shown")

    dash.sims["licin"].press()  # a person at Licin raises a hand
    wait_for(browser, "document.querySelector('.hand[data-site=\"licin\"]')", 3, "licin's raised hand on the page")
    assert browser.execute_script("return window.notReloaded === true")  # it came live, not by a reload

    browser.find_element(By.CSS_SELECTOR, '.hand[data-site="licin"] button[data-action="grant"]').click()
    started = time.monotonic()
    wait_for(browser, "document.querySelector('#cell-licin.floor-speaking')", 3, "licin shown speaking")
    assert time.monotonic() - started < 2.0
    assert "berbicara" in browser.find_element(By.ID, "cell-licin").text
    assert browser.execute_script("return window.notReloaded === true")

    # Every action is in the console's command log with the operator's name.
    db = sqlite3.connect(dash.console.home / "console.db")
    try:
        logged = db.execute("SELECT type, operator FROM commands WHERE operator IS NOT NULL ORDER BY sent_at").fetchall()
    finally:
        db.close()
    assert ("meeting.start", "ani") in logged and ("floor.grant", "ani") in logged

    # The streams of that meeting are a preset of the start form now: chosen, they fill the fields.
    browser.get(dash.url + "/meeting")
    option = browser.find_element(By.CSS_SELECTOR, "#f-preset option")
    assert option.get_attribute("data-program") == "rtmp://127.0.0.1/live/program"
    assert "Musrenbang Kecamatan" in option.text
    for field in ("f-program", "f-ingest"):
        browser.find_element(By.ID, field).clear()
    browser.execute_script("document.querySelector('#f-preset').dispatchEvent(new Event('change'))")
    assert browser.find_element(By.ID, "f-program").get_attribute("value") == "rtmp://127.0.0.1/live/program"
    assert browser.find_element(By.ID, "f-ingest").get_attribute("value") == "rtmp://127.0.0.1/live/{site}"


def test_form_errors_are_shown_next_to_their_fields(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, dash, "ani", "/meeting")
    for field_id, text in (("f-sites", "kalibaru,atlantis"), ("f-program", "ftp://127.0.0.1/x"),
                           ("f-ingest", "rtmp://127.0.0.1/live/{site}")):
        box = browser.find_element(By.ID, field_id)
        box.clear()  # the URLs come prefilled from the last meeting
        box.send_keys(text)
    browser.find_element(By.ID, "start-button").click()
    wait_for(browser, "document.querySelector('.field-error[data-field=\"title\"]').textContent", 5, "title error")
    errors = browser.execute_script("return Object.fromEntries(Array.from(document.querySelectorAll('.field-error'))"
                                    ".map(e => [e.dataset.field, e.textContent]))")
    assert "--title" in errors["title"]
    assert "scheme" in errors["program_url"]
    assert "atlantis" in errors["sites"]
    assert errors["ingest_url"] == ""


def test_viewer_sees_no_buttons_and_the_api_refuses_them(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, dash, "vera", "/meeting")
    assert browser.find_elements(By.ID, "start-form") == []
    wait_for(browser, "document.querySelector('.meeting-panel')", 5, "the meeting panel")
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
    assert "peninjau" in browser.find_element(By.CLASS_NAME, "viewer-note").text
    cookie = browser.get_cookie("rapat_session")["value"]
    csrf = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    for path, body in (("/api/floor/grant", {"site": "licin"}), ("/api/floor/revoke", {"site": "licin"}),
                       ("/api/meetings", {"title": "x"}), ("/api/meetings/any/end", {})):
        answer = dash.request("POST", path, body, headers={"X-CSRF-Token": csrf}, cookie=cookie)
        assert answer.status == 403, (path, answer)
    assert dash.request("GET", "/api/sites", cookie=cookie).status == 200  # viewing is allowed


def test_language_switch_is_kept_in_the_session(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, dash, "ani")
    assert browser.find_element(By.CSS_SELECTOR, "nav a.active").text == "Armada"
    browser.get(dash.url + "/meeting?lang=en")
    browser.get(dash.url + "/")
    assert browser.find_element(By.CSS_SELECTOR, "nav a.active").text == "Fleet"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    browser.get(dash.url + "/?lang=id")


def test_a_broker_outage_shows_a_banner_not_stale_data(dash: Dash, browser) -> None:
    """Last in this module: it stops the broker."""
    from selenium.webdriver.common.by import By

    log_in(browser, dash, "ani")
    wait_for(browser, "document.body.dataset.connected === '1'", 5, "the live stream open")
    assert not browser.find_element(By.ID, "broker-banner").is_displayed()
    dash.console.broker.stop()
    wait_for(browser, "!document.getElementById('broker-banner').hidden", 5, "the broker banner")
    assert "BUKAN" in browser.find_element(By.ID, "broker-banner").text
    assert "stale" in browser.find_element(By.TAG_NAME, "body").get_attribute("class")
    cookie = browser.get_cookie("rapat_session")["value"]
    csrf = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    refused = dash.request("POST", "/api/floor/grant", {"site": "licin"}, headers={"X-CSRF-Token": csrf}, cookie=cookie)
    assert refused.status == 503 and "broker" in refused.json["error"]
    dash.console.start_broker()
    wait_until(lambda: browser.find_element(By.ID, "broker-banner").get_attribute("hidden") is not None, 15,
               what="the banner gone once the broker is back")
