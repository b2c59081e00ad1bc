"""The dashboard's harness: a real Mosquitto from the console's generated configuration, simulated sites
(real MQTT connections running the device core), the real `appliance-console serve` as a subprocess,
and real headless Chromium driven by Selenium. Shared by a module's tests (one start, ~3 s)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.console.operators import OperatorBook
from appliance_dev.localnet import free_port
from appliance_dev.simulate import SimFleet, SimSite
from appliance_dev.waiting import stop_process, wait_until
from tests.console.conftest import Console

ROOT = Path(__file__).resolve().parents[2]
SITES = ("kalibaru", "licin", "muncar", "pesanggaran", "genteng", "giri")
PASSWORDS = {"ani": "ani-operator-pw", "budi": "budi-operator-pw", "citra": "citra-operator-pw", "vera": "vera-viewer-pw"}
ROLES = {"ani": "operator", "budi": "operator", "citra": "operator", "vera": "viewer"}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Dash:
    console: Console
    port: int
    process: subprocess.Popen
    sims: dict[str, SimSite]
    log_path: Path
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                cookie: str | None = None, form: bool = False) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        sent = dict(headers or {})
        data = None
        if body is not None:
            if form:
                from urllib.parse import urlencode
                data = urlencode(body).encode()
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                sent["Content-Type"] = "application/json"
        if cookie:
            sent["Cookie"] = f"rapat_session={cookie}"
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        connection.close()
        return answer

    def login(self, name: str) -> tuple[str, str]:
        """(session cookie, CSRF token) of a fresh session for `name`."""
        answer = self.request("POST", "/login", {"username": name, "password": PASSWORDS[name]}, form=True)
        assert answer.status == 303, answer
        cookie = answer.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        page = self.request("GET", "/meeting", cookie=cookie).body.decode()
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        return cookie, csrf

    def meetings(self, cookie: str) -> list[dict]:
        return self.request("GET", "/api/meetings", cookie=cookie).json["meetings"]


def start_server(console: Console, log_path: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = log_path.open("ab")
    process = subprocess.Popen([sys.executable, "-m", "appliance.console", "--home", str(console.home), "serve",
                                "--bind", f"127.0.0.1:{port}", *extra], cwd=ROOT, stdout=log, stderr=log)
    log.close()

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log_path.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/login")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    wait_until(up, 20, what="the dashboard answering /login", interval=0.05)
    return process, port


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory):
    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed (make setup)")
    base = tmp_path_factory.mktemp("dashboard")
    console = Console(base / "home").with_fleet_broker()
    book = OperatorBook(console.home)
    for name, password in PASSWORDS.items():
        book.add(name, ROLES[name], password)
    sims = console.sim_sites(SITES)
    fleet = SimFleet(sims).start()
    process = None
    try:
        log_path = base / "serve.log"
        process, port = start_server(console, log_path)
        harness = Dash(console, port, process, {site.spec.id: site for site in sims}, log_path)
        cookie, _ = harness.login("ani")
        wait_until(lambda: sum(1 for row in harness.request("GET", "/api/sites", cookie=cookie).json["sites"]
                               if row["online"]) == len(SITES), 15, what="every simulated site online in the dashboard")
        yield harness
    finally:
        if process is not None:
            stop_process(process)
        fleet.stop()
        console.stop_all()


@pytest.fixture(scope="module")
def browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (make setup installs chromium and chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def log_in(browser, dash: Dash, name: str, path: str = "/") -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(dash.url + path)
    browser.find_element(By.ID, "username").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    browser.find_element(By.ID, "login-button").click()
    wait_until(lambda: "/login" not in browser.current_url, 10, what=f"{name} logged in")


def wait_for(browser, script: str, timeout: float = 5.0, what: str = "") -> Any:
    """Poll a JavaScript expression until it is truthy; its value."""
    return wait_until(lambda: browser.execute_script("return " + script), timeout, what=what or script, interval=0.02)
