"""Releases (`update publish`): a RAUC bundle checked the way a device will check it, then recorded.

The check is real RAUC (`rauc info`) against the console's update CA, with the devices' own
`check-purpose=codesign`. For `plain` bundles that verifies the signature over the whole file. For
`verity` bundles RAUC verifies only the signed manifest (the payload is checked block by block by
dm-verity while a device installs): so the console also recomputes the payload's dm-verity hash tree
here and compares its root with the signed `verity-hash`, and a corrupted payload is refused before
242 sites download it, not after.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.console.errors import BadInput, Refused
from appliance.core.update import DELTA_STORE_SUFFIX, MAX_BUNDLE_BYTES, is_delta_bundle, version_key
from appliance.core.urls import UPDATE_SCHEMES, clean_url

RAUC_TIMEOUT_S = 300.0
VERITY_BLOCK = 4096
_TEXT_FIELD = re.compile(r"^\s*(Bundle Format|Verity Salt|Verity Hash|Verity Size):\s*'?([^'\s]*)'?\s*$", re.M)
_SIGNER = re.compile(r"Verified (?:detached|inline) signature by '([^']*)'")


@dataclass(frozen=True)
class Bundle:
    version: str
    compatible: str
    format: str
    signer: str
    sha256: str
    size: int


def _why(stderr: str) -> str:
    """RAUC's reason, in the operator's words first."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("rauc-Message")]
    detail = "; ".join(lines) or "no reason given"
    if "Signature size is 0" in detail:
        return f"the bundle is not signed ({detail})"
    if "unable to get local issuer certificate" in detail or "self-signed certificate" in detail:
        return f"the bundle is signed by a certificate that is not from this console's update CA ({detail})"
    if "unsuitable certificate purpose" in detail:
        return ("the signing certificate lacks extendedKeyUsage codeSigning, which the devices require "
                f"({detail})")
    if "certificate has expired" in detail or "certificate is not yet valid" in detail:
        return f"the signing certificate is outside its validity period ({detail})"
    return f"the bundle is corrupted or not a RAUC bundle ({detail})"


def rauc_info(bundle: Path, keyring: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """(RAUC's JSON info, the text info's format/verity fields, the signer) of a bundle that verifies
    against `keyring`; Refused with RAUC's reason otherwise."""
    rauc = shutil.which("rauc")
    if rauc is None:
        raise Refused("`rauc` is not installed (apt-get install rauc): the console checks bundles with it")
    with tempfile.TemporaryDirectory(prefix="console-rauc-") as scratch:
        conf = Path(scratch) / "system.conf"
        # What the console needs of a device's system.conf: the keyring and the purpose check.
        conf.write_text(f"[system]\ncompatible=appliance-console-check\nbootloader=noop\n\n"
                        f"[keyring]\npath={keyring}\ncheck-purpose=codesign\n")
        runs = []
        for extra in (["--output-format=json"], []):
            try:
                runs.append(subprocess.run([rauc, f"--conf={conf}", "info", *extra, str(bundle)], capture_output=True,
                                           text=True, timeout=RAUC_TIMEOUT_S, check=False))
            except subprocess.TimeoutExpired:
                raise Refused(f"{bundle}: `rauc info` did not finish within {RAUC_TIMEOUT_S:g} s") from None
            if runs[-1].returncode != 0:
                raise Refused(f"{bundle}: refused: {_why(runs[-1].stderr)}")
    try:
        info = json.loads(runs[0].stdout)
    except ValueError:
        raise Refused(f"{bundle}: `rauc info` gave no readable JSON") from None
    fields = {name: value for name, value in _TEXT_FIELD.findall(runs[1].stdout)}
    signer = _SIGNER.search(runs[0].stderr + runs[1].stderr)
    return info, fields, signer.group(1) if signer else ""


def _verity_root(handle: Any, data_size: int, salt: bytes, file_hash: Any) -> tuple[str, bytes]:
    """dm-verity (format 1, SHA-256, 4 KiB blocks) root hash and hash tree of the first `data_size`
    bytes read from `handle`; every byte read is fed to `file_hash` too."""
    level = bytearray()
    remaining = data_size
    while remaining > 0:
        block = handle.read(min(VERITY_BLOCK, remaining))
        if not block:
            break
        file_hash.update(block)
        remaining -= len(block)
        level += hashlib.sha256(salt + block.ljust(VERITY_BLOCK, b"\0")).digest()
    levels = []
    while True:
        padded = bytes(level) + b"\0" * (-len(level) % VERITY_BLOCK)
        levels.append(padded)
        if len(padded) <= VERITY_BLOCK:
            return hashlib.sha256(salt + padded).hexdigest(), b"".join(reversed(levels))
        level = bytearray(b"".join(hashlib.sha256(salt + padded[offset:offset + VERITY_BLOCK]).digest()
                                   for offset in range(0, len(padded), VERITY_BLOCK)))


def check_payload(bundle: Path, fields: dict[str, str]) -> tuple[str, int]:
    """(sha256, size) of the bundle file; for a verity bundle also its hash tree against the signed root."""
    size = bundle.stat().st_size
    digest = hashlib.sha256()
    with bundle.open("rb") as handle:
        if fields.get("Bundle Format") not in ("verity", "crypt"):
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest(), size
        try:
            salt, root = bytes.fromhex(fields["Verity Salt"]), fields["Verity Hash"].lower()
            tree_size = int(fields["Verity Size"])
        except (KeyError, ValueError):
            raise Refused(f"{bundle}: a {fields.get('Bundle Format')} bundle without readable verity data") from None
        handle.seek(size - 8)
        signature_size = int.from_bytes(handle.read(8), "big")
        data_size = size - 8 - signature_size - tree_size
        if data_size <= 0 or data_size % VERITY_BLOCK:
            raise Refused(f"{bundle}: refused: the bundle is corrupted (its parts do not add up to its size)")
        handle.seek(0)
        computed, tree = _verity_root(handle, data_size, salt, digest)
        stored = handle.read(tree_size)
        digest.update(stored)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if computed != root or stored != tree:
        raise Refused(f"{bundle}: refused: the bundle is corrupted (its payload does not match the signed "
                      "verity hash; a device would fail while installing it)")
    return digest.hexdigest(), size


def inspect(bundle: Path, keyring: Path) -> Bundle:
    """Everything `publish` records about a bundle, or Refused/BadInput saying why not."""
    if not bundle.is_file():
        raise BadInput(f"{bundle}: no such file")
    info, fields, signer = rauc_info(bundle, keyring)
    version, compatible = info.get("version"), info.get("compatible")
    if not isinstance(version, str) or version_key(version) is None:
        raise Refused(f"{bundle}: version {version!r} in its manifest is not one the devices accept "
                      "(e.g. 1.4.2 or 2026.12.1-rc1)")
    if not isinstance(compatible, str) or not compatible:
        raise Refused(f"{bundle}: its manifest names no `compatible`")
    sha256, size = check_payload(bundle, fields)
    if size > MAX_BUNDLE_BYTES:
        raise Refused(f"{bundle}: {size} bytes, more than the devices take ({MAX_BUNDLE_BYTES})")
    bundle_format = fields.get("Bundle Format") or "plain"
    if is_delta_bundle(info):
        store = Path(delta_store(str(bundle)))
        if not store.is_dir() or not any(store.rglob("*.cacnk")):
            raise Refused(f"{bundle}: a delta bundle, but its chunk store {store.name}/ is not beside it (or holds no "
                          f"chunks): the sites fetch their chunks from the store beside the bundle's URL")
        bundle_format += " delta"
    return Bundle(version, compatible, bundle_format, signer, sha256, size)


def delta_store(bundle: str) -> str:
    """Where a delta bundle's chunk store is, for a path or a URL: beside it, without `.raucb`, plus
    `.castr` (RAUC's own rule)."""
    return bundle.removesuffix(".raucb") + DELTA_STORE_SUFFIX


def check_url(url: str) -> str:
    try:
        return clean_url(url, None, UPDATE_SCHEMES)
    except ValueError as exc:
        raise BadInput(f"--url: {exc} (a bundle's URL is {'/'.join(UPDATE_SCHEMES)}://HOST/PATH)") from None


@dataclass(frozen=True)
class Release:
    version: str
    sha256: str
    size: int
    url: str
    compatible: str
    format: str
    signer: str
    bundle: str
    published_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def command_body(self, allow_downgrade: bool = False) -> dict[str, Any]:
        """The contract's `update` body."""
        return {"version": self.version, "url": self.url, "sha256": self.sha256, "size": self.size,
                "allow_downgrade": allow_downgrade}


def releases(db: sqlite3.Connection) -> list[Release]:
    rows = db.execute("SELECT version, sha256, size, url, compatible, format, signer, bundle, published_at "
                      "FROM releases").fetchall()
    return sorted((Release(*row) for row in rows), key=lambda r: version_key(r.version) or ((), ""))


def release(db: sqlite3.Connection, version: str) -> Release:
    row = db.execute("SELECT version, sha256, size, url, compatible, format, signer, bundle, published_at "
                     "FROM releases WHERE version = ?", (version,)).fetchone()
    if row is None:
        known = ", ".join(r.version for r in releases(db)) or "none yet"
        raise BadInput(f"version {version!r} is not published (published: {known}); "
                       "run `appliance-console update publish BUNDLE --url URL`")
    return Release(*row)


def record(db: sqlite3.Connection, bundle: Bundle, url: str, path: Path) -> tuple[Release, str]:
    """Store the release inside a transaction; (the release, 'published' | 'unchanged' | 'url changed')."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = _record(db, bundle, url, path)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _record(db: sqlite3.Connection, bundle: Bundle, url: str, path: Path) -> tuple[Release, str]:
    old = db.execute("SELECT sha256, url FROM releases WHERE version = ?", (bundle.version,)).fetchone()
    if old is not None and old[0] != bundle.sha256:
        raise Refused(f"version {bundle.version} is already published with another bundle (sha256 {old[0][:16]}..., "
                      f"this one {bundle.sha256[:16]}...): sites may already run it; build the change as a new version")
    others = {row[0] for row in db.execute("SELECT DISTINCT compatible FROM releases WHERE version != ?",
                                           (bundle.version,))}
    if others and bundle.compatible not in others:
        raise Refused(f"the bundle is for `{bundle.compatible}`, the fleet's releases for `{', '.join(sorted(others))}`: "
                      "every device would refuse it (RAUC checks `compatible`)")
    if old is not None and old[1] == url:
        return release(db, bundle.version), "unchanged"
    now = time.time()
    if old is not None:
        db.execute("UPDATE releases SET url = ?, bundle = ? WHERE version = ?", (url, str(path), bundle.version))
        return release(db, bundle.version), "url changed"
    db.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (bundle.version, bundle.sha256, bundle.size, url, bundle.compatible, bundle.format, bundle.signer,
                str(path), now))
    return release(db, bundle.version), "published"
