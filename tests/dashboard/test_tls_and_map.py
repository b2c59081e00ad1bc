"""`serve --tls` over real TLS with the console's own CA (and the names its certificate carries), `serve`
on a port already in use, and the regency map drawn from the sites CSV's lat,lon. None needs the broker:
the dashboard serves its pages while the broker is away."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest

from appliance.console.home import Home
from appliance.console.operators import OperatorBook
from appliance.console.web.tls import names_of
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
    # A specific bind: the certificate names that address, and only it.
    assert names_of((home.home / "dashboard" / "dashboard.pem").read_bytes()) == ["127.0.0.1"]


def machine_addresses() -> list[str]:
    """This machine's global addresses as iproute2 lists them (what another machine on the network dials)."""
    if not shutil.which("ip"):
        return []
    listing = json.loads(subprocess.run(["ip", "-j", "addr", "show", "scope", "global"], capture_output=True,
                                        text=True, check=True).stdout or "[]")
    return [info["local"] for link in listing for info in link.get("addr_info", []) if info.get("local")]


def handshake(port: int, name: str, cafile: Path) -> dict:
    """A TLS handshake on 127.0.0.1:port checking that the certificate is valid for `name`, as a browser
    that typed https://name:port/ checks it."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.getpeercert()


def test_tls_on_every_address_names_the_machine_not_the_wildcard(home: Console, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "appliance.console", "--home", str(home.home), "serve",
                                    "--bind", f"0.0.0.0:{port}", "--tls", "--tls-name", "dasbor.kantor.example",
                                    "--tls-name", "10.20.30.40"], cwd=ROOT, stdout=log, stderr=log)
    cafile = Home(home.home).ca_cert
    try:
        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"serve --tls exited {process.returncode}: {log_path.read_text()}")
            try:
                return bool(handshake(port, "127.0.0.1", cafile))
            except (ConnectionError, TimeoutError):
                return False

        wait_until(up, 20, what="the dashboard answering over TLS on 0.0.0.0", interval=0.05)
        names = names_of((home.home / "dashboard" / "dashboard.pem").read_bytes())
        assert "0.0.0.0" not in names
        expected = {socket.gethostname().lower(), socket.getfqdn().lower(), "localhost", "127.0.0.1",
                    "dasbor.kantor.example", "10.20.30.40", *machine_addresses()}
        assert expected <= set(names), (expected - set(names), names)
        # What a browser checks: the host name, the FQDN and each address typed into its address bar.
        for name in (socket.gethostname(), socket.getfqdn(), *machine_addresses(), "dasbor.kantor.example"):
            handshake(port, name, cafile)  # raises SSLCertVerificationError for a name not in the certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(port, "elsewhere.example", cafile)
        assert f"https://{socket.gethostname()}:{port}/" in log_path.read_text()
    finally:
        stop_process(process)


def test_a_port_in_use_exits_1_naming_the_address(home: Console) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "appliance.console", "--home", str(home.home), "serve",
                                 "--bind", f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert f"cannot listen on 127.0.0.1:{port}: in use" in result.stderr
    assert "Traceback" not in result.stderr
