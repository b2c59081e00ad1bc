"""Remote updates: what one update costs in bytes and time, and what that means for the fleet.

1. Bytes: a root file system as the image builder makes it (ext4), the bundle RAUC builds from it
   (plain, gzip squashfs, as the builder signs it), next to the compressed image a technician
   flashes (`xz -6`, as build-image) and the raw ext4 image. The root is Debian bookworm arm64 from
   the image tests' debootstrap cache when there is one, else a stand-in of this machine's
   /usr/lib/python3 and /usr/share (said so in the output).
2. Time on one site: a signed `update` command published to a real daemon (as systemd runs it) on a
   real Mosquitto until `update.committed`, with nginx serving the bundle, RAUC's service installing
   into the rig's slot images, and the reboot played by the rig (stop the daemon, restart RAUC as
   the trial boot, start the daemon). Next to it, same run: copying the bundle's bytes (the floor of
   any download) and a bare `rauc install` of the same bundle (the floor of any install).
3. The fleet: 242 sites behind a 10 Mbit/s central link, from the measured bundle size: the whole
   fleet's download time, and the rings (canary first).

`python -m benchmarks.bench_update [--root DIR] [--sites 242] [--link-mbit 10] [--canary 5]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.console.update_keys import make_signing_cert, make_update_ca
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.bundle_server import BundleServer
from appliance_dev.rauc_rig import COMPATIBLE, RaucDevice, build_bundle
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from appliance_dev.waiting import wait_until
from tests.image_support.synthetic import cache_dir
from tests.support.site import ConsoleKey

SITE = "kalibaru"
SLOT_MB = 48


def _root_tree(explicit: str | None) -> tuple[Path, str]:
    if explicit:
        return Path(explicit), explicit
    cached = sorted(path for path in cache_dir().glob("bookworm-arm64-*") if (path / ".complete").exists())
    if cached:
        return cached[-1], f"Debian bookworm arm64 debootstrap root ({cached[-1].name})"
    tree = Path(tempfile.mkdtemp(prefix="bench-root-"))
    for part in ("/usr/lib/python3", "/usr/share/locale", "/usr/share/doc"):
        shutil.copytree(part, tree / part.lstrip("/"), symlinks=True, ignore_dangling_symlinks=True, dirs_exist_ok=True)
    return tree, "STAND-IN (no debootstrap cache): this machine's /usr/lib/python3, /usr/share/{locale,doc}"


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1e6


def sizes(root: Path, keys: tuple[Path, Path], work: Path) -> dict[str, float]:
    used = _du_mb(root)
    image_mb = max(64, int(used * 1.3) + 32)
    content = work / "content"
    content.mkdir()
    started = time.monotonic()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(content / "rootfs.ext4"), f"{image_mb}M"], check=True,
                   capture_output=True)
    mkfs_s = time.monotonic() - started
    manifest = (f"[update]\ncompatible={COMPATIBLE}\nversion=9.9.9\n\n[bundle]\nformat=plain\n\n"
                "[image.rootfs]\nfilename=rootfs.ext4\n")
    raw = (content / "rootfs.ext4").stat().st_size / 1e6
    started = time.monotonic()
    xz = subprocess.run(["xz", "-6", "-T0", "-c", str(content / "rootfs.ext4")], capture_output=True, check=True).stdout
    xz_s = time.monotonic() - started
    result = {"used": used, "ext4": raw, "xz": len(xz) / 1e6, "mkfs_s": mkfs_s, "xz_s": xz_s}
    for name, extra in (("bundle", []), ("bundle_xz", ["--mksquashfs-args=-comp xz"])):
        (content / "manifest.raucm").write_text(manifest)  # `rauc bundle` rewrites it
        started = time.monotonic()
        subprocess.run(["rauc", "bundle", f"--cert={keys[0]}", f"--key={keys[1]}", *extra, str(content),
                        str(work / f"{name}.raucb")], check=True, capture_output=True)
        result[f"{name}_s"] = time.monotonic() - started
        result[name] = (work / f"{name}.raucb").stat().st_size / 1e6
    return result


def one_site(keys: tuple[Path, Path, Path], work: Path) -> dict[str, float]:
    """Seconds from publishing the command to update.committed, and its peers, on the rig."""
    ca, cert, key = keys
    bundles = work / "bundles"
    bundles.mkdir()
    # 16 MB of incompressible-ish text (random hex): a bundle of ~9 MB, big enough to time.
    bundle = build_bundle(bundles / "rapat-1.1.0.raucb", "1.1.0", cert, key, size_mb=SLOT_MB,
                          files={"/usr/share/filler.txt": os.urandom(8_000_000).hex()})
    data = bundle.read_bytes()
    result: dict[str, float] = {"bundle_mb": len(data) / 1e6}
    broker = Mosquitto(work / "broker").start()
    try:
        with BundleServer(bundles) as server, RaucDevice(ca, slot_mb=SLOT_MB) as device:
            result.update(_timed_update(broker, server, device, bundle, data, work))
    finally:
        broker.stop()
    return result


def _timed_update(broker: Mosquitto, server: BundleServer, device: RaucDevice, bundle: Path, data: bytes,
                  work: Path) -> dict[str, float]:
    result: dict[str, float] = {}
    console = ConsoleKey()
    observer = MqttRecorder(broker.port, f"{DEFAULT_TOPIC_PREFIX}/#")
    extra = f'[update]\nrauc_config = "{device.system_conf}"\n'
    config = site_config(work, SITE, broker.url, console.public_b64, extra=extra)
    env = {"DBUS_SYSTEM_BUS_ADDRESS": device.env["DBUS_SYSTEM_BUS_ADDRESS"], "RAPAT_CMDLINE": str(device.cmdline)}
    site = DaemonProcess(config, env).start()
    site.wait_connected()
    body = {"version": "1.1.0", "url": server.url(bundle.name), "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}
    request = Path(site.socket).parent / "reboot-request"
    started = time.monotonic()
    observer.publish(site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd"), console.command("update", body, to=[SITE]))
    wait_until(request.exists, 120, what="the trial reboot request")
    result["to_reboot_s"] = time.monotonic() - started
    site.stop()
    request.unlink()
    device.boot("B", trial=True)
    trial = DaemonProcess(config, env).start()
    observer.wait_for(lambda topic, payload: payload.get("type") == "update.committed", timeout=120)
    result["to_committed_s"] = time.monotonic() - started
    trial.stop()
    observer.close()
    # Peers, same run: the bytes copied (any download's floor), a bare rauc install (any install's floor).
    started = time.monotonic()
    shutil.copyfile(bundle, work / "copy.raucb")
    result["copy_s"] = time.monotonic() - started
    device.boot("B")
    started = time.monotonic()
    bare = device.rauc("install", str(bundle))
    result["bare_install_s"] = time.monotonic() - started
    if bare.returncode != 0:
        raise RuntimeError(f"bare rauc install failed: {bare.stdout[-400:]}")
    return result


def fleet(bundle_mb: float, sites: int, link_mbit: float, canary: int) -> dict[str, float]:
    per_site_s = bundle_mb * 8 / link_mbit  # the central link is the bottleneck, sites download in turn or together
    return {"whole_fleet_h": sites * per_site_s / 3600, "canary_min": canary * per_site_s / 60,
            "main_h": (sites - canary) * per_site_s / 3600, "per_site_s": per_site_s,
            "fleet_gb": sites * bundle_mb / 1000}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_update")
    parser.add_argument("--root", help="a root tree to measure (default: the image tests' debootstrap cache)")
    parser.add_argument("--sites", type=int, default=242)
    parser.add_argument("--link-mbit", type=float, default=10.0)
    parser.add_argument("--canary", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    try:
        ca_pem, ca_key = make_update_ca()
        cert_pem, key_pem = make_signing_cert(ca_pem, ca_key)
        ca, cert, key = work / "ca.pem", work / "signing.pem", work / "signing.key"
        for path, data in ((ca, ca_pem), (cert, cert_pem), (key, key_pem)):
            path.write_bytes(data)
        root, what = _root_tree(args.root)
        for sub in ("sizes", "site"):
            (work / sub).mkdir()
        measured = sizes(root, (cert, key), work / "sizes")
        print(f"root: {what}: {measured['used']:.0f} MB used")
        print(f"  ext4 image {measured['ext4']:.0f} MB (mkfs {measured['mkfs_s']:.1f} s); the flashed image's share "
              f"xz -6: {measured['xz']:.1f} MB ({measured['xz_s']:.0f} s); the update bundle: gzip squashfs (RAUC's "
              f"default) {measured['bundle']:.1f} MB ({measured['bundle_s']:.0f} s), xz squashfs "
              f"{measured['bundle_xz']:.1f} MB ({measured['bundle_xz_s']:.0f} s)")
        print(f"  bytes per update / the flashed image (xz): gzip {measured['bundle'] / measured['xz']:.2f}, xz "
              f"{measured['bundle_xz'] / measured['xz']:.2f}; / the raw ext4: {measured['bundle_xz'] / measured['ext4']:.2f}; "
              "no deltas (RAUC's adaptive updates need verity bundles streamed over HTTP: not measurable on this "
              "kernel without device-mapper)")
        timing = one_site((ca, cert, key), work / "site")
        print(f"one site (rig, bundle {timing['bundle_mb']:.1f} MB over loopback): command -> reboot request "
              f"{timing['to_reboot_s']:.1f} s, -> update.committed {timing['to_committed_s']:.1f} s (the reboot played "
              "by the rig: a daemon restart, not a Pi's ~40 s boot)")
        print(f"  peers, same run: copying the bundle {timing['copy_s'] * 1000:.0f} ms; a bare rauc install "
              f"{timing['bare_install_s']:.2f} s; ratio whole update / bare install "
              f"{timing['to_committed_s'] / timing['bare_install_s']:.1f}")
        plan = fleet(measured["bundle_xz"], args.sites, args.link_mbit, args.canary)
        print(f"fleet (xz bundle): {args.sites} sites x {measured['bundle_xz']:.0f} MB = {plan['fleet_gb']:.1f} GB through a "
              f"{args.link_mbit:g} Mbit/s central link: {plan['per_site_s'] / 60:.1f} min of link time per site, "
              f"{plan['whole_fleet_h']:.1f} h for the fleet; canary ring of {args.canary}: {plan['canary_min']:.0f} min, "
              f"then the main ring {plan['main_h']:.1f} h (overnight with update.window)")
        print(json.dumps({"sizes": measured, "site": timing, "fleet": plan}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
