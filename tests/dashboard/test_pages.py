"""The site page, the rollout page and the live meeting page in the browser; with DASHBOARD_SCREENSHOTS=1 this
module also saves each page to docs/dashboard-*.png (how the README's pictures are made)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from appliance.console import records
from appliance.core.clock import rfc3339
from tests.dashboard.conftest import ROOT, Dash, log_in, wait_for

SHOTS = os.environ.get("DASHBOARD_SCREENSHOTS") == "1"


def shoot(browser, name: str) -> None:  # noqa: ANN001
    if SHOTS:
        height = browser.execute_script("return Math.min(document.body.scrollHeight, 2400)")
        browser.set_window_size(1400, max(900, height))
        browser.save_screenshot(str(ROOT / "docs" / f"dashboard-{name}.png"))
        browser.set_window_size(1400, 1000)


def store_telemetry(dash: Dash, site: str) -> None:
    """What `collect` would have stored over the last two hours (telemetry is not retained on the broker)."""
    db = records.connect(Path(dash.console.home) / "console.db")
    now = time.time()
    try:
        db.execute("BEGIN")
        for step in range(24):
            at = now - (24 - step) * 300
            document = {"v": 1, "site": site, "at": rfc3339(at), "uptime_s": 3600 + step * 300, "state": "idle",
                        "cpu_temp_c": 48 + (step % 7) * 1.5, "mem_available_mb": 1500 - step * 9, "mqtt_reconnects": step // 8,
                        "load1": 0.3, "disk_free_mb": 20000, "boot_id": "b1", "system_uptime_s": 7200 + step * 300}
            records.ingest(db, f"rapat/v1/site/{site}/telemetry", json.dumps(document).encode(), now)
        db.execute("COMMIT")
    finally:
        db.close()


def test_fleet_site_and_rollout_pages(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    store_telemetry(dash, "kalibaru")
    log_in(browser, dash, "ani")
    wait_for(browser, "document.body.dataset.connected === '1'", 5, "the live stream open")
    # Filters and sorting work in the page itself.
    browser.find_element(By.CSS_SELECTOR, "#filter-kind option[value='desa']").click()
    assert browser.execute_script("return Array.from(document.querySelectorAll('#fleet-rows tr')).every(r => r.hidden)")
    browser.find_element(By.CSS_SELECTOR, "#filter-kind option[value='']").click()
    browser.find_element(By.CSS_SELECTOR, "th[data-sort='uptime']").click()
    browser.find_element(By.CSS_SELECTOR, "th[data-sort='site']").click()
    first = browser.execute_script("return document.querySelector('#fleet-rows tr').dataset.site")
    assert first == "bangorejo"
    shoot(browser, "armada")

    browser.get(dash.url + "/sites/kalibaru")
    assert "Kecamatan Kalibaru" in browser.find_element(By.ID, "site-title").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.graph polyline")) == 3  # temperature, memory, reconnects
    assert "siaga" in browser.find_element(By.ID, "site-state").text
    shoot(browser, "site")
    browser.get(dash.url + "/sites/atlantis")
    assert "unknown site" in browser.find_element(By.TAG_NAME, "main").text

    browser.get(dash.url + "/rollout")
    assert "Target Oktober" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_elements(By.CSS_SELECTOR, ".tiles .tile")
    shoot(browser, "rollout")


def test_meeting_page_live(dash: Dash, browser) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, dash, "ani", "/meeting")
    cookie = browser.get_cookie("rapat_session")["value"]
    csrf = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    body = {"title": "Musrenbang Kabupaten", "group": "kecamatan", "auto_join": True,
            "program_url": "rtmp://127.0.0.1/live/program", "ingest_url": "rtmp://127.0.0.1/live/{site}"}
    started = dash.request("POST", "/api/meetings", body, headers={"X-CSRF-Token": csrf}, cookie=cookie).json
    assert started["summary"] == {"targeted": 25, "ok": 6, "refused": 0, "no_answer": 19}  # 6 simulated sites
    wait_for(browser, "document.querySelectorAll('.cell').length === 6", 10, "six sites in the grid")
    wait_for(browser, "(document.querySelector('.acks') || {}).textContent.includes('19 belum menjawab')", 5, "missing acks")
    dash.sims["giri"].press()
    time.sleep(0.3)
    dash.sims["genteng"].press()
    wait_for(browser, "document.querySelectorAll('.hand').length === 2", 5, "two hands, in order")
    order = browser.execute_script("return Array.from(document.querySelectorAll('.hand')).map(h => h.dataset.site)")
    assert order == ["giri", "genteng"]  # oldest first
    browser.find_element(By.CSS_SELECTOR, '.hand[data-site="giri"] button.grant').click()
    wait_for(browser, "document.querySelector('#cell-giri.floor-speaking')", 3, "giri speaking")
    shoot(browser, "rapat")
    browser.get(dash.url + "/meeting?lang=en")
    # Read in the page, not through an element handle: a live update may redraw the box in between.
    wait_for(browser, "(document.querySelector('.floor-box h3') || {textContent: ''}).textContent.includes('Speaking')",
             5, "the English heading")
    browser.get(dash.url + "/meeting?lang=id")
