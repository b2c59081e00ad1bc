"""Delta updates: what a site downloads when RAUC installs a casync bundle, seeded by its running slot.

RAUC 1.8 (Debian 12) has two ways not to send the whole root again. Its adaptive updates
(`block-hash-index`) need HTTP streaming, and Debian's RAUC is built without it ("configured without
--enable-streaming" is in the binary; `rauc install URL` downloads the whole bundle first). Its casync
support works: the bundle holds only the root's chunk index, and RAUC runs `casync extract` with the
active slot as the seed, fetching from the store next to the bundle's URL only the chunks that slot lacks.

Measured here with the real tools: two roots, release N on slot A of the RAUC rig, release N+1 as a
casync bundle and store served by nginx; `rauc install <URL>` through the rig's RAUC service; the bytes
nginx sent, from its access log; slot B checked byte for byte against N+1's image. Next to it, same
run: the whole bundle of N+1 (gzip squashfs, as the product ships today) and its bare install.

Releases (N is the debootstrap root of the image tests, or a stand-in, plus this repository's
`appliance` package in /opt/rapat):
- "appliance release": N+1 changes three of the package's files and /etc/rapat-version (a typical
  release of ours);
- "+ security update": also every byte of libssl, libcrypto and libpython (a STAND-IN for a Debian
  point release: the files rewritten with random bytes of the same size, which compress and chunk
  no better than real new binaries).

`python -m benchmarks.bench_update_delta [--root DIR] [--sites 242] [--link-mbit 10]`.
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
from appliance_dev.bundle_server import BundleServer
from appliance_dev.rauc_rig import COMPATIBLE, RaucDevice, build_delta_bundle
from benchmarks.bench_update import _root_tree, fleet

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path("opt/rapat/site-packages/appliance")
RELEASE_EDITS = ("daemon.py", "core/machine.py", "adapters/updater.py")
SECURITY_GLOBS = ("usr/lib/*-linux-gnu/libssl.so.*", "usr/lib/*-linux-gnu/libcrypto.so.*",
                  "usr/lib/*-linux-gnu/libpython3*.so.*")
INSTALL_TIMEOUT_S = 1800


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _tree(root: Path, dest: Path, version: str) -> Path:
    subprocess.run(["cp", "-a", f"{root}/.", str(dest)], check=True)
    shutil.copytree(REPO / "appliance", dest / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc/rapat-version").write_text(f"{version}\n")
    return dest


def _release(tree: Path, version: str, security: bool) -> int:
    """Turn `tree` into release `version`; the bytes of the files changed."""
    changed = 0
    for name in RELEASE_EDITS:
        path = tree / PACKAGE / name
        with open(path, "a") as handle:
            handle.write(f"\n# release {version}: a fix\n")
        changed += path.stat().st_size
    (tree / "etc/rapat-version").write_text(f"{version}\n")
    if security:
        for pattern in SECURITY_GLOBS:
            for path in tree.glob(pattern):
                if path.is_file() and not path.is_symlink():
                    size = path.stat().st_size
                    path.write_bytes(os.urandom(size))
                    changed += size
    return changed


def _mkfs(tree: Path, image: Path, size_mb: int) -> None:
    # Fixed UUID and hash seed: the image builder keeps the base image's root file system, not a fresh one.
    fixed = "5e3da3da-0000-4000-8000-000000000001"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", fixed, "-E", f"hash_seed={fixed}", "-d", str(tree), str(image),
                    f"{size_mb}M"], check=True, capture_output=True)


def _install(device: RaucDevice, source: str) -> float:
    started = time.monotonic()
    done = subprocess.run(["rauc", "install", source], env=device.env, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"rauc install {source} failed: {done.stdout[-600:]}{done.stderr[-600:]}")
    return took


def measure(root: Path, keys: tuple[Path, Path, Path], work: Path) -> dict:
    ca, cert, key = keys
    used_mb = int(subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True, check=True).stdout.split()[0])
    size_mb = max(64, int(used_mb * 1.3) + 48)
    base = _tree(root, work / "tree", "1.0.0")
    _mkfs(base, work / "release-n.ext4", size_mb)
    result: dict = {"image_mb": size_mb, "releases": {}}
    served = work / "served"
    served.mkdir()
    with RaucDevice(ca, slot_mb=size_mb) as device:
        shutil.copyfile(work / "release-n.ext4", device.dir / "rootfs.A.img")  # the running slot: the seed
        for version, label, security in (("1.1.0", "appliance release", False), ("1.2.0", "+ security update", True)):
            changed = _release(base, version, security)
            image = work / f"release-{version}.ext4"
            _mkfs(base, image, size_mb)
            started = time.monotonic()
            bundle, store = build_delta_bundle(served / f"rapat-{version}.raucb", image, version, cert, key)
            make_s = time.monotonic() - started
            with BundleServer(served) as server:
                install_s = _install(device, server.url(bundle.name))
                sent = server.sent()
                requests, fetched = len(sent), sum(size for _, size in sent)
            if _sha256(device.dir / "rootfs.B.img") != _sha256(image):
                raise SystemExit(f"{label}: slot B is not release {version}'s image after the delta install")
            store_bytes = sum(path.stat().st_size for path in store.rglob("*") if path.is_file())
            result["releases"][label] = {"version": version, "changed_mb": changed / 1e6, "fetched_mb": fetched / 1e6,
                                         "requests": requests, "index_bundle_mb": bundle.stat().st_size / 1e6,
                                         "store_mb": store_bytes / 1e6, "make_s": make_s, "install_s": install_s}
        # The peer: the whole bundle of the last release, as shipped today, and its bare install.
        content = work / "content"
        content.mkdir()
        shutil.copyfile(image, content / "rootfs.ext4")
        (content / "manifest.raucm").write_text(f"[update]\ncompatible={COMPATIBLE}\nversion=1.3.0\n\n[bundle]\n"
                                                "format=plain\n\n[image.rootfs]\nfilename=rootfs.ext4\n")
        full = work / "full.raucb"
        subprocess.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}", str(content), str(full)], check=True,
                       capture_output=True)
        result["full_bundle_mb"] = full.stat().st_size / 1e6
        result["full_install_s"] = _install(device, str(full))
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_update_delta")
    parser.add_argument("--root", help="a root tree (default: the image tests' debootstrap cache)")
    parser.add_argument("--sites", type=int, default=242)
    parser.add_argument("--link-mbit", type=float, default=10.0)
    args = parser.parse_args(argv)
    missing = [tool for tool in ("casync", "rauc", "nginx") if not shutil.which(tool)]
    if missing:
        print(f"bench_update_delta needs {', '.join(missing)} (make setup)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-delta-", dir=os.environ.get("BENCH_TMP")))
    try:
        ca_pem, ca_key = make_update_ca()
        cert_pem, key_pem = make_signing_cert(ca_pem, ca_key)
        keys = (work / "ca.pem", work / "signing.pem", work / "signing.key")
        for path, data in zip(keys, (ca_pem, cert_pem, key_pem), strict=True):
            path.write_bytes(data)
        root, what = _root_tree(args.root)
        measured = measure(root, keys, work)
        full = measured["full_bundle_mb"]
        print(f"root: {what}; ext4 image {measured['image_mb']} MB; the whole bundle (gzip squashfs, as shipped "
              f"today) {full:.1f} MB, its bare install {measured['full_install_s']:.1f} s")
        print(f"{'release':22} {'changed':>9} {'fetched':>10} {'whole/fetched':>13} {'requests':>8} {'install':>8} "
              f"{'ratio':>6} {'fleet':>9}")
        for label, row in measured["releases"].items():
            plan = fleet(row["fetched_mb"], args.sites, args.link_mbit, 5)
            row["fleet_h"] = plan["whole_fleet_h"]
            print(f"{label:22} {row['changed_mb']:7.1f}MB {row['fetched_mb']:8.2f}MB {full / row['fetched_mb']:12.0f}x "
                  f"{row['requests']:8d} {row['install_s']:7.1f}s {row['install_s'] / measured['full_install_s']:6.2f} "
                  f"{plan['whole_fleet_h'] * 60:7.1f}min")
        whole = fleet(full, args.sites, args.link_mbit, 5)
        print(f"fleet: {args.sites} sites through {args.link_mbit:g} Mbit/s: whole bundles {whole['whole_fleet_h']:.1f} h; "
              "with the deltas above, the minutes in the last column ('fetched' counts the index bundle and every "
              "chunk nginx sent; 'ratio' is the delta install's time over the whole bundle's bare install)")
        print(json.dumps(measured))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
