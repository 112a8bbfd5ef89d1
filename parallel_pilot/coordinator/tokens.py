"""Random tokens and their stored form (only a hash is ever stored)."""

from __future__ import annotations

import hashlib
import secrets

USER_TOKEN_PREFIX = "pp_u_"  # API token of a user
WORKER_TOKEN_PREFIX = "pp_w_"  # token a registered worker holds
JOIN_TOKEN_PREFIX = "pp_j_"  # token an admin hands out so workers can join
TOKEN_BYTES = 32  # random bytes per token


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    # tokens carry 256 random bits, so a fast hash is enough (no dictionary to attack)
    return hashlib.sha256(token.encode()).hexdigest()
