"""The password hasher: argon2id, salted, verified without raising."""

from __future__ import annotations

import os
import subprocess
import sys

from argon2 import PasswordHasher

from parallel_pilot.coordinator.passwords import (
    hash_password,
    needs_rehash,
    new_password,
    verify_password,
)


def test_hash_verifies_only_the_right_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horsE")
    assert not needs_rehash(stored)


def test_hashes_are_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_missing_or_malformed_hash_never_verifies() -> None:
    assert not verify_password(None, "x")
    assert not verify_password("", "x")
    assert not verify_password("not-a-hash", "x")


def test_generated_passwords_are_random_and_long() -> None:
    first, second = new_password(), new_password()
    assert first != second and len(first) >= 20


def test_a_farm_hashes_with_the_recommended_parameters() -> None:
    """Without the suite's variable (tests/conftest.py sets it) the hasher is argon2's
    recommended one, not the cheap one the tests use."""
    env = {k: v for k, v in os.environ.items() if k != "PILOT_INSECURE_FAST_PASSWORD_HASH"}
    probe = ("from parallel_pilot.coordinator import passwords as p; h = p._hasher;"
             "print(h.time_cost, h.memory_cost, h.parallelism, p.INSECURE_FAST_HASH)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    default = PasswordHasher()
    assert out == [str(default.time_cost), str(default.memory_cost), str(default.parallelism),
                   "False"]
    assert default.memory_cost >= 65536  # 64 MiB: what the library recommends today
