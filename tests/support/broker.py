"""A real Mosquitto on a free loopback port, configured per test (TLS, passwords, ACL as needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from appliance_dev.localnet import free_port, wait_for_port


class Mosquitto:
    def __init__(self, workdir: Path, *, tls: dict[str, str] | None = None,
                 passwords: dict[str, str] | None = None, acl: str | None = None, port: int | None = None) -> None:
        if not shutil.which("mosquitto"):
            raise RuntimeError("mosquitto is not installed; run `make setup`")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.passwords = passwords
        self.acl = acl
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "set_tcp_nodelay true", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice"]
        if os.geteuid() == 0:
            lines.append("user root")  # keep reading our own key files; mosquitto would drop to 'mosquitto'
        if self.tls:
            lines += [f"cafile {self.tls['ca']}", f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
        if self.passwords is not None:
            password_file = self.workdir / "passwords"
            password_file.write_text("")
            for user, password in self.passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> Mosquitto:
        config = self._write_config()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log, stderr=log)
        log.close()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
