"""image-build/build-image run for real on synthetic Raspberry Pi OS-shaped images.

Fast tests use a stand-in root of plain files (no ARM code runs): bad inputs, cleanup on failure and
on SIGTERM, the contents of A/B (default), A/B --read-only-root and single-layout images, and the A/B
parts: partition table, autoboot.txt, cmdline.txt per slot, RAUC's system.conf, the generated
/boot/firmware mount, the signed bundle and its manifest (checked with real `rauc info`), and a plain
bundle of the build installed into slot B by real `rauc service` with the image's own system.conf,
boot-chooser and post-install handler (slots as files). The slow ones (`make test-slow`)
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

from appliance.adapters import tryboot
from appliance.console import update_keys
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.bundle_server import BundleServer
from appliance_dev.localnet import free_port
from tests.image_support import inspect, qemu, raucdev, synthetic

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
def update_pki(tmp_path_factory) -> dict[str, Path]:
    """The console's update CA and signing certificate (`appliance-console update keys`), and a stranger's."""
    work = tmp_path_factory.mktemp("update-pki")
    ca, ca_key = update_keys.make_update_ca()
    cert, key = update_keys.make_signing_cert(ca, ca_key)
    other_ca, _ = update_keys.make_update_ca()
    files = {"ca": ca, "signing": cert, "signing-key": key, "other-ca": other_ca}
    for name, data in files.items():
        (work / f"{name}.pem").write_bytes(data)
    return {name: work / f"{name}.pem" for name in files}


RO_VERSION = "0.2.0"  # the read-only build is given a --version and a plain bundle
GROW_MB, DATA_MB = 128, 64  # smaller than the defaults (512, 512): four builds, two bundles, in seconds
SMALL = ["--root-grow-mb", str(GROW_MB), "--data-mb", str(DATA_MB)]


@pytest.fixture(scope="module")
def stand_in_images(tmp_path_factory, stand_in_base, snapshot, update_pki) -> dict[str, Path]:
    base, sha = stand_in_base
    keyring = ["--update-keyring", str(update_pki["ca"])]
    signing = ["--update-cert", str(update_pki["signing"]), "--update-key", str(update_pki["signing-key"])]
    outs = {}
    for kind, extra in (("rw", keyring + signing), ("rw-again", keyring),
                        ("ro", ["--read-only-root", "--bundle-format", "plain", "--version", RO_VERSION,
                                *keyring, *signing]),
                        ("single", ["--layout", "single", "--read-only-root"])):
        out = tmp_path_factory.mktemp(f"out-{kind}")
        result = build(base, sha, out, "--apt-packages", "", *SMALL, *extra, tool=snapshot)
        assert result.returncode == 0, result.stderr
        assert re.search(r"\[(\d)/\1 ", result.stderr)  # progress is shown, to the last step
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
    out = stand_in_images["rw-again"]  # built without --update-cert: no bundle (see the bundle's own test)
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
        assert [p["type"] for p in image.partitions] == ["e", "c", "c", "5", "83", "83", "83"]
        assert image.partition(5)["size"] == base_root_size + GROW_MB * 2048  # --root-grow-mb
        assert "dtparam=watchdog=on" in image.boot_file("config.txt")
        assert "firstboot" not in image.boot_file("cmdline.txt")  # it would grow p7 and renumber the disk

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
        assert "Storage=persistent" in (root / "etc/systemd/journald.conf.d/10-rapat-journal.conf").read_text()
        assert "vm.dirty_expire_centisecs = 90000" in (root / "usr/lib/sysctl.d/60-rapat-card-wear.conf").read_text()

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
        # /boot/firmware is the booted slot's boot partition: generated (test_ab_root_...), not in fstab.
        assert "/boot/firmware" not in fstab
        assert any("/boot/autoboot" in line and "fmask=0077,dmask=0077" in line for line in fstab.splitlines())
        assert (root / "etc/hostname").read_text() == "rapat-unprovisioned\n"

        venv = root / "opt/rapat-appliance"
        assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
        assert os.readlink(venv / "bin/python") == "/usr/bin/python3"
        assert (venv / "bin/appliance").read_text().startswith("#!/opt/rapat-appliance/bin/python\n")
        assert (venv / "bin/rapat-tryboot").read_text() == (
            "#!/opt/rapat-appliance/bin/python\nimport sys\nfrom appliance.adapters.tryboot import main\n"
            "sys.exit(main())\n")  # RAUC's boot-chooser (system.conf bootloader-custom-backend)
        assert (venv / "bin/rapat-tryboot").stat().st_mode & 0o777 == 0o755
        # Every program our units start from the venv is there (a missing launcher is a unit that
        # fails with 203/EXEC: seen in QEMU when the trial guard had none).
        for unit in (root / "usr/lib/systemd/system").glob("appliance*.service"):
            for line in unit.read_text().splitlines():
                if line.startswith("ExecStart=/opt/rapat-appliance/bin/"):
                    program = root / line.split("=", 1)[1].split()[0].lstrip("/")
                    assert program.exists() and program.stat().st_mode & 0o111, f"{unit.name}: {program}"
        site = venv / "lib/python3.11/site-packages"
        assert (site / "appliance/provision.py").read_text() == (source / "appliance/provision.py").read_text()
        native = list((site / "cryptography").rglob("*.so"))
        assert native and all(_elf_machine(path) == 183 for path in native)  # EM_AARCH64
        pyc = next((site / "appliance/__pycache__").glob("provision.cpython-311.pyc")).read_bytes()
        assert int.from_bytes(pyc[4:8], "little") == 3  # checked-hash: valid whatever the mtime


def test_read_only_root_image_single_layout(stand_in_images, snapshot, tmp_path: Path) -> None:
    with inspect.opened(stand_in_images["single"] / f"{NAME}.img.xz", tmp_path) as image:
        boot, root_part, data = image.partitions
        assert not image.ab and json.loads((stand_in_images["single"] / f"{NAME}.manifest.json").read_text())[
            "layout"] == {"kind": "single"}
        assert "rauc" not in " ".join(json.loads((stand_in_images["single"] / f"{NAME}.manifest.json").read_text())[
            "changes"])
        assert not (image.root / "etc/rauc").exists()
        assert data["start"] == root_part["start"] + root_part["size"] and data["size"] == DATA_MB * 2048
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
    # The dashboard's templates, script and stylesheet are package data (pyproject.toml) and travel too.
    package_data = [path for pattern in ("templates/*.html", "static/*.js", "static/*.css")
                    for path in (source / "appliance/console/web").glob(pattern)]
    assert package_data
    assert set(files) == {path.relative_to(source).as_posix()
                          for path in [*(source / "appliance").rglob("*.py"), *package_data]}
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


# --- the A/B layout, RAUC and the update bundle (stand-in root) ------------------------------------

DISK_ID = "5e3da3da"  # synthetic.make_image's; the build keeps the base's disk identifier


def _ext4_label(image: inspect.Opened, number: int) -> bytes:
    superblock = image.read(number, 2048)[1024:]
    return superblock[120:136].rstrip(b"\0") if superblock[56:58] == b"\x53\xef" else b""


def _fat_label(image: inspect.Opened, number: int) -> str:
    info = subprocess.run(["mlabel", "-s", "-i", f"{image.image}@@{image.partition(number)['start'] * 512}", "::"],
                          capture_output=True, text=True, check=True).stdout
    return info.removeprefix(" Volume label is").strip()


@pytest.mark.parametrize("kind", ["rw", "ro"])
def test_ab_layout_autoboot_and_cmdline_per_slot(kind: str, stand_in_images, stand_in_base, tmp_path: Path) -> None:
    name = NAME if kind == "rw" else f"rapat-appliance-{RO_VERSION}"
    read_only = kind == "ro"
    with inspect.opened(stand_in_images[kind] / f"{name}.img.xz", tmp_path) as image:
        assert image.ab
        table = json.loads(subprocess.run(["sfdisk", "--json", str(image.image)], capture_output=True, text=True,
                                          check=True).stdout)["partitiontable"]
        assert table["id"] == f"0x{DISK_ID}"
        parts = {part["number"]: part for part in image.partitions}
        assert sorted(parts) == [1, 2, 3, 4, 5, 6, 7]
        # Primary 1-3 (the firmware's boot_partition= takes 1-4 only), the rest inside the extended p4.
        assert [parts[n]["type"] for n in (1, 2, 3, 4)] == ["e", "c", "c", "5"]
        assert all(part["start"] % 2048 == 0 for part in parts.values())  # MiB-aligned
        assert parts[1]["start"] == 8192 and parts[1]["size"] == 16 * 2048
        base_boot, base_root = inspect.partitions(stand_in_base[0])
        assert parts[2]["size"] == parts[3]["size"] == base_boot["size"]
        assert parts[5]["size"] == parts[6]["size"] == base_root["size"] + GROW_MB * 2048
        assert parts[7]["size"] == DATA_MB * 2048
        for first, second in ((1, 2), (2, 3), (3, 4)):
            assert parts[first]["start"] + parts[first]["size"] == parts[second]["start"]
        assert parts[4]["start"] < parts[5]["start"] and parts[7]["start"] + parts[7]["size"] == (
            parts[4]["start"] + parts[4]["size"])
        assert (_fat_label(image, 1), _fat_label(image, 3)) == ("RAPAT", "BOOTFS_B")
        assert (_ext4_label(image, 5), _ext4_label(image, 6), _ext4_label(image, 7)) == (b"rootfs", b"", b"rapat-data")
        assert image.read(6, 1 << 20) == bytes(1 << 20)  # root B is empty until the first update

        autoboot = image.fat_file(1, "autoboot.txt")
        assert autoboot == "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n"
        assert autoboot == tryboot.render("A", "A") and tryboot.parse(autoboot) == ("A", "A")
        assert len(autoboot.encode()) <= 512  # the firmware reads at most 512 bytes
        cmdlines = {slot: image.fat_file(number, "cmdline.txt") for slot, number in (("A", 2), ("B", 3))}
        for slot, root_number in (("A", 5), ("B", 6)):
            words = cmdlines[slot].split()
            assert cmdlines[slot].endswith("\n") and cmdlines[slot].count("\n") == 1
            assert words[0] == f"root=PARTUUID={DISK_ID}-0{root_number}"
            assert tryboot.booted_slot(cmdlines[slot]) == slot and words.count(f"rauc.slot={slot}") == 1
            assert [w for w in words if w.startswith("init=")] == (
                ["init=/usr/lib/rapat-appliance/overlay-init"] if read_only else [])
            assert "rootfstype=ext4" in words and "rootwait" in words
        assert "dtparam=watchdog=on" in image.boot_file("config.txt")
        fstab = (image.root / "etc/fstab").read_text()
        assert "LABEL=rapat-data\t/var/lib/appliance\text4" in fstab
        assert f"PARTUUID={DISK_ID}-01\t/boot/autoboot\tvfat\tdefaults,fmask=0077,dmask=0077,nofail" in fstab
        # The journal persists on the data partition, in a directory made with the file system.
        assert ("/var/lib/appliance/journal\t/var/log/journal\tnone\t"
                "bind,nofail,x-systemd.requires-mounts-for=/var/lib/appliance") in fstab
        assert (image.root / "var/log/journal").is_dir()
        assert (image.root / "etc/machine-id").read_text() == ""  # each card makes its own
        data_start = image.partition(7)["start"] * 512
        data = tmp_path / "data.ext4"
        with open(image.image, "rb") as source, open(data, "wb") as copy:
            source.seek(data_start)
            copy.write(source.read(DATA_MB << 20))
        listing = subprocess.run(["debugfs", "-R", "stat /journal", str(data)], capture_output=True, text=True)
        assert "Type: directory" in listing.stdout and "Mode:  02755" in listing.stdout, listing.stdout + listing.stderr
        data.unlink()
        assert [line.split()[0] for line in fstab.splitlines()
                if line.split()[1:2] == ["/"] and not line.startswith("#")] == ["/dev/root"]
    manifest = json.loads((stand_in_images[kind] / f"{name}.manifest.json").read_text())
    assert manifest["version"] == (VERSION if kind == "rw" else RO_VERSION)
    assert manifest["layout"]["kind"] == "ab" and manifest["layout"]["disk_id"] == DISK_ID
    assert manifest["layout"]["slots"]["B"] == {"boot": "p3", "root": "p6", "root_partuuid": f"{DISK_ID}-06"}


def test_ab_root_has_rauc_config_generator_and_provisioning_from_p1(stand_in_images, update_pki, snapshot,
                                                                     tmp_path: Path) -> None:
    import configparser

    source = snapshot.parent
    with inspect.opened(stand_in_images["rw"] / f"{NAME}.img.xz", tmp_path) as image:
        root = image.root
        conf = configparser.ConfigParser(interpolation=None)
        conf.read_string((root / "etc/rauc/system.conf").read_text())
        assert dict(conf["system"]) == {"compatible": "rapat-appliance-rpi", "bootloader": "custom",
                                        "bundle-formats": "verity", "max-bundle-download-size": str(64 << 20),
                                        "statusfile": "/var/lib/appliance/rauc/status.raucs"}
        assert dict(conf["handlers"]) == {"bootloader-custom-backend": "/opt/rapat-appliance/bin/rapat-tryboot",
                                          "post-install": "/usr/lib/rapat-appliance/rauc-post-install"}
        assert dict(conf["keyring"]) == {"path": "/etc/rauc/keyring.pem", "check-purpose": "codesign"}
        for index, (slot, boot, rootfs) in enumerate((("A", 2, 5), ("B", 3, 6))):
            assert dict(conf[f"slot.rootfs.{index}"]) == {
                "device": f"/dev/disk/by-partuuid/{DISK_ID}-0{rootfs}", "type": "ext4", "bootname": slot}
            assert dict(conf[f"slot.boot.{index}"]) == {
                "device": f"/dev/disk/by-partuuid/{DISK_ID}-0{boot}", "type": "vfat", "parent": f"rootfs.{index}"}
        assert (root / "etc/rauc/keyring.pem").read_bytes() == update_pki["ca"].read_bytes()
        handler = root / "usr/lib/rapat-appliance/rauc-post-install"
        assert handler.read_text() == (source / "rauc-post-install").read_text() and handler.stat().st_mode & 0o111
        assert "d /var/lib/appliance/rauc 0755 root root -" in (root / "usr/lib/tmpfiles.d/rapat-rauc.conf").read_text()
        assert (root / "boot/autoboot").is_dir() and (root / "boot/firmware").is_dir()
        # RAUC's boot-chooser finds autoboot.txt where p1 is mounted, without configuration.
        assert tryboot.DEFAULT_AUTOBOOT == "/boot/autoboot/autoboot.txt"

        # The generated /boot/firmware mount: the booted slot's boot partition, from the command line.
        generator = root / "usr/lib/systemd/system-generators/rapat-boot-firmware"
        assert generator.stat().st_mode & 0o111
        for slot, boot in (("A", 2), ("B", 3)):
            out = tmp_path / f"gen-{slot}"
            out.mkdir()
            cmdline = tmp_path / f"cmdline-{slot}"
            cmdline.write_text(image.fat_file(boot, "cmdline.txt"))
            subprocess.run(["sh", str(generator), str(out), str(out), str(out)], check=True,
                           env={"PATH": os.environ["PATH"], "RAPAT_CMDLINE": str(cmdline)})
            unit = (out / "boot-firmware.mount").read_text()
            assert f"What=/dev/disk/by-partuuid/{DISK_ID}-0{boot}\n" in unit and "Where=/boot/firmware\n" in unit
            assert "Options=defaults,fmask=0077,dmask=0077\n" in unit
            assert os.readlink(out / "local-fs.target.wants/boot-firmware.mount") == "../boot-firmware.mount"
        out = tmp_path / "gen-none"
        out.mkdir()
        (tmp_path / "cmdline-none").write_text("console=ttyAMA0 root=/dev/vda2\n")
        subprocess.run(["sh", str(generator), str(out)], check=True,
                       env={"PATH": os.environ["PATH"], "RAPAT_CMDLINE": str(tmp_path / "cmdline-none")})
        assert os.listdir(out) == []  # not an A/B boot: nothing generated

        # The site file is read from p1, the same drive whichever slot runs.
        drop_in = (root / "etc/systemd/system/appliance-provision.service.d/10-rapat-ab.conf").read_text()
        unit = (root / "usr/lib/systemd/system/appliance-provision.service").read_text()
        original = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        assert "ExecStart=\n" + original.replace("/boot/firmware/", "/boot/autoboot/") + "\n" in drop_in
        assert "ReadWritePaths=/boot/autoboot\n" in drop_in
        verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "appliance-provision.service"],
                                capture_output=True, text=True)
        assert "10-rapat-ab.conf" not in verify.stdout + verify.stderr
    changes = json.loads((stand_in_images["rw"] / f"{NAME}.manifest.json").read_text())["changes"]
    assert any(change.startswith("/etc/rauc/system.conf") for change in changes)


def _rauc_info(bundle: Path, keyring: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    conf = tmp_path / f"verify-{keyring.stem}.conf"
    conf.write_text(f"[system]\ncompatible=rapat-appliance-rpi\nbootloader=noop\n[keyring]\npath={keyring}\n"
                    "check-purpose=codesign\n")
    return subprocess.run(["rauc", f"--conf={conf}", "info", "--output-format=json", str(bundle)],
                          capture_output=True, text=True)


@pytest.mark.skipif(bool(raucdev.missing_tools()), reason="needs rauc, squashfs-tools, dbus, mtools")
def test_bundle_and_its_manifest_verify_with_real_rauc(stand_in_images, update_pki, tmp_path: Path) -> None:
    out = stand_in_images["rw"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{NAME}.img.xz", f"{NAME}.img.xz.sha256", f"{NAME}.manifest.json", f"{NAME}.raucb", f"{NAME}.bundle.json",
         f"{NAME}-delta.raucb", f"{NAME}-delta.castr"] + ([f"{NAME}.img.bmap"] if shutil.which("bmaptool") else []))
    bundle = out / f"{NAME}.raucb"
    described = json.loads((out / f"{NAME}.bundle.json").read_text())
    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    assert described["version"] == VERSION and described["compatible"] == "rapat-appliance-rpi"
    assert described["format"] == "verity" and described["file"] == bundle.name
    assert described["size"] == bundle.stat().st_size and described["sha256"] == synthetic.sha256(bundle)
    assert described["image"]["sha256"] == manifest["image"]["sha256"] and described["image_manifest"] == (
        f"{NAME}.manifest.json")
    assert manifest["bundle"] == {key: described[key] for key in ("file", "sha256", "size", "format")}
    assert "update signing" in described["signer"] and described["verified_with_keyring"] is True
    assert described["build_time"] == manifest["build_time"]

    info = _rauc_info(bundle, update_pki["ca"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert "Verified inline signature by" in info.stderr + info.stdout
    document = json.loads(info.stdout)
    assert (document["compatible"], document["version"]) == ("rapat-appliance-rpi", VERSION)
    images = {name: value for entry in document["images"] for name, value in entry.items()}
    # The bundle's images are exactly boot A and root A of the image from the same build.
    with inspect.opened(out / f"{NAME}.img.xz", tmp_path) as image:
        import hashlib

        for slot_class, number in (("rootfs", 5), ("boot", 2)):
            data = image.read(number)
            assert images[slot_class]["checksum"] == hashlib.sha256(data).hexdigest() == (
                described["images"][slot_class]["sha256"]), slot_class
            assert images[slot_class]["size"] == len(data) == described["images"][slot_class]["size"]
    assert images["rootfs"]["filename"] == "rootfs.ext4" and images["boot"]["filename"] == "boot.vfat"

    other = _rauc_info(bundle, update_pki["other-ca"], tmp_path)
    assert other.returncode == 1 and "unable to get local issuer certificate" in other.stderr

    # The delta bundle: the same images as chunk indexes, signed the same way; the chunks in the store.
    delta = out / described["delta"]["file"]
    assert described["delta"]["sha256"] == synthetic.sha256(delta) and described["delta"]["size"] == delta.stat().st_size
    assert described["delta"]["store"] == f"{NAME}-delta.castr" and described["delta"]["store_bytes"] > 0
    info = _rauc_info(delta, update_pki["ca"], tmp_path)
    assert info.returncode == 0, info.stderr
    delta_images = {name: value for entry in json.loads(info.stdout)["images"] for name, value in entry.items()}
    assert delta_images["rootfs"]["filename"] == "rootfs.ext4.caibx" and delta_images["boot"]["filename"] == "boot.img.caibx"


def test_bundle_options_are_checked(stand_in_base, update_pki, tmp_path: Path) -> None:
    base, sha = stand_in_base
    for extra, message in (
            (["--update-cert", str(update_pki["signing"])], "--update-cert and --update-key go together"),
            (["--layout", "single", "--update-keyring", str(update_pki["ca"])], "--layout single has no slots"),
            (["--update-keyring", str(tmp_path / "none.pem")], f"--update-keyring: {tmp_path}/none.pem does not exist"),
            (["--version", "1.0 beta"], "--version: '1.0 beta' is not a version")):
        result = build(base, sha, tmp_path / "out", "--apt-packages", "", *extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    # A signing certificate from another CA than the keyring: no bundle, no image.
    out = tmp_path / "out-mismatch"
    result = build(base, sha, out, "--apt-packages", "", "--update-keyring", str(update_pki["other-ca"]),
                   "--update-cert", str(update_pki["signing"]), "--update-key", str(update_pki["signing-key"]))
    assert result.returncode == 1 and "the bundle does not verify against --update-keyring" in result.stderr
    assert os.listdir(out) == [] and inspect.loop_devices_for(str(out)) == []


@pytest.mark.skipif(bool(raucdev.missing_tools()), reason="needs rauc, squashfs-tools, dbus, mtools")
def test_plain_bundle_installs_into_slot_b_with_the_images_own_rauc_config(stand_in_images, tmp_path: Path) -> None:
    """Real `rauc service` with the image's system.conf (slots as copies of the partitions), its
    post-install handler and the boot-chooser on a copy of p1's autoboot.txt: install the build's own
    bundle from slot A; B gets root and boot, B's cmdline.txt names root B, the next tryboot is B."""
    out = stand_in_images["ro"]
    name = f"rapat-appliance-{RO_VERSION}"
    work = tmp_path / "device"
    work.mkdir()
    with inspect.opened(out / f"{name}.img.xz", tmp_path) as image:
        device = raucdev.ImageRauc(image, work, booted="A")
        root_a, boot_a = image.read(5), image.read(2)
    assert "bundle-formats=plain verity" in device.original_conf
    with device:
        status = json.loads(device.rauc("status", "--output-format=json").stdout)
        assert status["booted"] == "A" and status["boot_primary"] == "rootfs.0"
        result = device.rauc("install", str(out / f"{name}.raucb"))
        assert result.returncode == 0, result.stdout + result.stderr + device.log()
        detailed = json.loads(device.rauc("status", "--detailed", "--output-format=json").stdout)
    assert "rauc-post-install: boot B" in device.log()
    slots = {name: slot for entry in detailed["slots"] for name, slot in entry.items()}
    assert slots["rootfs.1"]["slot_status"]["bundle"]["version"] == RO_VERSION
    assert device.files[6].read_bytes() == root_a  # root B now holds the build's root
    cmdline_b = device.fat_file(3, "cmdline.txt")
    assert cmdline_b.split()[0] == f"root=PARTUUID={DISK_ID}-06" and tryboot.booted_slot(cmdline_b) == "B"
    assert "init=/usr/lib/rapat-appliance/overlay-init" in cmdline_b
    assert device.fat_file(3, "config.txt") == subprocess.run(
        ["mtype", "-i", str(device.files[2]), "::/config.txt"], capture_output=True, text=True).stdout
    assert device.files[2].read_bytes() == boot_a  # the running slot is untouched


@pytest.mark.skipif(bool(raucdev.missing_tools()) or not shutil.which("casync"), reason="needs rauc, casync, dbus")
def test_the_delta_bundle_installs_from_its_url_seeded_by_the_running_slots(stand_in_images, tmp_path: Path) -> None:
    """The build's delta bundle and store served by nginx, installed with the image's own RAUC config: RAUC
    fetches only the chunks slots A lack (here: none of the root's, it is the same build), B gets the
    build's root and boot, and the post-install handler still points B's cmdline.txt at root B."""

    out = stand_in_images["ro"]
    name = f"rapat-appliance-{RO_VERSION}"
    store_bytes = sum(path.stat().st_size for path in (out / f"{name}-delta.castr").rglob("*.cacnk"))
    work = tmp_path / "device"
    work.mkdir()
    with inspect.opened(out / f"{name}.img.xz", tmp_path) as image:
        device = raucdev.ImageRauc(image, work, booted="A")
        root_a, boot_a = image.read(5), image.read(2)
    with device, BundleServer(out) as server:
        result = device.rauc("install", server.url(f"{name}-delta.raucb"))
        assert result.returncode == 0, result.stdout + result.stderr + device.log()
        sent = server.sent()
    assert device.files[6].read_bytes() == root_a and "rauc-post-install: boot B" in device.log()
    assert tryboot.booted_slot(device.fat_file(3, "cmdline.txt")) == "B"
    assert device.files[2].read_bytes() == boot_a
    fetched = sum(size for _, size in sent)
    assert fetched < store_bytes / 10, f"{fetched} bytes fetched of a {store_bytes}-byte store: no seed used"
    # RAUC's set-primary B through the boot-chooser: normal boot stays A, the one tryboot goes to B.
    assert tryboot.parse(device.autoboot.read_text()) == ("A", "B")


def test_qemu_harness_plays_the_firmwares_tryboot_choice(stand_in_images, tmp_path: Path) -> None:
    """The one emulated part of the QEMU update tests: autoboot.txt on p1 -> boot partition -> cmdline."""
    with inspect.opened(stand_in_images["rw"] / f"{NAME}.img.xz", tmp_path) as image:
        disk, p1 = image.image, image.partition(1)["start"] * 512
    slot, number, cmdline = qemu.firmware_choice(disk)
    assert (slot, number) == ("A", 2) and f"root=PARTUUID={DISK_ID}-05" in cmdline.split()
    assert "rauc.slot=A" in cmdline.split() and "console=ttyAMA0" in cmdline.split()
    assert qemu.firmware_choice(disk, trial=True)[:2] == ("A", 2)  # nothing to try yet
    (tmp_path / "autoboot.txt").write_text(tryboot.render("A", "B"))  # what RAUC's set-primary B writes
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{p1}", str(tmp_path / "autoboot.txt"), "::/"], check=True)
    slot, number, cmdline = qemu.firmware_choice(disk, trial=True)
    assert (slot, number) == ("B", 3)
    assert {f"root=PARTUUID={DISK_ID}-06", "rauc.slot=B", "rapat.tryboot=1"} <= set(cmdline.split())
    assert qemu.firmware_choice(disk)[:2] == ("A", 2)  # any boot without the one-shot flag: the old slot


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
        drop_in = root / "etc/systemd/system/appliance-provision.service.d/10-rapat-ab.conf"
        if drop_in.exists():  # the A/B layout: the site file is on p1, /boot/autoboot
            unit += drop_in.read_text()
        exec_start = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")][-1]
        argv = exec_start.split()
        boot_dir = argv[argv.index("--boot-file") + 1].rsplit("/", 1)[0]
        assert boot_dir == ("/boot/autoboot" if drop_in.exists() else "/boot/firmware")
        (root / boot_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        uid, gid = next((int(f[2]), int(f[3])) for f in (line.split(":") for line in
                        (root / "etc/passwd").read_text().splitlines()) if f[0] == "appliance")
        site_file, installed = root / boot_dir.lstrip("/") / "appliance-site.toml", root / "var/lib/appliance/site.toml"

        site_file.write_text(GOOD_SITE)
        good = _chroot(root, *argv, uts=True)
        assert good.returncode == 0, good.stderr
        assert installed.read_text() == GOOD_SITE
        info = installed.stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, gid)  # the daemon reads, root writes
        applied = (site_file.parent / "appliance-site.toml.applied").read_text()
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
        assert "site.id" in error and f"{boot_dir}/appliance-site.toml" in error
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
                                     "OVERLAY_INIT_EXEC": "/bin/sh", "OVERLAY_INIT_DATA": "none"})
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
    # Provisioning on first boot, from the first drive (RAPAT) the A/B layout gives the site file.
    assert "installed /boot/autoboot/appliance-site.toml" in console
    assert "overlay-init:" not in console  # no fallback to a writable root
    assert "Mounted var-lib-appliance.mount" in console  # the persistent data partition
    assert re.search(r"(Using hardware watchdog|Watchdog running with a timeout)", console)
