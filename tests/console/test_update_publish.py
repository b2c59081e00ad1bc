"""`update keys` and `update publish`: the fleet's update signing keys and releases, checked with real RAUC."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.console.update_keys import issued_by
from tests.console.conftest import Console
from tests.console.update_helpers import build_bundle, flip_byte, unsigned_bundle

URL = "https://media.banyuwangikab.go.id/releases/{}.raucb"


def keys(console: Console) -> dict[str, Path]:
    update = console.home / "update"
    return {"ca": update / "ca.pem", "ca_key": update / "ca-key.pem", "cert": update / "signing.pem",
            "key": update / "signing-key.pem"}


@pytest.fixture
def signed(console: Console, tmp_path: Path):  # noqa: ANN201
    """A console with update keys, and a function building bundles signed with them."""
    console.ok("update", "keys")
    files = keys(console)

    def build(name: str, version: str, fmt: str = "verity", **kwargs: object) -> Path:
        return build_bundle(tmp_path / name, files["cert"], files["key"], version, fmt, **kwargs)

    return build


def releases(console: Console) -> dict[str, dict]:
    return {release["version"]: release for release in console.ok("update", "releases", "--json").json}


def test_update_keys_made_once_with_code_signing_and_renewed_under_the_same_ca(console: Console, tmp_path: Path) -> None:
    first = console.ok("update", "keys")
    files = keys(console)
    assert f"update CA:       {files['ca']}" in first.out and "RAUC keyring" in first.out
    assert stat.S_IMODE(files["ca_key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["key"].stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(files["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert not (console.home / "console-key.pem").exists(), "the update keys are not the command key"

    before = {name: path.read_bytes() for name, path in files.items()}
    again = console.ok("update", "keys", "--json").json
    assert again["action"] == "unchanged" and again["ca"] == str(files["ca"])
    assert {name: path.read_bytes() for name, path in files.items()} == before

    renewed = console.ok("update", "keys", "--renew-signing", "--json").json
    assert renewed["action"] == "renewed signing certificate"
    assert files["ca"].read_bytes() == before["ca"] and files["ca_key"].read_bytes() == before["ca_key"]
    assert files["cert"].read_bytes() != before["cert"] and files["key"].read_bytes() != before["key"]
    assert issued_by(files["cert"].read_bytes(), files["ca"].read_bytes())
    # Real RAUC (check-purpose=codesign, as on the devices) accepts what the renewed certificate signs.
    bundle = build_bundle(tmp_path / "b.raucb", files["cert"], files["key"], "1.3.0")
    assert console.run("update", "publish", str(bundle), "--url", URL.format("1.3.0")).code == 0


def test_publish_records_verity_and_plain_bundles(console: Console, signed) -> None:  # noqa: ANN001
    verity, plain = signed("a.raucb", "1.3.0", "verity"), signed("b.raucb", "1.4.0-rc1", "plain")
    out = console.ok("update", "publish", str(verity), "--url", URL.format("1.3.0")).out
    assert out.startswith("published: 1.3.0 (rapat-appliance-rpi, verity bundle")
    console.ok("update", "publish", str(plain), "--url", URL.format("1.4.0-rc1"))
    found = releases(console)
    for bundle, version, fmt in ((verity, "1.3.0", "verity"), (plain, "1.4.0-rc1", "plain")):
        assert found[version]["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
        assert found[version]["size"] == bundle.stat().st_size
        assert (found[version]["format"], found[version]["compatible"]) == (fmt, "rapat-appliance-rpi")
        assert found[version]["url"] == URL.format(version)
        assert "update signing" in found[version]["signer"]
    assert console.ok("update", "publish", str(verity), "--url", URL.format("1.3.0"), "--json").json["action"] == "unchanged"
    moved = console.ok("update", "publish", str(verity), "--url", "http://10.0.0.5/1.3.0.raucb", "--json").json
    assert moved["action"] == "url changed" and releases(console)["1.3.0"]["url"] == "http://10.0.0.5/1.3.0.raucb"


def test_publish_refuses_what_a_device_would_refuse(console: Console, signed, tmp_path: Path) -> None:  # noqa: ANN001
    good = signed("good.raucb", "1.3.0")
    console.ok("update", "publish", str(good), "--url", URL.format("1.3.0"))

    def refused(bundle: Path, words: str, code: int = 1, url: str = URL.format("x")) -> None:
        result = console.run("update", "publish", str(bundle), "--url", url)
        assert result.code == code, result.err
        assert words in result.err, result.err

    refused(unsigned_bundle(tmp_path / "unsigned.raucb"), "the bundle is not signed")
    other = Console(tmp_path / "other-home")
    other.ok("update", "keys")
    elsewhere = build_bundle(tmp_path / "other.raucb", keys(other)["cert"], keys(other)["key"], "1.5.0")
    refused(elsewhere, "not from this console's update CA")
    plain = signed("plain.raucb", "1.5.0", "plain")
    flip_byte(plain, 3000)
    refused(plain, "corrupted")
    verity = signed("verity.raucb", "1.5.0")
    flip_byte(verity, 3000)  # RAUC's `info` only checks the signed manifest of a verity bundle
    refused(verity, "does not match the signed verity hash")
    truncated = tmp_path / "truncated.raucb"
    truncated.write_bytes(good.read_bytes()[:-100])
    refused(truncated, "corrupted")
    refused(signed("again.raucb", "1.3.0"), "1.3.0 is already published with another bundle")
    refused(signed("foreign.raucb", "1.6.0", compatible="someone-elses-board"), "every device would refuse it")
    refused(good, "--url", code=2, url="ftp://media.banyuwangikab.go.id/x.raucb")
    refused(good, "--url", code=2, url="https://media.banyuwangikab.go.id/a b.raucb")
    refused(tmp_path / "missing.raucb", "no such file", code=2)
    assert list(releases(console)) == ["1.3.0"], "nothing refused was recorded"
    assert releases(console)["1.3.0"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()


def test_publish_needs_the_update_keys(console: Console, tmp_path: Path) -> None:
    other = Console(tmp_path / "other-home")
    other.ok("update", "keys")
    bundle = build_bundle(tmp_path / "b.raucb", keys(other)["cert"], keys(other)["key"], "1.3.0")
    result = console.run("update", "publish", str(bundle), "--url", URL.format("1.3.0"))
    assert result.code == 1 and "run `appliance-console update keys` first" in result.err


def test_a_delta_bundle_is_published_only_with_its_chunk_store_beside_it(console: Console, tmp_path: Path) -> None:
    from appliance_dev.rauc_rig import build_delta_bundle, ext4_image

    console.ok("update", "keys")
    files = keys(console)
    image = ext4_image(tmp_path / "root.ext4", {"/etc/rapat-version": "1.5.0\n"})
    bundle, store = build_delta_bundle(tmp_path / "rapat-1.5.0.raucb", image, "1.5.0", files["cert"], files["key"])
    moved = tmp_path / "elsewhere"
    store.rename(moved)
    refused = console.run("update", "publish", str(bundle), "--url", URL.format("rapat-1.5.0"))
    assert refused.code == 1 and "rapat-1.5.0.castr/ is not beside it" in refused.err, refused.err
    moved.rename(store)
    out = console.ok("update", "publish", str(bundle), "--url", URL.format("rapat-1.5.0")).out
    assert "a delta bundle" in out and "https://media.banyuwangikab.go.id/releases/rapat-1.5.0.castr/" in out, out
    assert releases(console)["1.5.0"]["format"] == "plain delta"
