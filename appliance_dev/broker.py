"""A real Mosquitto on a loopback port: for the demo, the tests and the benchmarks.

Either this module writes the configuration (plain or TLS, passwords, an ACL, any further lines), or
it runs one written elsewhere as it is, such as the console's generated mosquitto.conf.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from appliance_dev.localnet import free_port, listening
from appliance_dev.waiting import stop_process, wait_until

# Logged at level "information" when a SIGHUP is taken; the reload ends before the next client is served.
RELOAD_LINE = "Reloading config."
# Every broker started here: small publishes leave at once, and the log shows RELOAD_LINE.
ALWAYS = ("set_tcp_nodelay true", "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
          "log_type information")


class Mosquitto:
    def __init__(self, workdir: Path, *, port: int | None = None, tls: dict[str, str] | None = None,
                 passwords: dict[str, str] | None = None, acl: str | None = None,
                 config: Path | None = None, extra_lines: Sequence[str] = ()) -> None:
        """`tls` holds the paths `ca`, `cert` and `key`; `passwords` maps user to password; `acl` is the
        ACL file's text. `config` is a configuration written elsewhere (it sets the listener, so `port`
        must say which), run instead of a generated one. `extra_lines` are added in either case."""
        if not shutil.which("mosquitto"):
            raise RuntimeError("mosquitto is not installed; run `make setup`")
        if config is not None and (port is None or tls or passwords is not None or acl is not None):
            raise ValueError("a given config sets its own TLS, passwords and ACL; name only the port it listens on")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.passwords = passwords
        self.acl = acl
        self.given_config = config
        self.extra_lines = list(extra_lines)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        if self.given_config is not None:
            raise ValueError(f"{self.given_config} decides whether the listener speaks TLS")
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _config_lines(self) -> list[str]:
        if self.given_config is not None:
            return self._included_lines(self.given_config)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", *ALWAYS]
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
        return lines + self.extra_lines

    def _included_lines(self, config: Path) -> list[str]:
        # Mosquitto includes directories, not files: the given file must be the only *.conf in its own.
        others = sorted(path.name for path in config.parent.glob("*.conf") if path != config)
        if others or config.suffix != ".conf":
            raise ValueError(f"{config} must be the only *.conf file in {config.parent} (found {others})")
        # A SIGHUP rereads the included file too. ALWAYS repeats what it may set already: harmless.
        return [f"include_dir {config.parent}", *ALWAYS, *self.extra_lines]

    def start(self, timeout: float = 5.0) -> Mosquitto:
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(self._config_lines()) + "\n")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log, stderr=log)
        wait_until(self._listening, timeout, what=lambda: f"mosquitto listening on {self.port}:\n{self.log()}",
                   interval=0.02)
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log()}")
        return listening(self.port)

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP: reread the configuration, passwords and ACL; returns once the broker has started to."""
        assert self.process is not None
        before = self.log().count(RELOAD_LINE)
        self.process.send_signal(signal.SIGHUP)
        wait_until(lambda: self.log().count(RELOAD_LINE) > before, timeout, what="mosquitto to reload", interval=0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
