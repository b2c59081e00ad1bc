"""The fleet's update signing keys (`update keys`): an update CA and a code-signing certificate for RAUC.

Separate from the command key (`console-key.pem`, Ed25519, signs MQTT commands) and from the broker's
CA (`ca/`, TLS): a leaked broker key must not let anyone sign software, and the other way round.

- `update/ca.pem`: the update CA (self-signed, ECDSA P-256, 20 years). The image builder installs it as
  the device's RAUC keyring; a device installs only bundles signed under it.
- `update/ca-key.pem` (0600): its key, needed only to issue the next signing certificate.
- `update/signing.pem`, `update/signing-key.pem` (0600): what `rauc bundle --cert --key` signs with
  (ECDSA P-256, 10 years, at most the CA's life). extendedKeyUsage codeSigning: the devices' RAUC
  checks `check-purpose=codesign` (RAUC 1.8 refuses the certificate without it, and with the default
  purpose refuses one that has it).
"""

from __future__ import annotations

import argparse
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.console.context import Context
from appliance.console.errors import Refused
from appliance.console.home import Home, atomic_write_many
from appliance.console.output import print_json
from appliance.console.pki import _key_pem, _now, make_ca

CA_YEARS = 20
SIGNING_YEARS = 10
ORGANIZATION = "rapat-appliance fleet"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def make_update_ca() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new self-signed update CA: it only certifies (no digitalSignature)."""
    return make_ca(name=_name("rapat-appliance update CA"), digital_signature=False)


def make_signing_cert(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a code-signing certificate issued by the update CA."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    end = min(start + dt.timedelta(days=365 * SIGNING_YEARS), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"rapat-appliance update signing {start:%Y-%m-%d}"))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Whether `cert_pem` carries a valid signature of the CA in `ca_cert_pem`."""
    cert, ca = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def describe(home: Home) -> dict[str, object]:
    """Where the files are and until when the certificates are valid."""
    def until(path: object) -> str | None:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return None
        return cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"ca": str(home.update_ca_cert), "ca_key": str(home.update_ca_key),
            "signing_cert": str(home.update_signing_cert), "signing_key": str(home.update_signing_key),
            "ca_valid_until": until(home.update_ca_cert), "signing_valid_until": until(home.update_signing_cert)}


def require_update_ca(home: Home) -> bytes:
    try:
        return home.update_ca_cert.read_bytes()
    except FileNotFoundError:
        raise Refused(f"no update CA in {home.root}: run `appliance-console update keys` first") from None


def cmd_update_keys(ctx: Context, args: argparse.Namespace) -> int:
    home = ctx.home
    home.ensure()
    have = {path: path.exists() for path in (home.update_ca_cert, home.update_ca_key,
                                             home.update_signing_cert, home.update_signing_key)}
    files: dict = {}
    if not have[home.update_ca_cert]:
        if any(have.values()):
            raise Refused(f"{home.update_ca_cert} is missing but other update keys are in {home.update_ca_cert.parent}: "
                          "restore it from a backup (a new CA would not be trusted by any device)")
        ca_pem, ca_key_pem = make_update_ca()
        files[home.update_ca_cert] = (ca_pem, 0o644)
        files[home.update_ca_key] = (ca_key_pem, 0o600)
        action = "created"
    else:
        ca_pem = home.update_ca_cert.read_bytes()
        ca_key_pem = home.update_ca_key.read_bytes() if have[home.update_ca_key] else b""
        action = "unchanged"
    signing_there = have[home.update_signing_cert] and have[home.update_signing_key]
    if args.renew_signing or not signing_there:
        if not ca_key_pem:
            raise Refused(f"cannot issue a signing certificate: the update CA's key {home.update_ca_key} is missing")
        cert_pem, key_pem = make_signing_cert(ca_pem, ca_key_pem)
        files[home.update_signing_cert] = (cert_pem, 0o644)
        files[home.update_signing_key] = (key_pem, 0o600)
        if action == "unchanged":
            action = "renewed signing certificate" if signing_there else "issued signing certificate"
    elif not issued_by(home.update_signing_cert.read_bytes(), ca_pem):
        raise Refused(f"{home.update_signing_cert} was not issued by {home.update_ca_cert}: devices would refuse "
                      "every bundle it signs; run `update keys --renew-signing`")
    if files:
        atomic_write_many(files)
    info = {"action": action, **describe(home)}
    if ctx.json:
        print_json(info)
        return 0
    print(f"update keys {action}" + ("" if files else " (they exist already; --renew-signing issues a new "
                                                       "signing certificate)"))
    print(f"update CA:       {info['ca']} (valid until {info['ca_valid_until']})")
    print("                 the image builder installs this file as the devices' RAUC keyring")
    print(f"signing cert:    {info['signing_cert']} (valid until {info['signing_valid_until']})")
    print(f"signing key:     {info['signing_key']}")
    print(f"sign a bundle:   rauc bundle --cert={info['signing_cert']} --key={info['signing_key']} DIR BUNDLE.raucb")
    return 0
