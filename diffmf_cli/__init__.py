"""diffmf: DIFF-MF multi-modal image fusion and fusion-quality metrics.

``from diffmf_cli import Fuser`` is the Python API (`diffmf_cli.api`); it is imported on first use, so that
``import diffmf_cli`` (and the CLI's start-up) does not pay for torch.
"""

__version__ = "0.1.0"
__all__ = ["Fuser", "__version__"]


def __getattr__(name: str):
    if name == "Fuser":
        from diffmf_cli.api import Fuser

        return Fuser
    raise AttributeError(f"module 'diffmf_cli' has no attribute {name!r}")
