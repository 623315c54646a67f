"""Results as files: the sweep's plot and the CSV rows of any mode."""

from __future__ import annotations

from pathlib import Path

from diffmf_cli.benchmark.runs import row_fields
from diffmf_cli.errors import UsageError


def plot_sweep(sweep: dict, path: Path, title: str) -> Path:
    """A PNG of time per megapixel against image size (megapixels, log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in sweep["rows"] if r["error"] is None), key=lambda r: r["height"] * r["width"])
    if not ok:
        raise UsageError("--sweep: no size could be measured, nothing to plot")
    mp = [r["height"] * r["width"] / 1e6 for r in ok]
    per_mp = [r["ms_per_megapixel"] / 1e3 for r in ok]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(mp, per_mp, marker="o")
    for x, y, r in zip(mp, per_mp, ok):
        ax.annotate(r["size"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("image size (megapixels)")
    ax.set_ylabel("seconds per megapixel")
    exponent = sweep.get("exponent")
    ax.set_title(title + (f"  (time ∝ pixels^{exponent:.2f})" if exponent is not None else ""), fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path


def csv_rows(result: dict) -> tuple[list[str], list[dict]]:
    """The rows `--format csv` writes for a result of any mode, with machine columns so each line stands
    alone in a file that collects results over time."""
    machine = result["machine"]
    extra = {k: machine.get(k) for k in ("timestamp", "cpu_model", "gpu_name", "torch_version", "git_commit")}
    extra["model"] = result["model"]["source"]
    if result.get("compare") is not None:
        rows = result["compare"]["rows"]
    elif result.get("pipeline") is not None:
        rows = [{k: v for k, v in result["pipeline"].items() if k != "errors"}]
    else:
        rows = result["rows"]
    fields = list(rows[0]) if rows else row_fields()
    return fields + list(extra), [{**row, **extra} for row in rows]
