"""diffmf: DIFF-MF multi-modal image fusion and fusion-quality metrics."""

__version__ = "0.1.0"
