"""Where the console keeps what it owns, and how it writes files without ever leaving half of one."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "APPLIANCE_CONSOLE_HOME"


def default_home(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_HOME):
        return Path(environ[ENV_HOME])
    data = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "appliance-console"


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "console.db"

    @property
    def signing_key(self) -> Path:
        return self.root / "console-key.pem"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server" / "server-key.pem"

    # The fleet's update signing keys (`update keys`), separate from the command key and the broker's CA.
    @property
    def update_ca_cert(self) -> Path:
        return self.root / "update" / "ca.pem"

    @property
    def update_ca_key(self) -> Path:
        return self.root / "update" / "ca-key.pem"

    @property
    def update_signing_cert(self) -> Path:
        return self.root / "update" / "signing.pem"

    @property
    def update_signing_key(self) -> Path:
        return self.root / "update" / "signing-key.pem"

    def ensure(self) -> None:
        # The home holds the signing key and every site's password: only its owner may enter.
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_many(files: dict[Path, tuple[bytes | str, int]]) -> None:
    """Write every file to a temporary name first, rename only when all were written.

    Not atomic as a set, but a failure while writing (disk full, permissions) leaves every old
    file as it was, which is what matters for an operator re-running the command.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, (data, mode) in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                data = data.encode("utf-8")
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            staged.append((tmp, path))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
