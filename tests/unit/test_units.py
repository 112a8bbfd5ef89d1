import pytest

from parallel_pilot.core.units import human_bytes


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
    (int(7.8 * 1024**2), "7.8 MiB"), (3 * 1024**4, "3.0 TiB"), (5 * 1024**5, "5120.0 TiB"),
])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def test_missing_size_placeholder() -> None:
    assert human_bytes(None, missing="–") == "–"
