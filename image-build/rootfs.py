"""What build-image changes inside the mounted root file system."""

from __future__ import annotations

import configparser
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imagelib import BuildError, Cleanup, Partition, mount, run

VENV = "/opt/rapat-appliance"
PYTHON_VERSION = "3.11"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON_VERSION}/site-packages"
DIST_NAME = "rapat_appliance"  # the project's name as in wheel and dist-info names
# Development tools live in appliance_dev/ (demo, simulated fleets, central-media stand-in, loopback
# helpers) and must never reach the image: a module, package or entry point by one of these names fails the build.
DEV_TOOLS = frozenset({"appliance_dev", "demo", "simulate", "central_media", "localnet"})
# Pi OS bookworm has glibc 2.36: every manylinux tag up to 2.36 fits. Listed one by one because
# older pip (23.x) does not expand a manylinux tag to the older ones.
WHEEL_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64"]
OVERLAY_INIT = "/usr/lib/rapat-appliance/overlay-init"
DATA_LABEL = "rapat-data"
JOURNAL_DIR = "/var/log/journal"
DATA_JOURNAL_DIR = "/var/lib/appliance/journal"  # on the data partition
UNPROVISIONED_HOSTNAME = "rapat-unprovisioned"
# Console scripts with a launcher in the venv's bin/: the technician's command, RAUC's boot-chooser
# (system.conf bootloader-custom-backend=/opt/rapat-appliance/bin/rapat-tryboot) and the update's
# trial guard (appliance-trial-guard.service).
LAUNCHERS = ("appliance", "rapat-tryboot", "rapat-trial-guard")
ENABLE = ["appliance.service", "appliance-provision.service", "appliance-audio.service", "appliance-reboot.path",
          "appliance-trial-guard.service"]
# The audio engine's launcher and configuration (systemd/audio/; see appliance-audio.service).
AUDIO_ENGINE = "/usr/lib/rapat-appliance/audio-engine"
AUDIO_CONFIG = "/usr/share/rapat-appliance/audio"
# Present on Pi OS Lite, not needed by an unattended appliance. userconfig is the interactive
# first-boot user wizard: it would stop the boot at a prompt nobody answers.
MASK = ["bluetooth.service", "hciuart.service", "avahi-daemon.service", "avahi-daemon.socket",
        "triggerhappy.service", "triggerhappy.socket", "dphys-swapfile.service", "ModemManager.service",
        "cups.service", "cups-browsed.service", "userconfig.service", "apt-daily.timer",
        "apt-daily-upgrade.timer", "man-db.timer"]
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive",
              "HOME": "/root"}


def _binfmt_aarch64() -> Path:
    """Make sure arm64 programs run in the chroot through qemu-user-static; return the interpreter."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True)
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise BuildError("arm64 programs cannot run here: install qemu-user-static and binfmt-support "
                         "(qemu-aarch64 is not registered in /proc/sys/fs/binfmt_misc)")
    fields = dict(line.split(" ", 1) for line in entry.read_text().splitlines() if " " in line)
    return Path(fields["interpreter"]) if "F" not in fields.get("flags", "") else Path()


def apt_install(root: Path, packages: list[str], epoch: int, cleanup: Cleanup) -> None:
    interpreter = _binfmt_aarch64()
    mark = cleanup.mark()
    if interpreter != Path():
        # Without binfmt's fix-binary flag the kernel looks for qemu inside the chroot.
        inside = root / str(interpreter).lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interpreter, inside)
        cleanup.push(f"remove {inside}", inside.unlink)
    mount("proc", root / "proc", cleanup, "-t", "proc")
    mount("sysfs", root / "sys", cleanup, "-t", "sysfs")
    mount("/dev", root / "dev", cleanup, "--bind")
    mount("/dev/pts", root / "dev/pts", cleanup, "--bind")
    resolv, saved = root / "etc/resolv.conf", root / "etc/resolv.conf.rapat-build"
    if os.path.lexists(resolv):
        os.rename(resolv, saved)
        cleanup.push("restore resolv.conf", lambda: os.replace(saved, resolv))
    else:
        cleanup.push("remove resolv.conf", lambda: resolv.unlink(missing_ok=True))
    shutil.copyfile("/etc/resolv.conf", resolv)
    # Services must not start inside the build chroot.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    cleanup.push("remove policy-rc.d", policy.unlink)
    env = {**CHROOT_ENV, "SOURCE_DATE_EPOCH": str(epoch)}
    run("chroot", root, "apt-get", "-q", "update", env=env)
    run("chroot", root, "apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", "--no-install-recommends", "install", *packages, env=env)
    run("chroot", root, "apt-get", "clean", env=env)
    cleanup.unwind(mark)


def _pip(*args: str | os.PathLike, env: dict | None = None) -> str:
    return run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args,
               capture=True, env=env)


def install_python(root: Path, repo: Path, wheel_cache: Path, epoch: int) -> dict[str, str]:
    """Install the appliance and its aarch64/cp311 wheels as a venv in /opt, from the build host:
    unpacking wheels runs no ARM code. The venv sees Debian's packages (picamera2, libcamera, lgpio,
    systemd) through include-system-site-packages."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_NO_CACHE_DIR": "1"}
    with tempfile.TemporaryDirectory(prefix="rapat-wheel-") as temp:
        # Build from a copy: an in-tree build would write build/ and egg-info into the checkout. Only
        # appliance/ is copied, so appliance_dev/ (and anything else in the checkout) cannot get in.
        source = Path(temp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (repo / name).exists():
                shutil.copy2(repo / name, source / name)
        shutil.copytree(repo / "appliance", source / "appliance", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        local = Path(temp) / "wheel"
        # Offline when the build host's Python can build wheels itself; else pip fetches setuptools.
        offline = all(importlib.util.find_spec(name) for name in ("setuptools", "wheel"))
        _pip("wheel", "--quiet", "--no-deps", *(["--no-build-isolation"] if offline else []), "-w", local, source,
             env=env)
        wheel = next(local.glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            check_no_dev_tools(archive.namelist(), wheel.name)  # before anything is downloaded or installed
        requirements = _requirements(wheel)
        wheel_cache.mkdir(parents=True, exist_ok=True)
        target = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
        target += [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
        try:  # everything already in the cache: no index needed (and no network)
            _pip("download", "--quiet", "--no-index", "--find-links", wheel_cache, *target, "-d", wheel_cache,
                 *requirements, env=env)
        except BuildError:
            _pip("download", "--quiet", *target, "-d", wheel_cache, *requirements, env=env)
        site = root / SITE_PACKAGES.lstrip("/")
        _pip("install", "--quiet", "--no-index", "--no-compile", "--find-links", wheel_cache, "--find-links", local,
             *target, "--target", site, wheel.name.split("-")[0].replace("_", "-"), env=env)
    appliance_files(root)  # checks what pip installed, too
    venv = root / VENV.lstrip("/")
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts with the build host's shebang
    (venv / "bin").mkdir(exist_ok=True)
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = true\n"
                                     f"version = {PYTHON_VERSION}\n")
    for name, points_to in (("python", "/usr/bin/python3"), ("python3", "python")):
        link = venv / "bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(points_to)
    for name, (module, function) in _entry_points(site, LAUNCHERS).items():
        launcher = venv / "bin" / name
        launcher.write_text(f"#!{VENV}/bin/python\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        launcher.chmod(0o755)
    # Technicians type `appliance status`; /usr/local/bin is on everyone's PATH.
    command = root / "usr/local/bin/appliance"
    command.parent.mkdir(parents=True, exist_ok=True)
    command.unlink(missing_ok=True)
    command.symlink_to(f"{VENV}/bin/appliance")
    if sys.version_info[:2] == (3, 11):
        # Same bytecode format as the Pi's Python 3.11; checked-hash pycs do not depend on mtimes.
        run(sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
            "-s", root, "-p", "/", site, env=env)
    return {match.group(1): match.group(2) for match in
            (re.match(r"(.+)-([^-]+)\.dist-info$", entry.name) for entry in site.iterdir()) if match}


def _entry_points(site: Path, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """{name: (module, function)} of the appliance's console scripts `names`, from its dist-info."""
    dist_info = next(site.glob(f"{DIST_NAME}-*.dist-info"))
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str
    parser.read(dist_info / "entry_points.txt")
    scripts = parser["console_scripts"] if parser.has_section("console_scripts") else {}
    found = {}
    for name in names:
        if name not in scripts:
            raise BuildError(f"{dist_info.name}/entry_points.txt has no console script {name!r} (pyproject.toml)")
        module, _, function = scripts[name].strip().partition(":")
        found[name] = (module, function)
    return found


def is_dev_tool(path: str) -> bool:
    """Whether a file path (appliance/demo.py) or module path (appliance_dev.demo:main) names a dev tool."""
    return any(part in DEV_TOOLS for part in re.split(r"[/\\.:]", path.lower()))


def check_no_dev_tools(paths: Iterable[str], where: str) -> None:
    found = sorted(path for path in paths if is_dev_tool(path))
    if found:
        raise BuildError(f"{where}: development tools in the appliance's files: {', '.join(found)} "
                         "(they belong in appliance_dev/, which never goes into the image)")


def appliance_files(root: Path) -> list[str]:
    """The files the appliance's distribution installed, relative to site-packages, sorted, as its
    dist-info RECORD lists them (the sources: compiled .pyc are not in RECORD; neither are the
    dist-info's own files nor the launchers pip writes to bin/, which install_python replaces).
    Fails if any of them, or any entry point, is a development tool."""
    site = root / SITE_PACKAGES.lstrip("/")
    dist_infos = sorted(site.glob(f"{DIST_NAME}-*.dist-info"))
    if len(dist_infos) != 1:
        raise BuildError(f"expected one {DIST_NAME}-*.dist-info in {SITE_PACKAGES}, found "
                         f"{', '.join(p.name for p in dist_infos) or 'none'}")
    dist_info = dist_infos[0]
    with open(dist_info / "RECORD", newline="") as handle:
        recorded = [row[0].replace("\\", "/") for row in csv.reader(handle) if row]
    check_no_dev_tools(recorded, f"{SITE_PACKAGES}/{dist_info.name}/RECORD")
    entry_points = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    entry_points.optionxform = str
    if (dist_info / "entry_points.txt").exists():
        entry_points.read(dist_info / "entry_points.txt")
    targets = [value.strip() for section in entry_points.sections() for value in entry_points[section].values()]
    check_no_dev_tools(targets, f"{SITE_PACKAGES}/{dist_info.name}/entry_points.txt")
    return sorted(path for path in recorded
                  if not path.startswith(("../", "/", f"{dist_info.name}/")))


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    return [line.split(": ", 1)[1] for line in lines
            if line.startswith("Requires-Dist: ") and "extra ==" not in line]


def _install(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _unit_exists(root: Path, unit: str) -> bool:
    return any((root / directory / unit).exists() for directory in UNIT_DIRS)


def install_system(root: Path, repo: Path, defaults: Path | None, read_only: bool, epoch: int,
                   layout: Any = None) -> list[str]:
    """`layout`: the A/B layout (abimage.Layout), or None for the single-root image."""
    units = repo / "systemd"
    for unit in [*units.glob("*.service"), *units.glob("*.path")]:
        _install(unit, root / "usr/lib/systemd/system" / unit.name, 0o644)
    _install(units / "reboot-on-request", root / "usr/lib/rapat-appliance/reboot-on-request", 0o755)
    for drop_in in ("system.conf.d", "journald.conf.d"):
        for conf in (units / drop_in).glob("*.conf"):
            _install(conf, root / "etc/systemd" / drop_in / conf.name, 0o644)
    for kind in ("sysusers.d", "tmpfiles.d", "sysctl.d"):
        for conf in (units / kind).glob("*.conf"):
            _install(conf, root / "usr/lib" / kind / conf.name, 0o644)
    _install(units / "audio/rapat-audio-engine", root / AUDIO_ENGINE.lstrip("/"), 0o755)
    for conf in sorted((units / "audio").rglob("*")):
        if conf.is_file() and conf.suffix in (".conf", ".lua"):
            _install(conf, root / AUDIO_CONFIG.lstrip("/") / conf.relative_to(units / "audio"), 0o644)
    for doc in ("technician.md", "image.md", "security.md"):
        if (repo / "docs" / doc).exists():
            _install(repo / "docs" / doc, root / "usr/share/doc/rapat-appliance" / doc, 0o644)
    # A bare file name is looked up in the image's sysusers.d/tmpfiles.d; user names resolve there too.
    run("systemd-sysusers", f"--root={root}", "rapat-appliance.conf")
    _shadow_date(root, "appliance", epoch)
    run("systemd-tmpfiles", f"--root={root}", "--create", "rapat-appliance.conf")
    if defaults:
        _install(defaults, root / "etc/appliance/appliance.toml", 0o640)
        gid = _group_id(root, "appliance")
        os.chown(root / "etc/appliance/appliance.toml", 0, gid)
    run("systemctl", f"--root={root}", "--quiet", "enable", *ENABLE)
    masked = [unit for unit in MASK if _unit_exists(root, unit)]
    if masked:
        # Disable drops the links that start them; mask stops anything else pulling them in.
        run("systemctl", f"--root={root}", "--quiet", "disable", *masked)
        run("systemctl", f"--root={root}", "--quiet", "mask", *masked)
    changes = [f"enabled {unit}" for unit in ENABLE] + [f"masked {unit}" for unit in masked]
    (root / "etc/hostname").write_text(f"{UNPROVISIONED_HOSTNAME}\n")
    changes.append(f"hostname {UNPROVISIONED_HOSTNAME} until provisioned (then rapat-<site id>)")
    changes += _fstab(root, read_only, layout)
    if read_only:
        _install(repo / "image-build/overlay-init", root / OVERLAY_INIT.lstrip("/"), 0o755)
        for mount_point in ("media/root-ro", "media/root-rw"):
            (root / mount_point).mkdir(parents=True, exist_ok=True)
    return changes


def _shadow_date(root: Path, user: str, epoch: int) -> None:
    """systemd-sysusers 252 stamps today's date as the password change day; use the build's date."""
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == user and len(fields) > 2:
            fields[2] = str(epoch // 86400)
            lines[index] = ":".join(fields)
    shadow.write_text("\n".join(lines) + "\n")


def _group_id(root: Path, name: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise BuildError(f"group {name} missing in the image after systemd-sysusers")


def _fstab(root: Path, read_only: bool, layout: Any = None) -> list[str]:
    fstab = root / "etc/fstab"
    lines = fstab.read_text().splitlines() if fstab.exists() else []
    if layout is not None:
        import abimage

        out, changes = abimage.fstab_lines(layout, lines, DATA_LABEL)
        changes += _journal_on_data(root, out)
        fstab.write_text("\n".join(out) + "\n")
        return changes
    changes, out = [], []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/boot/firmware" and "fmask=" not in fields[3]:
            # FAT has no owners: the site file (broker password) would be readable by every user.
            fields[3] += ",fmask=0077,dmask=0077"
            line = "\t".join(fields)
            changes.append("fstab: /boot/firmware readable by root only")
        out.append(line)
    if read_only and not any(DATA_LABEL in line for line in out):
        # nofail: a broken data partition must not stop the boot (the units only Want it).
        out.append(f"LABEL={DATA_LABEL}\t/var/lib/appliance\text4\tdefaults,noatime,nofail\t0\t2")
        changes.append(f"fstab: data partition LABEL={DATA_LABEL} on /var/lib/appliance")
    if any(DATA_LABEL in line for line in out):
        changes += _journal_on_data(root, out)
    fstab.write_text("\n".join(out) + "\n")
    return changes


def _journal_on_data(root: Path, out: list[str]) -> list[str]:
    """/var/log/journal bound to the data partition's journal directory (made by make_data_fs), so
    the journal survives reboots and updates; nofail: without it journald keeps the journal in RAM."""
    if any(JOURNAL_DIR in line.split()[1:2] for line in out if line.strip() and not line.startswith("#")):
        return []
    (root / JOURNAL_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    out.append(f"{DATA_JOURNAL_DIR}\t{JOURNAL_DIR}\tnone\tbind,nofail,x-systemd.requires-mounts-for=/var/lib/appliance\t0\t0")
    return [f"fstab: {JOURNAL_DIR} on the data partition ({DATA_JOURNAL_DIR})"]


def make_data_fs(image: Path, part: Partition, root_owner: tuple[int, int], journal_gid: int) -> None:
    """The persistent data partition, made without a loop device (mke2fs writes at an offset), with
    the journal's directory in it (root:systemd-journal, setgid, as journald keeps it)."""
    with tempfile.TemporaryDirectory(prefix="data-fs.") as staging:
        journal = Path(staging) / DATA_JOURNAL_DIR.rsplit("/", 1)[1]
        journal.mkdir()
        os.chown(journal, 0, journal_gid)
        journal.chmod(0o2755)
        os.chown(staging, *root_owner)
        Path(staging).chmod(0o755)
        run("mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, "-d", staging, "-E",
            f"offset={part.offset},root_owner={root_owner[0]}:{root_owner[1]}", image, f"{part.bytes // 1024}k")


def journal_gid(root: Path) -> int:
    """systemd-journal's group id (Pi OS has it; a stand-in root without systemd's users gets root's)."""
    try:
        return _group_id(root, "systemd-journal")
    except BuildError:
        return 0


def appliance_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "appliance":
            return int(fields[2]), int(fields[3])
    raise BuildError("user appliance missing in the image after systemd-sysusers")


def scrub(root: Path) -> None:
    """Drop logs, caches and backups that hold build times or host details, so builds compare equal."""
    patterns = ["var/log/apt/*", "var/log/dpkg.log", "var/log/alternatives.log", "var/cache/apt/*.bin",
                "var/lib/apt/lists/*_*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
                "var/cache/ldconfig/aux-cache", "root/.cache", "tmp/*", "var/tmp/*"]
    machine_id = root / "etc/machine-id"
    if machine_id.is_file() and machine_id.read_text().strip():
        # Every card needs its own id (DHCP, the journal's directory): made at first boot, as Pi OS
        # does, and kept on the data partition by overlay-init.
        machine_id.write_text("")
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
