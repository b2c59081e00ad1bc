"""The centre's update server for tests and the demo: nginx serving a directory over HTTP on 127.0.0.1.

Development tool; never installed on the Pi. Real nginx, so byte ranges (a resumed download), sizes
and errors are what a device meets in the field; `rate` limits the bandwidth per connection, so a
test can cut the power (kill the device) in the middle of a download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from appliance.media import proc
from appliance_dev.localnet import free_port, wait_for_port

CONF = """
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ application/octet-stream raucb; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {rate}
    }}
}}
"""


class BundleServer:
    def __init__(self, root: str | os.PathLike[str], rate: str = "") -> None:
        self.root = Path(root)
        self.rate = rate  # nginx's limit_rate, e.g. "200k" (bytes per second per connection)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bundle-server-")
        self.child: subprocess.Popen | None = None

    def start(self) -> BundleServer:
        conf = os.path.join(self.dir, "nginx.conf")
        # Run as root (CI), nginx's workers would be `nobody` and could not read a private temp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        Path(conf).write_text(CONF.format(user=user, dir=self.dir, port=self.port, root=self.root.resolve(),
                                          rate=f"limit_rate {self.rate};" if self.rate else ""))
        self.child = proc.spawn(["nginx", "-c", conf, "-p", self.dir, "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def requests(self) -> list[str]:
        """The access log's lines (method, path, status, bytes, range asked for)."""
        try:
            return Path(self.dir, "access.log").read_text().splitlines()
        except OSError:
            return []

    def sent(self) -> list[tuple[str, int]]:
        """Each request line and the body bytes nginx sent for it (combined log format: the quoted
        request, then status and bytes)."""
        answers = []
        for line in self.requests():
            fields = line.split('"')
            answers.append((fields[1], int(fields[2].split()[1])))
        return answers

    def close(self) -> None:
        proc.kill(self.child)
        self.child = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BundleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
