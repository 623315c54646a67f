"""The metric registry: one entry per metric with its direction, and `compute_metrics` over a triple."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from diffmf_cli.errors import UsageError
from diffmf_cli.metrics import gradient, statistics, structural, vif
from diffmf_cli.metrics.convention import REFERENCE, Convention


class Triple:
    """The arrays of one evaluation, float64 (H, W) on 0..255, and what several metrics share (computed once)."""

    __slots__ = ("F", "A", "B", "_moments")

    def __init__(self, F: np.ndarray, A: np.ndarray, B: np.ndarray):
        self.F, self.A, self.B = F, A, B
        self._moments: statistics.Moments | None = None

    @property
    def moments(self) -> statistics.Moments:
        if self._moments is None:
            self._moments = statistics.Moments.of(self.F, self.A, self.B)
        return self._moments


@dataclass(frozen=True)
class MetricSpec:
    """`fn(triple, convention) -> float`; `min_side(convention)` the smallest image side it is defined for."""

    name: str
    higher_is_better: bool
    description: str
    fn: Callable[[Triple, Convention], float]
    min_side: Callable[[Convention], int] = lambda conv: 1

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def __call__(self, F: np.ndarray, A: np.ndarray, B: np.ndarray, convention: Convention = REFERENCE) -> float:
        """The metric of one triple (no size check; see `compute_metrics`)."""
        return float(self.fn(Triple(*(np.asarray(x, dtype=np.float64) for x in (F, A, B))), convention))


def _spec(name, up, description, fn, min_side=lambda conv: 1) -> MetricSpec:
    return MetricSpec(name, up, description, fn, min_side)


METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in [
        _spec("EN", True, "entropy of F (bits)", lambda t, c: statistics.entropy(t.F)),
        _spec("SD", True, "standard deviation of F", lambda t, c: statistics.std_dev(t.F)),
        _spec("SF", True, "spatial frequency of F", lambda t, c: statistics.spatial_frequency(t.F),
              lambda c: 2),
        _spec("AG", True, "average gradient of F",
              lambda t, c: statistics.average_gradient(t.F, matlab=c.ag_matlab), lambda c: 2),
        _spec("MI", True, "mutual information MI(F,A) + MI(F,B)",
              lambda t, c: statistics.mutual_information(t.F, t.A, t.B, bits=c.mi_bits)),
        _spec("SCD", True, "sum of the correlations of differences",
              lambda t, c: statistics.scd(t.F, t.A, t.B, t.moments)),
        _spec("VIF", True, "visual information fidelity VIF(A,F) + VIF(B,F)",
              lambda t, c: vif.vif_fused(t.F, t.A, t.B), lambda c: vif.MIN_SIDE),
        _spec("Qabf", True, "edge information transferred (Xydeas-Petrovic)",
              lambda t, c: gradient.qabf(t.F, t.A, t.B)),
        _spec("SSIM", True, "structural similarity SSIM(F,A) + SSIM(F,B)",
              lambda t, c: structural.ssim_fused(t.F, t.A, t.B, c.ssim_data_range, c.ssim_sum),
              lambda c: structural.SSIM_WIN),
        _spec("CC", True, "correlation coefficient, mean of r(F,A), r(F,B)",
              lambda t, c: statistics.correlation_coefficient(t.F, t.A, t.B, t.moments)),
        _spec("MSE", False, "mean squared error to the sources",
              lambda t, c: statistics.mse(t.F, t.A, t.B, t.moments)),
        _spec("PSNR", True, "peak signal-to-noise ratio",
              lambda t, c: statistics.psnr(t.F, t.A, t.B, peak_255=c.psnr_peak_255, moments=t.moments)),
        _spec("Nabf", False, "fusion artifacts (Shreyamsha Kumar)", lambda t, c: gradient.nabf(t.F, t.A, t.B),
              lambda c: 2),
        _spec("MS-SSIM", True, "multi-scale structural similarity",
              lambda t, c: structural.ms_ssim_standard(t.F, t.A, t.B) if c.msssim_standard
              else structural.mef_ssim(t.F, t.A, t.B),
              lambda c: 161 if c.msssim_standard else 4 * structural.MEF_WIN),
    ]
}

METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
_BY_LOWER = {name.lower(): name for name in METRICS} | {"msssim": "MS-SSIM", "ms_ssim": "MS-SSIM", "vif": "VIF"}


def parse_metric_names(text: str | Iterable[str] | None) -> list[str]:
    """``"EN,SSIM,ms-ssim"`` (any case; ``all``) -> canonical names in registry order; UsageError if unknown."""
    if text is None:
        return list(METRIC_NAMES)
    words = text.split(",") if isinstance(text, str) else list(text)
    chosen: set[str] = set()
    for word in (w.strip() for w in words):
        if not word:
            continue
        if word.lower() == "all":
            chosen.update(METRIC_NAMES)
            continue
        name = _BY_LOWER.get(word.lower())
        if name is None:
            raise UsageError(f"--metrics: unknown metric {word!r} (known: {', '.join(METRIC_NAMES)})")
        chosen.add(name)
    if not chosen:
        raise UsageError("--metrics: no metric named")
    return [n for n in METRIC_NAMES if n in chosen]


def compute_metrics(
    F: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    names: Iterable[str] = METRIC_NAMES,
    convention: Convention = REFERENCE,
) -> tuple[dict[str, float], list[str]]:
    """Score one fused image F against its sources A, B.

    F, A, B: (H, W) arrays of the same shape on the 0..255 scale (converted to float64 here).
    Returns ``(values, warnings)``: values per metric name (NaN where undefined), and one warning per metric
    that the image is too small for. Raises ValueError for arrays that are not three equal 2-D shapes
    (callers check user files first, see `diffmf_cli.metrics.evaluation`).
    """
    F, A, B = (np.asarray(x, dtype=np.float64) for x in (F, A, B))
    if F.ndim != 2 or F.shape != A.shape or F.shape != B.shape:
        raise ValueError(f"expected three (H, W) arrays of one shape, got {F.shape}, {A.shape}, {B.shape}")
    side = min(F.shape)
    triple = Triple(F, A, B)
    values: dict[str, float] = {}
    warnings: list[str] = []
    for name in names:
        spec = METRICS[name]
        need = spec.min_side(convention)
        if side < need:
            values[name] = math.nan
            warnings.append(f"{name} needs at least {need} px per side (image is {F.shape[1]}x{F.shape[0]})")
            continue
        with np.errstate(all="ignore"):
            values[name] = float(spec.fn(triple, convention))
    return values, warnings
