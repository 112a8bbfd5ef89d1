"""The password hasher: argon2id, salted, verified without raising."""

from __future__ import annotations

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
