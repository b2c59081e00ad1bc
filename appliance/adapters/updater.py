"""The update adapter: HTTP download, RAUC, the record that survives the reboot, the reboot request.

The core decides when (core/update_flow.py); this does the work on a worker thread and answers with
`UpdateProgress` and `UpdateStepDone`, and reports the slots at start (`SoftwareReport`).

- Download to the data partition (`<state_dir>/update/`), resuming a partial file (HTTP Range),
  at most the announced size; then size and sha256 against the command, then RAUC's own check of
  the bundle (`rauc info`: the signature against the fleet's update CA in /etc/rauc/system.conf,
  its version and compatible). A bundle that fails any check is deleted.
- Install: `rauc install` through the RAUC service (progress from its output); the bundle is
  deleted afterwards (the data partition is small).
- A delta bundle (casync: its images are chunk indexes, `*.caibx`) is checked the same way, then
  installed from its URL: RAUC fetches from the chunk store next to it (`<bundle>.castr`) only the
  chunks the running slots lack, seeding `casync extract` with them. (RAUC takes the store from the
  bundle's origin; a local copy would point it at a local store that does not exist.)
- The record (`<state_dir>/update/record.json`, written atomically) holds the version rebooted for,
  the checks it must pass and, once known, why it was given back. It is what the old version reads
  after the firmware went back to it, and what the new one reads to know it runs on trial.
- Reboots go through a request file (`<runtime dir>/reboot-request`: `tryboot` or `normal`) that
  `appliance-reboot.path` (root) acts on: the daemon itself holds no privilege to reboot.
- This boot is a trial when the firmware says so (`/proc/device-tree/chosen/bootloader/tryboot`
  on a Pi) or the kernel command line carries `rapat.tryboot=1` (the QEMU harness, the one place
  the firmware's choice is played by something else).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.adapters import tryboot
from appliance.adapters.remote_ops import reboot_request_path, request_reboot
from appliance.adapters.storage import write_atomic
from appliance.core import io
from appliance.core import update as up

log = logging.getLogger("appliance.update")

CMDLINE = "/proc/cmdline"
RAUC_TIMEOUT_S = 60
INSTALL_TIMEOUT_S = 3600
CHUNK = 256 * 1024
SPACE_RESERVE_BYTES = 32 * 1024 * 1024  # kept free on the data partition whatever the bundle's size
PROGRESS = re.compile(r"^\s*(\d{1,3})%\s")


def _booted_on_trial(flag_path: str = tryboot.PI_TRYBOOT_FLAG) -> bool:
    try:
        cmdline = Path(os.environ.get("RAPAT_CMDLINE", CMDLINE)).read_text()
    except OSError:
        cmdline = ""
    return tryboot.booted_on_trial(cmdline, flag_path)


class Updater:
    def __init__(self, config: Any, post: Callable[[Any], None], *, version: str, rauc: str = "rauc",
                 trial: Callable[[], bool] = _booted_on_trial) -> None:
        self._post = post
        self.version = version
        self.rauc = rauc
        self.rauc_config = config["update"]["rauc_config"]
        self.dir = Path(config["paths"]["state_dir"]) / "update"
        self.record_path = self.dir / "record.json"
        self.reboot_request = reboot_request_path(config)
        self._trial = trial
        self._lock = threading.Lock()  # one step at a time

    # --- start --------------------------------------------------------------------------------
    def open(self) -> None:
        threading.Thread(target=self._report, name="update-report", daemon=True).start()

    def _report(self) -> None:
        running, other = self.version, None
        status = self._rauc_json("status", "--detailed")  # --detailed: the slots' bundle versions
        if status is not None:
            running, other = self._slot_versions(status, running)
        self._post(io.SoftwareReport(running, other, self._trial(), self._record()))

    def _slot_versions(self, status: dict[str, Any], running: str) -> tuple[str, str | None]:
        """(running, other slot): the bundle versions RAUC installed; a slot flashed at the factory has
        none, so the running version then is the software's own."""
        booted = status.get("booted")
        other = None
        for entry in status.get("slots", []):
            for name, slot in entry.items():
                if not name.startswith("rootfs."):
                    continue
                version = ((slot.get("slot_status") or {}).get("bundle") or {}).get("version")
                if slot.get("bootname") == booted:
                    running = version or running
                elif slot.get("boot_status") != "bad":
                    other = version
        return running, other

    def _record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("update record %s unreadable (%s): ignored", self.record_path, exc)
            return None
        return record if isinstance(record, dict) and isinstance(record.get("version"), str) else None

    def _write_record(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.record_path, json.dumps(record).encode(), mode=0o640)

    # --- effects --------------------------------------------------------------------------------
    def fetch(self, effect: io.FetchUpdate) -> None:
        self._worker("download", effect.version, lambda: self._fetch(effect))

    def install(self, effect: io.InstallUpdate) -> None:
        self._worker("install", effect.version, lambda: self._install(effect.version))

    def commit(self, effect: io.CommitUpdate) -> None:
        self._worker("commit", effect.version, self._commit)

    def reboot_into(self, effect: io.RebootForUpdate) -> None:
        self._write_record({"version": effect.version, "required_checks": list(effect.required_checks)})
        log.warning("rebooting into %s on trial", effect.version)
        self._request_reboot("tryboot")

    def roll_back(self, effect: io.RollBackUpdate) -> None:
        self._write_record({**(self._record() or {}), "version": effect.version, "reason": effect.reason})
        self._rauc("status", "mark-bad", "booted")  # best effort: a normal boot goes back either way
        log.error("rolling back from %s: %s", effect.version, effect.reason)
        self._request_reboot("normal")

    def forget(self, effect: io.ForgetUpdate) -> None:
        try:
            self.record_path.unlink()
        except FileNotFoundError:
            pass

    # --- the work ------------------------------------------------------------------------------
    def _worker(self, step: str, version: str, work: Callable[[], str]) -> None:
        def run() -> None:
            with self._lock:
                try:
                    detail = work()
                    ok = True
                except UpdateStepError as exc:
                    ok, detail = False, str(exc)
                except Exception as exc:  # noqa: BLE001 - a broken step is a failed update, never a dead daemon
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                self._post(io.UpdateStepDone(version, step, ok, detail))

        threading.Thread(target=run, name=f"update-{step}", daemon=True).start()

    def bundle_path(self, version: str) -> Path:
        return self.dir / f"rapat-{version}.raucb"

    def _fetch(self, effect: io.FetchUpdate) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("rapat-*.raucb*"):  # an older, abandoned download
            if not stale.name.startswith(f"rapat-{effect.version}.raucb"):
                stale.unlink(missing_ok=True)
        final, partial = self.bundle_path(effect.version), self.dir / f"rapat-{effect.version}.raucb.part"
        origin = self.origin_path(effect.version)
        if not final.exists():
            self._check_space(partial, effect.size)
            self._download(effect.url, partial, effect.size)
            partial.replace(final)
        self._post(io.UpdateProgress(up.VERIFYING, 0))
        try:
            delta = self._verify(final, effect)
        except UpdateStepError:
            final.unlink(missing_ok=True)
            raise
        if delta:
            write_atomic(origin, f"{effect.url}\n".encode(), mode=0o600)
            return f"{effect.size} bytes, sha256 and signature verified; a delta bundle: its chunks come at install"
        origin.unlink(missing_ok=True)
        return f"{effect.size} bytes, sha256 and signature verified"

    def origin_path(self, version: str) -> Path:
        """Where a delta bundle's URL is kept until its install (RAUC installs it from there)."""
        return self.dir / f"rapat-{version}.raucb.origin"

    def _check_space(self, partial: Path, size: int) -> None:
        """Refuse a download that would fill the data partition: the uptime ledger, the replay
        journal and the logs live there too, and must keep working whatever the centre sends."""
        have = partial.stat().st_size if partial.exists() else 0
        stats = os.statvfs(self.dir)
        free = stats.f_bavail * stats.f_frsize
        need = size - have + SPACE_RESERVE_BYTES
        if free < need:
            mib = 1024 * 1024
            raise UpdateStepError(f"not enough space on the data partition ({self.dir}): the bundle needs "
                                  f"{(size - have) // mib} MiB more and {SPACE_RESERVE_BYTES // mib} MiB stay free "
                                  f"for the site's own data; {free // mib} MiB are free")

    def _download(self, url: str, partial: Path, size: int) -> None:
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=30)  # noqa: S310 - http(s) only, host checked by the core
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have == size:
                return  # all there already
            raise UpdateStepError(f"the server answered {exc.code} {exc.reason} for the bundle") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UpdateStepError(f"cannot reach the bundle's server: {getattr(exc, 'reason', exc)}") from None
        with response:
            if have and response.status != 206:  # no resume: start again
                have = 0
            shown = -1
            with open(partial, "ab" if have else "wb") as out:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    have += len(chunk)
                    if have > size:
                        raise UpdateStepError(f"the server sent more than the announced {size} bytes")
                    out.write(chunk)
                    percent = have * 100 // size
                    if percent // 5 != shown // 5:
                        shown = percent
                        self._post(io.UpdateProgress(up.DOWNLOADING, percent))
                out.flush()
                os.fsync(out.fileno())
        if have != size:
            raise UpdateStepError(f"the download ended at {have} of {size} bytes; it resumes when sent again")

    def _verify(self, bundle: Path, effect: io.FetchUpdate) -> bool:
        """Every check before anything is written; whether the bundle is a delta (casync) bundle."""
        digest = hashlib.sha256()
        with open(bundle, "rb") as handle:
            while block := handle.read(1024 * 1024):
                digest.update(block)
        if digest.hexdigest() != effect.sha256:
            raise UpdateStepError(f"sha256 mismatch: the bundle is {digest.hexdigest()[:12]}…, the command says "
                                  f"{effect.sha256[:12]}…")
        info = self._rauc_json("info", str(bundle), config=True)
        if info is None:
            raise UpdateStepError(f"RAUC refused the bundle: {self._last_error}")
        version = (info.get("update") or {}).get("version") or info.get("version")
        if version != effect.version:
            raise UpdateStepError(f"the bundle holds version {version!r}, the command says {effect.version!r}")
        compatible, ours = info.get("compatible"), self._compatible()
        if ours and compatible != ours:
            raise UpdateStepError(f"the bundle is for {compatible!r}, this device is {ours!r}")
        return up.is_delta_bundle(info)

    def _install(self, version: str) -> str:
        bundle = self.bundle_path(version)
        if not bundle.exists():
            raise UpdateStepError(f"the downloaded bundle {bundle.name} is gone; send the update again")
        self._post(io.UpdateProgress(up.INSTALLING, 0))
        origin = self.origin_path(version)
        source = origin.read_text().strip() if origin.exists() else str(bundle)
        process = subprocess.Popen([self.rauc, "install", source], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            match = PROGRESS.match(line)
            if match:
                self._post(io.UpdateProgress(up.INSTALLING, int(match.group(1))))
        code = process.wait(INSTALL_TIMEOUT_S)
        bundle.unlink(missing_ok=True)
        origin.unlink(missing_ok=True)
        if code != 0:
            # RAUC says why on a `LastError: ...` line; its last line only names the bundle.
            why = next((line.split("LastError:", 1)[1] for line in lines if "LastError:" in line),
                       next((line for line in reversed(lines) if line.strip()), f"exit {code}"))
            raise UpdateStepError(f"rauc install failed: {why.strip()}")
        if source != str(bundle):
            self._check_installed(version)
        return "installed into the other slot"

    def _check_installed(self, version: str) -> None:
        """A bundle RAUC fetched itself must be the version checked: over plain http an older signed
        bundle could have been put in its place (a downgrade). If not, the slot is never tried."""
        status = self._rauc_json("status", "--detailed")
        installed = self._slot_versions(status, self.version)[1] if status is not None else None
        if installed != version:
            self._rauc("status", "mark-bad", "other")
            raise UpdateStepError(f"RAUC installed version {installed!r} from the URL, not the {version!r} checked: "
                                  "the slot is marked bad and will not be tried")

    def _commit(self) -> str:
        for action in ("mark-good", "mark-active"):
            result = self._rauc("status", action, "booted")
            if result.returncode != 0:
                raise UpdateStepError(f"rauc status {action} failed: {result.stderr.strip() or result.stdout.strip()}")
        self.record_path.unlink(missing_ok=True)
        _sync_directory(self.dir)  # else a power cut brings the record back (the old version would report a rollback)
        return "the booted slot is now the one the firmware starts"

    def _compatible(self) -> str:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(self.rauc_config)
            return parser.get("system", "compatible", fallback="")
        except configparser.Error:
            return ""

    def _request_reboot(self, kind: str) -> None:
        request_reboot(self.reboot_request, kind)

    # --- RAUC -----------------------------------------------------------------------------------
    _last_error = ""

    def _rauc(self, *args: str, config: bool = False) -> subprocess.CompletedProcess:
        argv = [self.rauc, *([f"--conf={self.rauc_config}"] if config else []), *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=RAUC_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(argv, 127, "", f"{type(exc).__name__}: {exc}")

    def _rauc_json(self, *args: str, config: bool = False) -> dict[str, Any] | None:
        if config and not os.path.exists(self.rauc_config):
            self._last_error = f"RAUC is not set up on this device ({self.rauc_config} missing)"
            return None
        result = self._rauc(*args, "--output-format=json", config=config)
        if result.returncode != 0:
            lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            self._last_error = lines[-1].strip() if lines else f"exit {result.returncode}"
            return None
        try:
            return json.loads(result.stdout)
        except ValueError:
            self._last_error = "rauc printed no JSON"
            return None


def _sync_directory(path: Path) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class UpdateStepError(Exception):
    """A step failed for a reason the centre should read."""
