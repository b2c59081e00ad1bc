"""Ed25519 command signatures over the contract's canonical JSON form."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def canonical_bytes(command: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: the command without `sig`, keys sorted, no spaces."""
    unsigned = {key: value for key, value in command.items() if key != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_command(command: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of `command` with its `sig` set."""
    signature = private_key.sign(canonical_bytes(command))
    return {**command, "sig": base64.b64encode(signature).decode("ascii")}


def verify_command(command: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    sig = command.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        signature = base64.b64decode(sig, validate=True)
        public_key.verify(signature, canonical_bytes(command))
    # ValueError includes UnicodeEncodeError (a lone surrogate, which no console can have signed);
    # RecursionError: a document too deep to re-encode (check_command refuses those before this).
    except (binascii.Error, ValueError, InvalidSignature, RecursionError):
        return False
    return True


def public_key_from_base64(text: str) -> Ed25519PublicKey:
    """Raise ValueError with a readable reason when `text` is not a raw 32-byte key in base64."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not valid base64 ({exc})") from None
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes, an Ed25519 public key has 32")
    return Ed25519PublicKey.from_public_bytes(raw)


# `serialization` pulls in RSA, DSA, EC and SSH support (~3 MB resident): only the console needs it.
def public_key_to_base64(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the key is not an Ed25519 private key")
    return key
