"""image-build/build-image run for real on synthetic Raspberry Pi OS-shaped images.

Fast tests use a stand-in root of plain files (no ARM code runs): bad inputs, cleanup on failure and
on SIGTERM, and the contents of normal and --read-only-root images. The slow ones (`make test-slow`)
build twice from a real Debian bookworm arm64 root (debootstrap, cached), install a Debian package
with apt in the qemu chroot, compare the two root trees, run the provisioning flow and the
read-only-root init inside the image under qemu-user-static.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.localnet import free_port
from tests.image_support import inspect, qemu, synthetic

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "image-build/build-image"
SDE = 1764000000
VERSION = "0.1.0"
NAME = f"rapat-appliance-{VERSION}"
TOOLS = ["sfdisk", "losetup", "mkfs.vfat", "mcopy", "mtype", "mkfs.ext4", "e2fsck", "resize2fs", "xz",
         "systemctl", "systemd-sysusers", "systemd-tmpfiles"]

_missing = [tool for tool in TOOLS if not shutil.which(tool)]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root (loop devices, mounts, chroot)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing image tools: {', '.join(_missing)} "
                                              "(dosfstools mtools fdisk e2fsprogs xz-utils systemd)"),
]


def build(base: Path, sha: str, out: Path, *extra: str, tool: Path = BUILD) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(tool), "--base", str(base), "--sha256", sha, "--out", str(out),
                           "--xz-level", "0", *extra], capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": str(SDE)})


def assert_nothing_left(fragment: str) -> None:
    assert inspect.loop_devices_for(fragment) == []
    assert inspect.mounts_under(fragment) == []


@pytest.fixture(scope="module")
def stand_in_base(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("stand-in")
    image = synthetic.make_image(synthetic.stand_in_root(work / "root"), work / "base.img", root_mb=64)
    return image, synthetic.sha256(image)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """build-image from a copy of the sources: builds compared with each other must read the same
    files even while someone edits the checkout."""
    copy = tmp_path_factory.mktemp("sources")
    # appliance_dev too, as in the checkout: the build must leave it out by itself.
    for name in ("appliance", "appliance_dev", "image-build", "systemd", "docs"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, copy / name)
    return copy / "image-build/build-image"


@pytest.fixture(scope="module")
def stand_in_images(tmp_path_factory, stand_in_base, snapshot) -> dict[str, Path]:
    base, sha = stand_in_base
    outs = {}
    for kind, extra in (("rw", []), ("rw-again", []), ("ro", ["--read-only-root"])):
        out = tmp_path_factory.mktemp(f"out-{kind}")
        result = build(base, sha, out, "--apt-packages", "", *extra, tool=snapshot)
        assert result.returncode == 0, result.stderr
        assert "[7/7" in result.stderr  # progress is shown
        outs[kind] = out
    return outs


# --- bad input and failures ----------------------------------------------------------------------

def test_wrong_sha256_stops_before_touching_anything(stand_in_base, tmp_path: Path) -> None:
    base, sha = stand_in_base
    before = base.stat().st_mtime_ns
    out = tmp_path / "out"
    result = build(base, "0" * 64, out, "--apt-packages", "")
    assert result.returncode == 1
    assert "--sha256 does not match" in result.stderr and sha in result.stderr
    assert not out.exists()
    assert base.stat().st_mtime_ns == before and synthetic.sha256(base) == sha
    assert_nothing_left(str(base.parent))


@pytest.mark.parametrize("args, message", [
    (["--sha256", "xyz"], "--sha256: 'xyz' is not 64 hexadecimal digits"),
    (["--sha256", "a" * 64, "--defaults", "/nonexistent.toml"], "--defaults: /nonexistent.toml does not exist"),
])
def test_bad_arguments_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(BUILD), "--base", "/dev/null", "--out", str(tmp_path), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr


def test_missing_base_is_named(tmp_path: Path) -> None:
    result = build(tmp_path / "nope.img.xz", "a" * 64, tmp_path / "out")
    assert result.returncode == 1 and f"--base: {tmp_path}/nope.img.xz does not exist" in result.stderr


def test_free_space_is_checked_first(stand_in_base, tmp_path: Path) -> None:
    base, sha = stand_in_base
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        result = build(base, sha, small, "--apt-packages", "")
        assert result.returncode == 1
        assert f"not enough free space in {small}: need" in result.stderr and "have 16 MiB" in result.stderr
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_failure_after_attaching_cleans_up(tmp_path: Path) -> None:
    """A root partition that is not ext4 fails after the loop device exists: it must go again."""
    image = tmp_path / "broken.img"
    with open(image, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    subprocess.run(["sfdisk", "--quiet", str(image)], check=True,
                   input=b"label: dos\nstart=2048, size=32768, type=c\nstart=34816, type=83\n")
    out = tmp_path / "out"
    result = build(image, synthetic.sha256(image), out, "--apt-packages", "")
    assert result.returncode == 1
    assert "e2fsck" in result.stderr
    assert_nothing_left(str(tmp_path))
    assert os.listdir(out) == []  # the work directory is gone too


def test_sigterm_during_build_cleans_up(stand_in_base, tmp_path: Path) -> None:
    base, sha = stand_in_base
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(BUILD), "--base", str(base), "--sha256", sha, "--out", str(out),
                                "--apt-packages", ""], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SOURCE_DATE_EPOCH": str(SDE)})
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "[4/7" in line:  # the root is attached and mounted now
            assert inspect.mounts_under(str(out)) != []
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 1, seen + [rest]
    assert "interrupted by signal SIGTERM" in rest
    assert_nothing_left(str(out))
    assert os.listdir(out) == []


# --- what the image holds (stand-in root) --------------------------------------------------------

def _elf_machine(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


def test_outputs_checksum_and_manifest(stand_in_images, stand_in_base) -> None:
    out = stand_in_images["rw"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{NAME}.img.xz", f"{NAME}.img.xz.sha256", f"{NAME}.manifest.json"]
        + ([f"{NAME}.img.bmap"] if shutil.which("bmaptool") else []))
    assert subprocess.run(["sha256sum", "--check", "--quiet", f"{NAME}.img.xz.sha256"], cwd=out).returncode == 0
    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    assert manifest["base_image"]["sha256"] == stand_in_base[1]
    assert manifest["build_time"] == "2025-11-24T16:00:00Z" and manifest["version"] == VERSION
    assert manifest["python_packages"]["rapat_appliance"] == VERSION
    assert {"cryptography", "paho_mqtt", "gpiozero", "python_vlc", "pillow"} <= set(manifest["python_packages"])
    assert "masked userconfig.service" in manifest["changes"]


def test_image_holds_units_users_permissions_and_config(stand_in_images, stand_in_base, snapshot, tmp_path: Path) -> None:
    source = snapshot.parents[1]
    with inspect.opened(stand_in_images["rw"] / f"{NAME}.img.xz", tmp_path) as image:
        root = image.root
        base_root_size = inspect.partitions(stand_in_base[0])[1]["size"]
        assert [p["type"] for p in image.partitions] == ["c", "83"]
        assert image.partitions[1]["size"] == base_root_size + 512 * 2048  # --root-grow-mb 512
        assert "dtparam=watchdog=on" in image.boot_file("config.txt")
        assert "init=/usr/lib/raspberrypi-sys-mods/firstboot" in image.boot_file("cmdline.txt")

        for unit in ("appliance.service", "appliance-provision.service", "appliance-audio.service"):
            assert (root / "usr/lib/systemd/system" / unit).read_text() == (source / "systemd" / unit).read_text()
            link = root / "etc/systemd/system/multi-user.target.wants" / unit
            assert os.readlink(link).endswith(f"/systemd/system/{unit}")
        for unit in synthetic.PI_OS_SERVICES:
            assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null", unit
            assert not os.path.lexists(root / "etc/systemd/system/multi-user.target.wants" / unit), unit
        engine = root / "usr/lib/rapat-appliance/audio-engine"
        assert engine.read_text() == (source / "systemd/audio/rapat-audio-engine").read_text()
        assert engine.stat().st_mode & 0o777 == 0o755
        audio = root / "usr/share/rapat-appliance/audio"
        engine_conf = "pipewire/rapat-engine.conf"
        assert (audio / engine_conf).read_text() == (source / "systemd/audio" / engine_conf).read_text()
        assert "v4l2_monitor.enabled = false" in (audio / "wireplumber/main.lua.d/60-rapat-appliance.lua").read_text()
        assert "RuntimeWatchdogSec=14" in (root / "etc/systemd/system.conf.d/10-rapat-watchdog.conf").read_text()
        assert "Storage=volatile" in (root / "etc/systemd/journald.conf.d/10-rapat-volatile.conf").read_text()

        passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
        group = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
        uid, gid = int(passwd["appliance"][2]), int(passwd["appliance"][3])
        assert passwd["appliance"][6] == "/usr/sbin/nologin"
        for name in ("gpio", "video", "render", "audio"):
            assert "appliance" in group[name][3].split(","), name
        shadow = {line.split(":")[0]: line.split(":") for line in (root / "etc/shadow").read_text().splitlines()}
        assert shadow["appliance"][2] == str(SDE // 86400)
        etc, state = (root / "etc/appliance").stat(), (root / "var/lib/appliance").stat()
        assert (etc.st_mode & 0o777, etc.st_uid, etc.st_gid) == (0o750, 0, gid)
        assert (state.st_mode & 0o777, state.st_uid, state.st_gid) == (0o750, uid, gid)

        fstab = (root / "etc/fstab").read_text()
        assert any("/boot/firmware" in line and "fmask=0077,dmask=0077" in line for line in fstab.splitlines())
        assert (root / "etc/hostname").read_text() == "rapat-unprovisioned\n"

        venv = root / "opt/rapat-appliance"
        assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
        assert os.readlink(venv / "bin/python") == "/usr/bin/python3"
        assert (venv / "bin/appliance").read_text().startswith("#!/opt/rapat-appliance/bin/python\n")
        site = venv / "lib/python3.11/site-packages"
        assert (site / "appliance/provision.py").read_text() == (source / "appliance/provision.py").read_text()
        native = list((site / "cryptography").rglob("*.so"))
        assert native and all(_elf_machine(path) == 183 for path in native)  # EM_AARCH64
        pyc = next((site / "appliance/__pycache__").glob("provision.cpython-311.pyc")).read_bytes()
        assert int.from_bytes(pyc[4:8], "little") == 3  # checked-hash: valid whatever the mtime


def test_read_only_root_image(stand_in_images, snapshot, tmp_path: Path) -> None:
    with inspect.opened(stand_in_images["ro"] / f"{NAME}.img.xz", tmp_path) as image:
        boot, root_part, data = image.partitions
        assert data["start"] == root_part["start"] + root_part["size"] and data["size"] == 256 * 2048
        cmdline = image.boot_file("cmdline.txt")
        assert "init=/usr/lib/rapat-appliance/overlay-init" in cmdline and "firstboot" not in cmdline
        init = image.root / "usr/lib/rapat-appliance/overlay-init"
        assert init.stat().st_mode & 0o111 and init.read_text() == (snapshot.parent / "overlay-init").read_text()
        assert (image.root / "media/root-ro").is_dir() and (image.root / "media/root-rw").is_dir()
        assert "LABEL=rapat-data\t/var/lib/appliance\text4" in (image.root / "etc/fstab").read_text()
        uid = next(int(line.split(":")[2]) for line in (image.root / "etc/passwd").read_text().splitlines()
                   if line.startswith("appliance:"))
        with open(image.image, "rb") as handle:  # the ext4 superblock of the data partition
            handle.seek(data["start"] * 512 + 1024)
            superblock = handle.read(1024)
        assert superblock[56:58] == b"\x53\xef"
        assert superblock[120:136].rstrip(b"\0") == b"rapat-data"
        data_root = tmp_path / "data"
        data_root.mkdir()
        device = subprocess.run(["losetup", "--find", "--show", "--read-only", "--offset", str(data["start"] * 512),
                                 "--sizelimit", str(data["size"] * 512), str(image.image)],
                                check=True, capture_output=True, text=True).stdout.strip()
        try:
            subprocess.run(["mount", "-o", "ro", device, str(data_root)], check=True)
            owner = data_root.stat().st_uid
            subprocess.run(["umount", str(data_root)], check=True)
        finally:
            subprocess.run(["losetup", "--detach", device], check=True)
        assert owner == uid  # the daemon can write its state there from the first boot


DEV_TOOL_NAMES = ("demo", "simulate", "central_media", "localnet", "appliance_dev")


def _names_a_dev_tool(path: str) -> bool:
    return any(part in DEV_TOOL_NAMES for part in re.split(r"[/.]", path))


def test_manifest_lists_the_appliance_files_and_no_dev_tools(stand_in_images, snapshot, tmp_path: Path) -> None:
    source = snapshot.parents[1]
    assert (source / "appliance_dev/demo.py").exists()  # there to be picked up by mistake
    files = json.loads((stand_in_images["rw"] / f"{NAME}.manifest.json").read_text())["appliance_files"]
    assert files == sorted(set(files))
    assert {"appliance/__init__.py", "appliance/daemon.py", "appliance/cli.py", "appliance/provision.py",
            "appliance/core/machine.py", "appliance/console/cli.py"} <= set(files)
    # Exactly the package's sources: what the build installed, not a list kept by hand.
    assert set(files) == {path.relative_to(source).as_posix() for path in (source / "appliance").rglob("*.py")}
    assert [path for path in files if _names_a_dev_tool(path)] == []
    for path in ("appliance/demo.py", "appliance/simulate.py", "appliance/central_media.py", "appliance/localnet.py",
                 "appliance_dev/__init__.py", "appliance_dev/demo.py"):
        assert path not in files
    with inspect.opened(stand_in_images["rw"] / f"{NAME}.img.xz", tmp_path) as image:
        inside = json.loads((image.root / "usr/share/rapat-appliance/manifest.json").read_text())
        site = image.root / "opt/rapat-appliance/lib/python3.11/site-packages"
        installed = sorted(path.relative_to(site).as_posix() for path in (site / "appliance").rglob("*")
                           if path.is_file() and "__pycache__" not in path.parts)
        everything = [path.relative_to(site).as_posix() for path in site.rglob("*")
                      if path.relative_to(site).parts[0] in ("appliance", "appliance_dev")]
    assert inside["appliance_files"] == files
    assert installed == files  # the manifest is what is on the card
    assert [path for path in everything if _names_a_dev_tool(path)] == []


def _rootfs():
    """image-build/rootfs.py, imported as build-image imports it."""
    if str(BUILD.parent) not in sys.path:
        sys.path.insert(0, str(BUILD.parent))
    return importlib.import_module("rootfs")


@pytest.mark.parametrize("path", ["appliance/demo.py", "appliance/simulate.py", "appliance/media/central_media.py",
                                  "appliance/localnet/__init__.py", "appliance_dev/__init__.py",
                                  "appliance/__pycache__/demo.cpython-311.pyc", "appliance_dev.demo:main"])
def test_dev_tool_guard_names_the_file(path: str) -> None:
    rootfs = _rootfs()
    with pytest.raises(rootfs.BuildError, match=re.escape(f"RECORD: development tools in the appliance's files: {path} ")):
        rootfs.check_no_dev_tools(["appliance/daemon.py", path, "appliance/core/machine.py"], "RECORD")


def test_dev_tool_guard_passes_the_product() -> None:
    rootfs = _rootfs()
    product = [path.relative_to(REPO).as_posix() for path in (REPO / "appliance").rglob("*.py")]
    rootfs.check_no_dev_tools(product + ["rapat_appliance-0.1.0.dist-info/RECORD", "../../bin/appliance-console",
                                         "appliance.console.cli:main"], "RECORD")


def test_install_python_refuses_a_dev_tool_before_installing_anything(tmp_path: Path) -> None:
    """A stale dev tool left in appliance/ (e.g. from before the move to appliance_dev/) stops the build."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "appliance", repo / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, repo / name)
    (repo / "appliance/demo.py").write_text("print('demo')\n")
    rootfs = _rootfs()
    with pytest.raises(rootfs.BuildError, match=r"rapat_appliance-.*\.whl: development tools in the appliance's "
                                                r"files: appliance/demo\.py "):
        rootfs.install_python(tmp_path / "root", repo, tmp_path / "wheels", SDE)
    assert not (tmp_path / "root").exists() and not (tmp_path / "wheels").exists()


def test_two_builds_give_the_same_root_tree(stand_in_images, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with inspect.opened(stand_in_images["rw"] / f"{NAME}.img.xz", tmp_path / "a") as first, \
            inspect.opened(stand_in_images["rw-again"] / f"{NAME}.img.xz", tmp_path / "b") as second:
        first_tree, second_tree = inspect.tree(first.root), inspect.tree(second.root)
    assert len(first_tree) > 500
    assert inspect.tree_differences(first_tree, second_tree) == []


# --- slow: a real Debian arm64 root, apt in the qemu chroot, provisioning and init under qemu ------

_slow_missing = [tool for tool in ("debootstrap", "qemu-aarch64-static", "chroot", "unshare") if not shutil.which(tool)]
needs_arm64 = pytest.mark.skipif(bool(_slow_missing), reason=f"missing {', '.join(_slow_missing)} "
                                                             "(Debian packages debootstrap qemu-user-static)")
APT_FOR_TESTS = "python3-systemd"  # from Debian; python3-picamera2 exists only in the Raspberry Pi archive
GOOD_SITE = '[site]\nid = "kalibaru"\nkind = "kecamatan"\n[broker]\nurl = "mqtts://broker.example:8883"\n' \
            'password = "s3cret"\n'
# A lab image: what a site file may not set (a plain mqtt:// broker, unsigned commands, no hardware)
# comes from the image's own defaults, as it would for a bench-top test image.
LAB_DEFAULTS = '[broker]\nurl = "mqtt://10.0.2.2:{port}"\n[security]\nallow_unsigned = true\n' \
               '[panel]\nbackend = "mock"\n[camera]\nbackend = "none"\n[display]\nbackend = "none"\n'
BAD_SITE = GOOD_SITE.replace('id = "kalibaru"', 'id = "Kali Baru!"')


@pytest.fixture(scope="module")
def real_images(tmp_path_factory, snapshot) -> dict[str, Path]:
    root = synthetic.debootstrap_root()  # cached between runs
    work = tmp_path_factory.mktemp("real-base")
    image = synthetic.make_image(root, work / "base.img", root_mb=1000)
    subprocess.run(["xz", "-T0", "-0", str(image)], check=True)  # the official image comes as .img.xz
    base = work / "base.img.xz"
    sha = synthetic.sha256(base)
    broker_port = free_port()  # the booted image's broker, chosen now because it is baked into the defaults
    defaults = work / "lab-defaults.toml"
    defaults.write_text(LAB_DEFAULTS.format(port=broker_port))
    outs: dict[str, Any] = {"broker_port": broker_port}
    for kind in ("a", "b"):
        out = tmp_path_factory.mktemp(f"real-out-{kind}")
        result = build(base, sha, out, "--read-only-root", "--apt-packages", APT_FOR_TESTS, "--defaults", str(defaults),
                       tool=snapshot)
        assert result.returncode == 0, result.stderr[-3000:]
        outs[kind] = out
    return outs


def _chroot(root: Path, *argv: str, uts: bool = False) -> subprocess.CompletedProcess:
    # A private UTS namespace: the unit's --set-hostname must not rename the build machine.
    prefix = ["unshare", "--uts"] if uts else []
    return subprocess.run([*prefix, "chroot", str(root), *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})


@pytest.mark.slow
@needs_arm64
def test_real_root_builds_are_reproducible(real_images, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with inspect.opened(real_images["a"] / f"{NAME}.img.xz", tmp_path / "a") as first, \
            inspect.opened(real_images["b"] / f"{NAME}.img.xz", tmp_path / "b") as second:
        first_tree, second_tree = inspect.tree(first.root), inspect.tree(second.root)
    assert len(first_tree) > 5000
    assert inspect.tree_differences(first_tree, second_tree) == []


@pytest.mark.slow
@needs_arm64
def test_real_root_has_apt_package_units_and_verified_units(real_images, tmp_path: Path) -> None:
    manifest = json.loads((real_images["a"] / f"{NAME}.manifest.json").read_text())
    assert set(manifest["apt_packages"]) == {APT_FOR_TESTS}
    with inspect.opened(real_images["a"] / f"{NAME}.img.xz", tmp_path) as image:
        root = image.root
        assert list((root / "var/lib/apt/lists").glob("*_Packages")) == []  # scrubbed
        assert not (root / "usr/sbin/policy-rc.d").exists()
        # Debian's python3-systemd is visible inside the appliance's venv, on arm64 under qemu.
        probe = _chroot(root, "/opt/rapat-appliance/bin/python", "-c",
                        "import platform, systemd.daemon, cryptography, appliance; print(platform.machine())")
        assert (probe.returncode, probe.stdout.strip()) == (0, "aarch64"), probe.stderr
        verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "appliance.service",
                                 "appliance-provision.service"], capture_output=True, text=True)
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


@pytest.mark.slow
@needs_arm64
def test_provisioning_flow_in_the_arm64_chroot(real_images, tmp_path: Path) -> None:
    with inspect.opened(real_images["a"] / f"{NAME}.img.xz", tmp_path, writable=True) as image:
        root = image.root
        unit = (root / "usr/lib/systemd/system/appliance-provision.service").read_text()
        exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
        argv = exec_start.split()
        uid, gid = next((int(f[2]), int(f[3])) for f in (line.split(":") for line in
                        (root / "etc/passwd").read_text().splitlines()) if f[0] == "appliance")
        site_file, installed = root / "boot/firmware/appliance-site.toml", root / "var/lib/appliance/site.toml"

        site_file.write_text(GOOD_SITE)
        good = _chroot(root, *argv, uts=True)
        assert good.returncode == 0, good.stderr
        assert installed.read_text() == GOOD_SITE
        info = installed.stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, gid)  # the daemon reads, root writes
        applied = (root / "boot/firmware/appliance-site.toml.applied").read_text()
        assert "s3cret" not in applied and 'id = "kalibaru"' in applied
        assert not site_file.exists()
        assert (root / "etc/hostname").read_text() == "rapat-kalibaru\n"
        assert "127.0.1.1\trapat-kalibaru" in (root / "etc/hosts").read_text()
        # As the daemon reads it: the image's file, then the site file on top.
        check = _chroot(root, "/opt/rapat-appliance/bin/appliance", "check-config", "/etc/appliance/appliance.toml",
                        "/var/lib/appliance/site.toml")
        assert check.returncode == 0, check.stdout + check.stderr

        site_file.write_text(BAD_SITE)
        bad = _chroot(root, *argv, uts=True)
        assert bad.returncode == 2
        assert "site.id" in bad.stderr and "Kali Baru!" in bad.stderr
        assert installed.read_text() == GOOD_SITE  # the previous configuration stays
        error = (root / "var/lib/appliance/provision-error.txt").read_text()
        assert "site.id" in error and "/boot/firmware/appliance-site.toml" in error
        assert site_file.read_text() == BAD_SITE
        assert (root / "etc/hostname").read_text() == "rapat-kalibaru\n"


@pytest.mark.slow
@needs_arm64
def test_overlay_init_gives_a_writable_root_that_never_reaches_the_card(real_images, tmp_path: Path) -> None:
    with inspect.opened(real_images["a"] / f"{NAME}.img.xz", tmp_path) as image:
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(image.root)], capture_output=True,
                                text=True, check=True).stdout.strip()
        probe = ("mount -t proc proc /proc; touch /probe && echo wrote; findmnt -n -o FSTYPE /; "
                 "findmnt -n -o FSTYPE,OPTIONS /media/root-ro; test -e /media/root-ro/probe || echo not-on-card; "
                 "grep -c '^#overlay-init#' /etc/fstab")
        # A private mount namespace; the init script is the image's own, run under qemu.
        script = (f"mount --bind /dev {image.root}/dev && "
                  f"chroot {image.root} /usr/lib/rapat-appliance/overlay-init -c \"{probe}\"")
        result = subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", script], capture_output=True, text=True,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OVERLAY_INIT_ROOT": device,
                                     "OVERLAY_INIT_EXEC": "/bin/sh"})
        assert not (image.root / "probe").exists()
    lines = result.stdout.split()
    assert result.returncode == 0 and "overlay-init:" not in result.stderr, result.stdout + result.stderr
    assert lines[:2] == ["wrote", "overlay"]
    assert lines[2] == "ext4" and lines[3].startswith("ro,")
    assert lines[4:] == ["not-on-card", "1"]


# --- stretch: boot the image in qemu-system-aarch64 -----------------------------------------------

@pytest.mark.slow
@needs_arm64
@pytest.mark.skipif(not qemu.available, reason="qemu-system-aarch64 not installed (Debian package qemu-system-arm)")
def test_booted_image_reaches_ready_and_connects_to_the_broker(real_images, tmp_path: Path) -> None:
    from appliance_dev.broker import Mosquitto

    out = real_images["a"]
    broker = Mosquitto(tmp_path / "broker", port=real_images["broker_port"]).start()
    try:
        with inspect.opened(out / f"{NAME}.img.xz", tmp_path) as image:
            kernel = next(image.root.glob("boot/vmlinuz-*"))
            initrd = next(image.root.glob("boot/initrd.img-*"))
            shutil.copy(kernel, tmp_path / "vmlinuz")
            shutil.copy(initrd, tmp_path / "initrd.img")
            cmdline = qemu.guest_cmdline(image.boot_file("cmdline.txt"))
        disk = image.image
        site = tmp_path / "appliance-site.toml"
        # 10.0.2.2 is the build machine as seen from qemu's user network.
        # The site file names only the site: the lab image's defaults name the broker (10.0.2.2 is the
        # build machine as seen from qemu's user network) and the rest a site file may not set.
        site.write_text('[site]\nid = "qemu-site"\nkind = "desa"\n')
        subprocess.run(["mcopy", "-i", f"{disk}@@{image.partitions[0]['start'] * 512}", str(site), "::/"], check=True)
        state_topic = site_topic(DEFAULT_TOPIC_PREFIX, "qemu-site", "state")
        state = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", state_topic,
                                  "-C", "1", "-W", "900"], stdout=subprocess.PIPE, text=True)
        log = tmp_path / "console.log"
        machine = qemu.start(disk, tmp_path / "vmlinuz", tmp_path / "initrd.img", cmdline, log)
        try:
            # Type=notify: systemd reports the unit started only after READY=1.
            console = qemu.wait_for(log, r"Started .*Rapat meeting-room appliance", machine, timeout=900)
            message = json.loads(state.communicate(timeout=300)[0])
        finally:
            qemu.stop(machine)
            if state.poll() is None:
                state.kill()
    finally:
        broker.stop()
    assert message["online"] is True and message["site"] == "qemu-site"
    assert "installed /boot/firmware/appliance-site.toml" in console  # provisioning on first boot
    assert "overlay-init:" not in console  # no fallback to a writable root
    assert "Mounted var-lib-appliance.mount" in console  # the persistent data partition
    assert re.search(r"(Using hardware watchdog|Watchdog running with a timeout)", console)
