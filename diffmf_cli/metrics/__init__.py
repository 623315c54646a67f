"""Fusion-quality metrics (docs/metrics.md): one function per metric family, a registry with
`higher_is_better`, named conventions, and folder evaluation (`evaluation`)."""

from diffmf_cli.metrics.convention import PRESETS, REFERENCE, STANDARD, VARIANTS, Convention, parse_convention
from diffmf_cli.metrics.registry import METRIC_NAMES, METRICS, MetricSpec, compute_metrics, parse_metric_names

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "PRESETS",
    "REFERENCE",
    "STANDARD",
    "VARIANTS",
    "Convention",
    "MetricSpec",
    "compute_metrics",
    "parse_convention",
    "parse_metric_names",
]
