"""Apply the site file a technician put on the boot partition (run by appliance-provision.service).

`python -m appliance.provision [--boot-file PATH] [--target PATH] [--set-hostname]`

A valid site file is installed atomically as the target (mode 0600: it may hold the broker
password), owned by the daemon's user, and the original is renamed to `<name>.applied` so the next
boot does not apply it again. An invalid one changes nothing: the previous configuration stays,
the file stays where it is for the technician to fix, and the reasons go to stderr (the unit sends
that to the journal and the HDMI console) and to `provision-error.txt` next to the target, where
the daemon's display can show them. A `ca.pem` beside the site file (appliance-console writes one)
is installed next to the target first, so a site file whose `broker.ca_file` points there is valid.
Every run also sets the hostname to `rapat-<site id>` from the installed file, because a read-only
root forgets /etc/hostname at each boot.

Exit codes: 0 applied or nothing to apply, 2 invalid site file, 1 could not write.
"""

from __future__ import annotations

import argparse
import os
import pwd
import socket
import sys
import tempfile
from pathlib import Path

from appliance import config as appliance_config

BOOT_FILE = "/boot/firmware/appliance-site.toml"
TARGET = "/var/lib/appliance/site.toml"
BASE_FILE = "/etc/appliance/appliance.toml"
ERROR_NAME = "provision-error.txt"
CA_NAME = "ca.pem"
HOSTNAME_PREFIX = "rapat-"
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def log(message: str) -> None:
    print(f"appliance-provision: {message}", file=sys.stderr, flush=True)


def validate(boot_file: Path, base_file: Path,
             arriving: tuple[Path, ...] = ()) -> tuple[appliance_config.Config | None, list[str]]:
    """Check the site file the way the daemon will load it: on top of the image's defaults.

    `arriving` are files this run installs next to it (the CA), so they need not exist yet.
    """
    paths = [str(base_file)] if base_file.exists() else []
    paths.append(str(boot_file))
    try:
        loaded = appliance_config.load(paths)
    except appliance_config.ConfigError as exc:
        return None, exc.problems
    problems = [problem for problem in appliance_config.file_problems(loaded)
                if not any(f" {path} " in problem for path in arriving)]
    return (None, problems) if problems else (loaded, [])


def _owner(user: str | None) -> tuple[int, int] | None:
    if not user:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def atomic_write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Write via a temporary file in the same directory, fsync, rename: a power cut leaves the old
    file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, mode)
        if owner:
            os.fchown(handle, *owner)
        os.write(handle, data)
        os.fsync(handle)
        os.close(handle)
        handle = -1
        os.replace(temp, path)
    except BaseException:
        if handle >= 0:
            os.close(handle)
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(boot_file: Path, target: Path, owner: tuple[int, int] | None) -> Path:
    atomic_write(target, boot_file.read_bytes(), 0o600, owner)
    applied = boot_file.with_name(boot_file.name + ".applied")
    os.replace(boot_file, applied)
    # FAT has no journal; make the rename durable before the technician pulls the power.
    _fsync_dir(boot_file.parent)
    return applied


def installed_site_id(target: Path, base_file: Path) -> str | None:
    if not target.exists():
        return None
    paths = ([str(base_file)] if base_file.exists() else []) + [str(target)]
    try:
        return appliance_config.load(paths)["site"]["id"]
    except appliance_config.ConfigError as exc:
        log(f"installed {target} is not valid any more: {'; '.join(exc.problems)}")
        return None


def apply_hostname(site_id: str, etc: Path, live: bool) -> str:
    hostname = HOSTNAME_PREFIX + site_id
    hostname_file = etc / "hostname"
    if not hostname_file.exists() or hostname_file.read_text().strip() != hostname:
        atomic_write(hostname_file, f"{hostname}\n".encode(), 0o644, None)
    hosts_file = etc / "hosts"
    lines = hosts_file.read_text().splitlines() if hosts_file.exists() else ["127.0.0.1\tlocalhost"]
    # Debian resolves its own name through 127.0.1.1; sudo and mosquitto's client id lookups stall without it.
    wanted = f"127.0.1.1\t{hostname}"
    others = [line for line in lines if not line.startswith("127.0.1.1")]
    if wanted not in lines or len(others) != len(lines) - 1:
        atomic_write(hosts_file, ("\n".join(others + [wanted]) + "\n").encode(), 0o644, None)
    if live and socket.gethostname() != hostname:
        socket.sethostname(hostname)
    return hostname


def write_error(target: Path, problems: list[str], owner: tuple[int, int] | None) -> Path:
    error_file = target.parent / ERROR_NAME
    atomic_write(error_file, ("\n".join(problems) + "\n").encode(), 0o640, owner)
    return error_file


def provision(boot_file: Path, target: Path, base_file: Path, etc: Path, set_hostname: bool,
              user: str | None = "appliance") -> int:
    owner = _owner(user)
    status = EXIT_OK
    boot_ca, installed_ca = boot_file.with_name(CA_NAME), target.parent / CA_NAME
    if boot_file.exists():
        _, problems = validate(boot_file, base_file, (installed_ca,) if boot_ca.exists() else ())
        if problems:
            error_file = write_error(target, [f"site file rejected, previous configuration kept: {boot_file}"]
                                     + problems, owner)
            log(f"{boot_file} is invalid; keeping the previous configuration (details in {error_file}):")
            for problem in problems:
                log(f"  {problem}")
            status = EXIT_INVALID
        else:
            if boot_ca.exists():
                # The console's CA travels beside the site file; it is public, so 0644.
                atomic_write(installed_ca, boot_ca.read_bytes(), 0o644, owner)
            applied = install(boot_file, target, owner)
            (target.parent / ERROR_NAME).unlink(missing_ok=True)
            log(f"installed {boot_file} as {target}; original renamed to {applied.name}")
    else:
        log(f"no new site file at {boot_file}")
    site_id = installed_site_id(target, base_file)
    if site_id is None:
        log(f"no valid site configuration at {target}; copy appliance-site.toml to the boot partition")
    else:
        log(f"hostname {apply_hostname(site_id, etc, set_hostname)}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.provision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--boot-file", type=Path, default=Path(BOOT_FILE), help="site file on the boot partition")
    parser.add_argument("--target", type=Path, default=Path(TARGET), help="where the daemon reads the site file")
    parser.add_argument("--base", type=Path, default=Path(BASE_FILE), help="image-wide defaults it is layered on")
    parser.add_argument("--etc", type=Path, default=Path("/etc"), help="directory with hostname and hosts")
    parser.add_argument("--user", default="appliance", help="owner of the installed file (if that user exists)")
    parser.add_argument("--set-hostname", action="store_true", help="also set the running system's hostname")
    args = parser.parse_args(argv)
    try:
        return provision(args.boot_file, args.target, args.base, args.etc, args.set_hostname, args.user)
    except OSError as exc:
        log(f"failed: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
