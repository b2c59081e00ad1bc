"""`serve --tls` over real TLS with the console's own CA, and the regency map drawn from the sites CSV's
lat,lon. Neither needs the broker: the dashboard serves its pages while the broker is away."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest

from appliance.console.home import Home
from appliance.console.operators import OperatorBook
from appliance_dev.localnet import free_port
from appliance_dev.waiting import stop_process, wait_until
from tests.console.conftest import Console
from tests.dashboard.conftest import PASSWORDS, ROOT, Dash, start_server

MAP_SHEET = ("id,name,kind,lat,lon\n"
             "kalibaru,Kecamatan Kalibaru,kecamatan,-8.2936,113.9800\n"   # the west end
             "wongsorejo,Kecamatan Wongsorejo,kecamatan,-7.9500,114.4000\n"  # the north-east
             "pesanggaran,Kecamatan Pesanggaran,kecamatan,-8.5900,114.0500\n")  # the south


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Console:
    base = tmp_path_factory.mktemp("dashboard-tls")
    console = Console(base / "home")
    console.ok("init", "--broker-url", f"mqtts://localhost:{free_port()}", "--media-host", "127.0.0.1")
    sheet = base / "map.csv"
    sheet.write_text(MAP_SHEET)
    console.ok("sites", "import", str(sheet))
    OperatorBook(console.home).add("ani", "operator", PASSWORDS["ani"])
    return console


def test_the_fleet_page_draws_the_sites_at_their_coordinates(home: Console, tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    process, port = start_server(home, log_path)
    try:
        dash = Dash(home, port, process, {}, log_path)
        cookie, _ = dash.login("ani")
        page = dash.request("GET", "/", cookie=cookie).body.decode()
        sites = {row["site"]: row for row in dash.request("GET", "/api/sites", cookie=cookie).json["sites"]}
    finally:
        stop_process(process)
    assert (sites["kalibaru"]["lat"], sites["kalibaru"]["lon"]) == (-8.2936, 113.98)
    assert sites["licin"]["lat"] is None  # not in the sheet: no position, and no dot
    svg = page.split('<svg id="site-map"', 1)[1].split("</svg>", 1)[0]
    dots = {site: (float(x), float(y), css) for site, css, x, y in re.findall(
        r'<circle id="map-([a-z0-9-]+)" class="dot ([a-z]+)" cx="([\d.]+)" cy="([\d.]+)"', svg)}
    assert set(dots) == {"kalibaru", "wongsorejo", "pesanggaran"}
    # West is left, north is up, and the bounding box fills the frame (20 px margin) on its tighter side.
    assert dots["kalibaru"][0] < dots["pesanggaran"][0] < dots["wongsorejo"][0]
    assert dots["wongsorejo"][1] < dots["kalibaru"][1] < dots["pesanggaran"][1]
    assert dots["wongsorejo"][1] == pytest.approx(20) and dots["pesanggaran"][1] == pytest.approx(400)
    assert {css for _, _, css in dots.values()} == {"never"}  # coloured by state: no site has been heard from
    assert "<title>Kecamatan Wongsorejo (wongsorejo)</title>" in svg


def https(port: int, context: ssl.SSLContext, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    connection.request(method, path, body=urlencode(body).encode() if body is not None else None, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_serve_tls_uses_the_consoles_ca_and_secure_cookies(home: Console, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "appliance.console", "--home", str(home.home), "serve",
                                    "--bind", f"127.0.0.1:{port}", "--tls"], cwd=ROOT, stdout=log, stderr=log)
    trusted = ssl.create_default_context(cafile=str(Home(home.home).ca_cert))  # verifies the chain and 127.0.0.1
    try:
        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"serve --tls exited {process.returncode}: {log_path.read_text()}")
            try:
                return https(port, trusted, "GET", "/login").status == 200
            except (ConnectionError, TimeoutError):
                return False

        wait_until(up, 20, what="the dashboard answering /login over TLS", interval=0.05)
        assert "https://127.0.0.1:" in log_path.read_text()
        login = https(port, trusted, "POST", "/login", {"username": "ani", "password": PASSWORDS["ani"]})
        assert login.status == 303, log_path.read_text()
        assert login.getheader("Strict-Transport-Security", "").startswith("max-age=")
        cookie = next(value for name, value in login.getheaders()
                      if name.lower() == "set-cookie" and value.startswith("rapat_session="))
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite"} <= set(attributes), cookie
        assert attributes["samesite"].lower() == "samesite=strict"
        # Anyone who does not trust the console's CA is told the certificate is not to be trusted.
        with pytest.raises(ssl.SSLCertVerificationError):
            https(port, ssl.create_default_context(), "GET", "/login")
    finally:
        stop_process(process)
