"""Image sizes and counts: the standard sets and the parsers for `--sizes` and `--batch-sizes`."""

from __future__ import annotations

from diffmf_cli.errors import UsageError

#: The standard sizes (height, width): a small square, VGA, and a 1.3-megapixel frame.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (480, 640), (1024, 1280))
#: `--sweep`: squares from 128² to 2048² (pixel counts spread over a factor of 256).
SWEEP_SIZES: tuple[tuple[int, int], ...] = ((128, 128), (256, 256), (512, 512), (1024, 1024), (2048, 2048))
#: `--compare-scan` sizes when none are given; the reference scan is a Python loop over the sequence.
COMPARE_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (128, 128))


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` (height x width) or ``"256"`` (a square) -> (height, width)."""
    key = text.strip().lower().replace("×", "x").replace("*", "x")
    parts = key.split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"size {text!r}: expected HxW (e.g. 480x640) or N for NxN") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise UsageError(f"size {text!r}: expected HxW with positive integers (e.g. 480x640)")
    return values[0], values[1]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Comma-separated sizes, e.g. ``"256,480x640"``."""
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise UsageError(f"--sizes {text!r}: no size given")
    return sizes


def parse_counts(text: str, option: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``--batch-sizes 1,4,16``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} {text!r}: expected positive integers")
    return values
