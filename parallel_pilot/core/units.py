"""Numbers for people: byte sizes in binary units, shared by the CLI and the dashboard."""

from __future__ import annotations


def human_bytes(n: int | None, missing: str = "-") -> str:
    """``1536`` -> ``"1.5 KiB"``; ``missing`` when the size is unknown."""
    if n is None:
        return missing
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
