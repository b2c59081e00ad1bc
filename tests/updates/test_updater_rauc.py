"""The update adapter on real parts: nginx serving signed bundles, RAUC's service on a private system
bus installing into A/B slot images, the product's boot-chooser on autoboot.txt. What a Pi's firmware
would boot is read from autoboot.txt (RaucDevice.firmware_boots): the one emulated part."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from appliance.adapters.updater import Updater
from appliance.core import io
from appliance.core import update as up
from appliance_dev.bundle_server import BundleServer
from appliance_dev.rauc_rig import build_bundle, build_delta_bundle, ext4_image, unsigned_bundle


def _fetch_effect(bundle: Path, url: str, version: str, **change) -> io.FetchUpdate:  # noqa: ANN003
    data = bundle.read_bytes()
    fields = {"version": version, "url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return io.FetchUpdate(**{**fields, **change})


def test_download_verify_install_trial_and_commit(device, device_config, server, bundles, events) -> None:  # noqa: ANN001
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.fetch(_fetch_effect(bundles / "rapat-1.1.0.raucb", server.url("rapat-1.1.0.raucb"), "1.1.0"))
    done = events.wait(io.UpdateStepDone)
    assert (done.step, done.ok) == ("download", True), done
    phases = [e.phase for e in events.seen if isinstance(e, io.UpdateProgress)]
    assert phases[0] == up.DOWNLOADING and phases[-1] == up.VERIFYING

    updater.install(io.InstallUpdate("1.1.0"))
    done = events.wait(io.UpdateStepDone)
    assert (done.step, done.ok) == ("install", True), done
    assert device.slot_version("B") == "1.1.0" and device.slot_version("A") == "1.0.0"
    assert (device.firmware_boots(tryboot_flag=False), device.firmware_boots(tryboot_flag=True)) == ("A", "B")
    assert not updater.bundle_path("1.1.0").exists()  # the data partition is small
    assert not updater.origin_path("1.1.0").exists()  # a whole bundle is installed from the verified copy

    updater.reboot_into(io.RebootForUpdate("1.1.0", ("broker", "disk", "camera")))
    assert updater.reboot_request.read_text().strip() == "tryboot"
    record = json.loads(updater.record_path.read_text())
    assert record == {"version": "1.1.0", "required_checks": ["broker", "disk", "camera"]}

    device.boot("B")  # the firmware's one tryboot
    trial = Updater(device_config, events, version="1.1.0", trial=lambda: True)
    trial.open()
    report = events.wait(io.SoftwareReport)
    assert (report.running, report.trying, report.pending["version"]) == ("1.1.0", True, "1.1.0")
    trial.commit(io.CommitUpdate("1.1.0"))
    done = events.wait(io.UpdateStepDone)
    assert (done.step, done.ok) == ("commit", True), done
    assert (device.firmware_boots(tryboot_flag=False), device.firmware_boots(tryboot_flag=True)) == ("B", "B")
    assert not trial.record_path.exists()


def test_a_trial_given_back_boots_the_old_slot_and_the_old_version_says_why(device, device_config, server, bundles,
                                                                           events) -> None:  # noqa: ANN001
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.fetch(_fetch_effect(bundles / "rapat-1.1.0.raucb", server.url("rapat-1.1.0.raucb"), "1.1.0"))
    assert events.wait(io.UpdateStepDone).ok
    updater.install(io.InstallUpdate("1.1.0"))
    assert events.wait(io.UpdateStepDone).ok
    updater.reboot_into(io.RebootForUpdate("1.1.0", ("broker", "disk")))
    device.boot("B")
    trial = Updater(device_config, events, version="1.1.0", trial=lambda: True)
    trial.roll_back(io.RollBackUpdate("1.1.0", "the new version failed its self-test (camera: no frames)"))
    assert trial.reboot_request.read_text().strip() == "normal"
    assert device.firmware_boots(tryboot_flag=False) == "A" and device.firmware_boots(tryboot_flag=True) == "A"
    device.boot("A")
    old = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    old.open()
    report = events.wait(io.SoftwareReport)
    assert report.running == "1.0.0" and not report.trying
    assert report.pending["reason"] == "the new version failed its self-test (camera: no frames)"
    old.forget(io.ForgetUpdate("1.1.0"))
    assert not old.record_path.exists()


@pytest.mark.parametrize(("case", "words"), [
    ("other CA", "unable to get local issuer certificate"),
    ("unsigned", "Signature size is 0"),
    ("wrong version", "the bundle holds version '1.1.0', the command says '1.2.0'"),
    ("wrong sha256", "sha256 mismatch"),
    ("wrong compatible", "the bundle is for 'other-product', this device is 'rapat-appliance-rpi'"),
])
def test_bad_bundles_are_refused_before_anything_is_written(device, device_config, server, bundles, other_keys,
                                                            fleet_keys, events, case: str, words: str) -> None:  # noqa: ANN001
    root = Path(server.root)
    version = "1.1.0"
    name = f"case-{case.replace(' ', '-')}.raucb"
    if case == "other CA":
        build_bundle(root / name, version, other_keys.cert, other_keys.key)
    elif case == "unsigned":
        unsigned_bundle(root / name, version)
    elif case == "wrong compatible":
        build_bundle(root / name, version, fleet_keys.cert, fleet_keys.key, compatible="other-product")
    else:
        name = "rapat-1.1.0.raucb"
    effect = _fetch_effect(root / name, server.url(name), version)
    if case == "wrong version":
        effect = _fetch_effect(root / name, server.url(name), "1.2.0")
    if case == "wrong sha256":
        effect = _fetch_effect(root / name, server.url(name), version, sha256="0" * 64)
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.fetch(effect)
    done = events.wait(io.UpdateStepDone)
    assert done.ok is False and words in done.detail, done
    assert device.slot_version("B") == "" and device.firmware_boots(tryboot_flag=True) == "A"
    assert not list(updater.dir.glob("*.raucb"))  # a refused bundle is not kept


def test_a_cut_download_resumes_where_it_stopped(device, device_config, server, bundles, events) -> None:  # noqa: ANN001
    bundle = bundles / "rapat-1.1.0.raucb"
    data = bundle.read_bytes()
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.dir.mkdir(parents=True)
    (updater.dir / "rapat-1.1.0.raucb.part").write_bytes(data[: len(data) // 2])  # the power went here
    updater.fetch(_fetch_effect(bundle, server.url("rapat-1.1.0.raucb"), "1.1.0"))
    assert events.wait(io.UpdateStepDone).ok
    asked = [line for line in server.requests() if "rapat-1.1.0.raucb" in line]
    assert len(asked) == 1 and " 206 " in asked[0], asked  # only the rest was fetched


@pytest.mark.parametrize(("size_change", "words"), [(-1000, "more than the announced"), (1000, "ended at")])
def test_a_bundle_of_another_size_than_announced_is_refused(device, device_config, server, bundles, events,
                                                           size_change: int, words: str) -> None:  # noqa: ANN001
    bundle = bundles / "rapat-1.1.0.raucb"
    effect = _fetch_effect(bundle, server.url("rapat-1.1.0.raucb"), "1.1.0")
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.fetch(io.FetchUpdate(effect.version, effect.url, effect.sha256, effect.size + size_change))
    done = events.wait(io.UpdateStepDone)
    assert done.ok is False and words in done.detail, done


def test_rauc_itself_refuses_a_foreign_bundle_at_install(device, device_config, server, fleet_keys, events) -> None:  # noqa: ANN001
    """The adapter's own compatible check aside, RAUC's install refuses it too, and says why."""
    build_bundle(Path(server.root) / "foreign.raucb", "1.1.0", fleet_keys.cert, fleet_keys.key, compatible="other")
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.dir.mkdir(parents=True)
    (Path(server.root) / "foreign.raucb").replace(updater.bundle_path("1.1.0"))
    updater.install(io.InstallUpdate("1.1.0"))
    done = events.wait(io.UpdateStepDone)
    assert done.ok is False and "Compatible mismatch" in done.detail, done
    assert device.slot_version("B") == "" and device.firmware_boots(tryboot_flag=True) == "A"


def test_a_missing_bundle_names_the_server_answer(device, device_config, server, events) -> None:  # noqa: ANN001
    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.fetch(io.FetchUpdate("1.1.0", server.url("nope.raucb"), "0" * 64, 1000))
    done = events.wait(io.UpdateStepDone)
    assert done.ok is False and "404" in done.detail, done


def test_a_bundle_that_would_fill_the_data_partition_is_refused_before_any_byte(device, device_config, server, bundles,
                                                                                events) -> None:  # noqa: ANN001
    """The ledger and the replay journal share the partition: a download never fills it."""
    import os

    updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
    updater.dir.mkdir(parents=True)
    stats = os.statvfs(updater.dir)
    free = stats.f_bavail * stats.f_frsize
    effect = _fetch_effect(bundles / "rapat-1.1.0.raucb", server.url("rapat-1.1.0.raucb"), "1.1.0")
    updater.fetch(io.FetchUpdate(effect.version, effect.url, effect.sha256, free))  # fits, but leaves no reserve
    done = events.wait(io.UpdateStepDone)
    assert done.ok is False and "not enough space on the data partition" in done.detail, done
    assert "MiB stay free" in done.detail
    assert [line for line in server.requests() if "rapat-1.1.0.raucb" in line] == []
    assert list(updater.dir.iterdir()) == []


def test_a_delta_bundle_fetches_only_the_chunks_the_running_slot_lacks(device, device_config, fleet_keys, events,
                                                                       tmp_path) -> None:  # noqa: ANN001
    """casync: the bundle holds the root's chunk index; RAUC fetches from the store beside its URL what
    slot A (the seed) does not have. Installed from the downloaded copy, RAUC would look for a local store."""
    shared = {"/usr/share/filler.txt": random.Random(12).randbytes(3_000_000).hex()}  # 6 MB in both releases
    ext4_image(device.dir / "rootfs.A.img", {"/etc/rapat-version": "1.0.0\n", **shared})
    release = ext4_image(tmp_path / "release.ext4", {"/etc/rapat-version": "1.2.0\n", **shared})
    served = tmp_path / "served"
    served.mkdir()
    bundle, store = build_delta_bundle(served / "rapat-1.2.0.raucb", release, "1.2.0", fleet_keys.cert, fleet_keys.key)
    with BundleServer(served) as server:
        updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
        updater.fetch(_fetch_effect(bundle, server.url(bundle.name), "1.2.0"))
        done = events.wait(io.UpdateStepDone)
        assert (done.step, done.ok) == ("download", True) and "delta" in done.detail, done
        assert updater.origin_path("1.2.0").read_text().strip() == server.url(bundle.name)
        updater.install(io.InstallUpdate("1.2.0"))
        done = events.wait(io.UpdateStepDone, timeout=120)
        assert (done.step, done.ok) == ("install", True), done
        sent = server.sent()
    assert device.slot_version("B") == "1.2.0" and device.slot_version("A") == "1.0.0"
    chunks = [request for request, _ in sent if ".castr/" in request]
    fetched = sum(size for _, size in sent)
    store_bytes = sum(path.stat().st_size for path in store.rglob("*.cacnk"))
    print(f"delta install: {fetched} bytes sent in {len(sent)} requests; the store holds {store_bytes} bytes")
    assert chunks, "no chunk came from the store"
    assert fetched < store_bytes / 4, f"{fetched} bytes sent of a {store_bytes}-byte store: the seed was not used"
    assert not updater.origin_path("1.2.0").exists() and not updater.bundle_path("1.2.0").exists()


def test_a_delta_bundle_swapped_on_the_server_after_the_check_is_refused(device, device_config, fleet_keys, events,
                                                                        tmp_path) -> None:  # noqa: ANN001
    """RAUC downloads a delta bundle itself: an older signed release put in its place after the site's
    check (plain http) is installed by RAUC but caught before any trial boot."""
    served = tmp_path / "served"
    served.mkdir()
    old = ext4_image(tmp_path / "old.ext4", {"/etc/rapat-version": "1.0.5\n"})
    new = ext4_image(tmp_path / "new.ext4", {"/etc/rapat-version": "1.2.0\n"})
    build_delta_bundle(tmp_path / "rapat-1.0.5.raucb", old, "1.0.5", fleet_keys.cert, fleet_keys.key)
    bundle, _ = build_delta_bundle(served / "rapat-1.2.0.raucb", new, "1.2.0", fleet_keys.cert, fleet_keys.key)
    with BundleServer(served) as server:
        updater = Updater(device_config, events, version="1.0.0", trial=lambda: False)
        updater.fetch(_fetch_effect(bundle, server.url(bundle.name), "1.2.0"))
        assert events.wait(io.UpdateStepDone).ok
        (tmp_path / "rapat-1.0.5.raucb").replace(bundle)  # the older release, under the checked name
        (tmp_path / "rapat-1.0.5.castr").rename(served / "rapat-1.0.5.castr")
        for chunk_dir in (served / "rapat-1.0.5.castr").iterdir():  # its chunks where RAUC will look
            shutil.copytree(chunk_dir, served / "rapat-1.2.0.castr" / chunk_dir.name, dirs_exist_ok=True)
        updater.install(io.InstallUpdate("1.2.0"))
        done = events.wait(io.UpdateStepDone, timeout=120)
    assert (done.step, done.ok) == ("install", False) and "not the '1.2.0' checked" in done.detail, done
    assert device.slot_version("B") == "1.0.5"  # RAUC wrote it ...
    status = json.loads(device.rauc("status", "--detailed", "--output-format=json").stdout)
    slots = {name: slot for entry in status["slots"] for name, slot in entry.items()}
    assert slots["rootfs.1"]["boot_status"] == "bad"  # ... and it is never tried
