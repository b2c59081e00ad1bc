"""Mosquitto's password-file hash (`$7$`, PBKDF2-SHA512), so the console needs no broker installed.

Format checked against mosquitto_passwd 2.0.11: `user:$7$<iterations>$<b64 salt>$<b64 hash>`,
12-byte salt, 101 iterations, 64-byte digest, standard base64 with padding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 101
SALT_BYTES = 12


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected, base64.b64decode(digest))


def password_file(credentials: dict[str, str]) -> str:
    """username -> hash, as mosquitto's password_file."""
    return "".join(f"{user}:{hashed}\n" for user, hashed in sorted(credentials.items()))
