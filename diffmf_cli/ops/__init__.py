"""Maths that knows nothing of nn.Module: Mamba's selective scan on every device.

`selective_scan` has mamba-ssm's `selective_scan_fn` argument layout; `selective_scan_ref` is the plain
PyTorch specification. See `selective_scan.py` (the module) for how a path is chosen.
"""

from diffmf_cli.ops.reference import selective_scan_ref
from diffmf_cli.ops.selective_scan import (
    available_scan_paths,
    last_scan_path,
    resolve_scan_path,
    selective_scan,
    use_scan_path,
)

__all__ = [
    "available_scan_paths",
    "last_scan_path",
    "resolve_scan_path",
    "selective_scan",
    "selective_scan_ref",
    "use_scan_path",
]
