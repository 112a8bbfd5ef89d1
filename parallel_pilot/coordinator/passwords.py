"""Password hashing (argon2id) and random first-start passwords; only hashes are stored."""

from __future__ import annotations

import os
import secrets

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

GENERATED_PASSWORD_BYTES = 18  # random bytes of a generated password (24 characters)

# The test suite sets this: argon2id at its cheapest parameters, so that the thousand
# coordinators and logins it makes do not spend 0.15-0.3 s each on a hash (Django's test
# settings swap in a fast hasher for the same reason). Hashes record their parameters, so
# either kind verifies under the other. Never set it on a farm: the coordinator warns.
INSECURE_FAST_HASH_ENV = "PILOT_INSECURE_FAST_PASSWORD_HASH"
INSECURE_FAST_HASH = os.environ.get(INSECURE_FAST_HASH_ENV, "") == "1"

# argon2id with the library's current recommended parameters
_hasher = PasswordHasher.from_parameters(profiles.CHEAPEST) if INSECURE_FAST_HASH \
    else PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; False for a missing or malformed hash."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than the current ones."""
    return _hasher.check_needs_rehash(password_hash)


def new_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
