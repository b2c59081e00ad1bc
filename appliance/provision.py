"""Apply the site file a technician put on the RAPAT drive (run by appliance-provision.service).

`python -m appliance.provision [--boot-file PATH] [--target PATH] [--set-hostname]`

The boot partition is FAT: anyone holding the SD card can edit it. So a site file may set only
`site.*`, the broker's address (mqtts:// only) and credentials, its CA and client certificate, and
`security.allowed_media_hosts` (appliance.config.SITE_FILE_KEYS); everything else, above all
`security.*` and `paths.*`, comes only from the image's /etc/appliance/appliance.toml, and a site
file that tries to change it is rejected. A `ca.pem` beside it (appliance-console writes one) must
be a CA certificate; it is installed next to the target first (0644), so a site file whose
`broker.ca_file` points there is valid. See docs/security.md.

A valid site file is installed atomically as the target, owned by root with the daemon's group
and mode 0640 (it holds the broker password; the daemon may read it, not change it), and the
original is renamed to `<name>.applied` with the broker password removed, so the next boot does
not apply it again and the card no longer carries the secret. An invalid one changes nothing: the
previous configuration stays, the file stays where it is for the technician to fix, and the reasons
go to stderr (the unit sends that to the journal and the HDMI console) and to `provision-error.txt`
next to the target, where the daemon's display can show them. Every run also sets the hostname to
`rapat-<site id>` from the installed file, because a read-only root forgets /etc/hostname at each
boot.

Exit codes: 0 applied or nothing to apply, 2 invalid site file, 1 could not write.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pwd
import re
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from appliance import config as appliance_config
from appliance import wifi
from appliance.core.messages import Message, Problem, message, problem

BOOT_FILE = "/boot/firmware/appliance-site.toml"
TARGET = "/var/lib/appliance/site.toml"
BASE_FILE = "/etc/appliance/appliance.toml"
ERROR_NAME = "provision-error.txt"
CA_NAME = "ca.pem"
HOSTNAME_PREFIX = "rapat-"
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
SITE_FILE_MODE = 0o640
HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
                       re.IGNORECASE)
PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)
# The broker password and the Wi-Fi passphrase: the secrets a site file may carry.
PASSWORD_LINE = re.compile(r"^\s*((broker\s*\.\s*)?password|(wifi\s*\.\s*)?psk)\s*=")
PASSWORD_REMOVED = "# password removed from the boot partition after provisioning (the device keeps it)"
CONTENT_REMOVED = ("# This site file was applied. Its contents were removed from the boot partition because\n"
                   "# they held the broker password; the device keeps them in /var/lib/appliance/site.toml.\n")


def log(message: str) -> None:
    print(f"appliance-provision: {message}", file=sys.stderr, flush=True)


def _toml(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # appliance_config.load says why


def ca_problem(path: Path) -> Message | None:
    """Why `path` is not a CA file: it must hold PEM certificates, each a CA (BasicConstraints ca=True)."""
    # Here, not at the top: the daemon imports this module, and x509 costs it ~1 MB it never uses.
    from cryptography import x509  # noqa: PLC0415
    try:
        data = path.read_bytes()
    except OSError as exc:
        return message("provision.ca_unreadable", error=exc.strerror or exc)
    try:
        # One by one: x509.load_pem_x509_certificates is newer than the cryptography 38 we accept.
        certificates = [x509.load_pem_x509_certificate(block) for block in PEM_CERTIFICATE.findall(data)]
    except ValueError:
        certificates = []
    if not certificates:
        return message("provision.ca_not_pem")
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            return message("provision.ca_not_ca", subject=certificate.subject.rfc4514_string())
    return None


def boot_file_problems(boot_file: Path, document: dict[str, Any], base_file: Path,
                       boot_ca: Path | None, installed_ca: Path) -> list[Problem]:
    """What the boot partition may not do, on top of the daemon's own checks (docs/security.md)."""
    image = (_toml(base_file) or {}) if base_file.exists() else {}
    problems = appliance_config.site_file_problems(str(boot_file), document, image)
    security = document.get("security")
    hosts = security.get("allowed_media_hosts") if isinstance(security, dict) else None
    for host in hosts if isinstance(hosts, list) else ():
        if isinstance(host, str) and host and not _plain_host(host):
            problems.append(problem(str(boot_file), "security.allowed_media_hosts", "provision.host_not_plain", host=host))
    if boot_ca is not None and (wrong := ca_problem(boot_ca)):
        problems.append(Problem(str(boot_ca), "", wrong))
    broker = document.get("broker")
    ca_file = broker.get("ca_file") if isinstance(broker, dict) else None
    if isinstance(ca_file, str) and ca_file and Path(ca_file).exists() \
            and not (boot_ca is not None and Path(ca_file) == installed_ca) and (wrong := ca_problem(Path(ca_file))):
        problems.append(problem(str(boot_file), "broker.ca_file", "provision.ca_file_bad", path=ca_file, reason=wrong))
    return problems


def _plain_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(HOST_NAME.match(host))
    return True


def validate(boot_file: Path, base_file: Path, boot_ca: Path | None = None,
             installed_ca: Path | None = None) -> tuple[appliance_config.Config | None, list[Problem]]:
    """Check the site file the way the daemon will load it (on top of the image's defaults), and
    what the boot partition may set. `boot_ca`, if given, arrives as `installed_ca` in this run, so
    that file need not exist yet."""
    document = _toml(boot_file)
    problems = [] if document is None else boot_file_problems(
        boot_file, document, base_file, boot_ca, installed_ca or boot_file.with_name(CA_NAME))
    paths = [str(base_file)] if base_file.exists() else []
    paths.append(str(boot_file))
    try:
        loaded = appliance_config.load(paths)
    except appliance_config.ConfigError as exc:
        return None, problems + exc.problems
    arriving = (installed_ca,) if boot_ca is not None else ()
    problems += [wrong for wrong in appliance_config.file_problems(loaded)
                 if not any(wrong.message.params.get("path") == str(path) for path in arriving)]
    return (None, problems) if problems else (loaded, [])


def _owner(user: str | None) -> tuple[int, int] | None:
    """root and the daemon user's group, when run as root and that user exists."""
    if not user or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return 0, entry.pw_gid


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


def secure_installed(target: Path, owner: tuple[int, int] | None) -> None:
    """An installed file from an older version (owned by the daemon's user, 0600) becomes root's."""
    if owner is None or not target.exists():
        return
    info = target.stat()
    if (info.st_uid, info.st_gid) != owner:
        os.chown(target, *owner)
    if info.st_mode & 0o7777 != SITE_FILE_MODE:
        os.chmod(target, SITE_FILE_MODE)


def redact(text: str) -> str:
    """The site file without its broker password and Wi-Fi passphrase (line by line; the whole text if
    that is not enough)."""
    redacted = "\n".join(PASSWORD_REMOVED if PASSWORD_LINE.match(line) else line for line in text.split("\n"))
    try:
        document = tomllib.loads(redacted)
    except tomllib.TOMLDecodeError:
        return CONTENT_REMOVED
    broker, wifi_section = document.get("broker"), document.get("wifi")
    left = (isinstance(broker, dict) and "password" in broker) or (isinstance(wifi_section, dict) and "psk" in wifi_section)
    return CONTENT_REMOVED if left else redacted


def scrub_applied(applied: Path) -> bool:
    """Remove the broker password from an applied site file, in place: FAT overwrites the same
    clusters, so the secret does not stay in free space (the card's flash may still keep old copies).
    Not via a temporary file: FAT refuses chmod, and the file must never hold an applicable copy
    without the password under the boot file's own name."""
    data = applied.read_bytes()
    text = data.decode("utf-8", errors="surrogateescape")
    redacted = redact(text)
    if redacted == text:
        return False
    new = redacted.encode("utf-8", errors="surrogateescape")
    with open(applied, "r+b") as handle:
        handle.write(new + b"\n" * max(0, len(data) - len(new)))
        handle.flush()
        os.fsync(handle.fileno())
        handle.truncate(len(new))
        os.fsync(handle.fileno())
    return True


def install(boot_file: Path, target: Path, owner: tuple[int, int] | None) -> Path:
    atomic_write(target, boot_file.read_bytes(), SITE_FILE_MODE, owner)
    applied = boot_file.with_name(boot_file.name + ".applied")
    os.replace(boot_file, applied)
    # FAT has no journal; make the rename durable before the technician pulls the power.
    _fsync_dir(boot_file.parent)
    scrub_applied(applied)
    return applied


def installed_config(target: Path, base_file: Path) -> appliance_config.Config | None:
    if not target.exists():
        return None
    paths = ([str(base_file)] if base_file.exists() else []) + [str(target)]
    try:
        return appliance_config.load(paths)
    except appliance_config.ConfigError as exc:
        log(f"installed {target} is not valid any more: {'; '.join(exc.problems)}")
        return None


def apply_wifi(settings: dict[str, Any], etc: Path, live: bool) -> str:
    """Write (or remove) the site's Wi-Fi connection; tell NetworkManager when running for real."""
    path = etc / wifi.KEYFILE
    wanted = wifi.keyfile(settings) if settings.get("ssid") else None
    current = path.read_text() if path.exists() else None
    country = etc / wifi.COUNTRY_FILE
    if wanted is None:
        country.unlink(missing_ok=True)
    elif not country.exists() or country.read_text() != wifi.country_conf(settings):
        country.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(country, wifi.country_conf(settings).encode(), 0o644, None)
    if wanted == current:
        return "Wi-Fi unchanged" if wanted else "no Wi-Fi configured (cable)"
    if wanted is None:
        path.unlink()
        message = "Wi-Fi connection removed (cable)"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, wanted.encode(), 0o600, None)  # root's: it holds the passphrase
        message = f"Wi-Fi connection to {settings['ssid']!r} written ({path})"
    if live:
        steps = [["nmcli", "connection", "reload"]] + ([["nmcli", "connection", "up", wifi.CONNECTION_ID]] if wanted else [])
        for argv in steps:
            try:
                subprocess.run(argv, capture_output=True, timeout=30, check=True)
            except (OSError, subprocess.SubprocessError) as exc:
                message += f"; {' '.join(argv)} failed ({exc}): NetworkManager applies it at the next boot"
                break
    return message


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
    leftover = boot_file.with_name(boot_file.name + ".applied")
    try:
        if leftover.exists() and scrub_applied(leftover):
            log(f"removed the broker password from {leftover}")
    except OSError as exc:
        log(f"could not remove the broker password from {leftover}: {exc}")
    secure_installed(target, owner)
    if boot_file.exists():
        _, problems = validate(boot_file, base_file, boot_ca if boot_ca.exists() else None, installed_ca)
        if problems:
            error_file = write_error(target, [f"site file rejected, previous configuration kept: {boot_file}"]
                                     + problems, owner)
            log(f"{boot_file} is invalid; keeping the previous configuration (details in {error_file}):")
            for wrong in problems:
                log(f"  {wrong}")
            status = EXIT_INVALID
        else:
            if boot_ca.exists():
                # The console's CA travels beside the site file; it is public, so 0644, and root's.
                atomic_write(installed_ca, boot_ca.read_bytes(), 0o644, None)
            applied = install(boot_file, target, owner)
            (target.parent / ERROR_NAME).unlink(missing_ok=True)
            log(f"installed {boot_file} as {target}; original renamed to {applied.name}, without the password")
    else:
        log(f"no new site file at {boot_file}")
    config = installed_config(target, base_file)
    if config is None:
        log(f"no valid site configuration at {target}; copy appliance-site.toml to the boot partition")
    else:
        log(f"hostname {apply_hostname(config['site']['id'], etc, set_hostname)}")
        log(apply_wifi(config["wifi"], etc, set_hostname))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.provision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--boot-file", type=Path, default=Path(BOOT_FILE), help="site file on the boot partition")
    parser.add_argument("--target", type=Path, default=Path(TARGET), help="where the daemon reads the site file")
    parser.add_argument("--base", type=Path, default=Path(BASE_FILE), help="image-wide defaults it is layered on")
    parser.add_argument("--etc", type=Path, default=Path("/etc"), help="directory with hostname and hosts")
    parser.add_argument("--user", default="appliance",
                        help="the daemon's user: its group may read the installed file (run as root, user exists)")
    parser.add_argument("--set-hostname", action="store_true", help="also set the running system's hostname")
    args = parser.parse_args(argv)
    try:
        return provision(args.boot_file, args.target, args.base, args.etc, args.set_hostname, args.user)
    except OSError as exc:
        log(f"failed: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
