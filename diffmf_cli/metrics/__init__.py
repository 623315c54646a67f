"""Fusion-quality metrics: one function per metric family, a registry with `higher_is_better`, named
conventions (`convention`, which documents each), folder evaluation (`evaluation`) and the HTML report of
`diffmf evaluate --report` (`report`)."""

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
