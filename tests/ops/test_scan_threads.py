"""The CPU scan must not change torch's thread count (numba's OpenMP start-up resets the shared count)."""

import subprocess
import sys
import textwrap


def test_scan_keeps_torch_thread_count():
    # A fresh process: the reset happens only on numba's first parallel call.
    code = textwrap.dedent("""
        import torch
        from diffmf_cli.ops import selective_scan, use_scan_path
        torch.set_num_threads(1)
        u = torch.randn(1, 4, 32, requires_grad=True)
        with use_scan_path("cpu"):
            y = selective_scan(u, torch.rand(1, 4, 32), -torch.rand(4, 2), torch.randn(1, 2, 32),
                               torch.randn(1, 2, 32))
            y.sum().backward()
        print(torch.get_num_threads())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"NUMBA_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", **_python_env()})
    assert out.stdout.strip() == "1"


def _python_env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
