"""The `diffmf evaluate --report DIR` output: a self-contained HTML page, a PNG contact sheet, bar charts.

People judge fusion by looking as much as by numbers, so the page shows, per image, the two sources and each
method's fused result side by side with its metric values, and one bar chart per metric across methods.
Everything the page shows is embedded (base64 images), so the file can be mailed or archived alone.
Charts and the contact sheet are drawn with Matplotlib's Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from diffmf_cli.errors import InputError
from diffmf_cli.io.files import atomic_write_bytes
from diffmf_cli.metrics.evaluation import format_value, same_images
from diffmf_cli.io.images import read_image

THUMB_SIDE = 256  # longest side of the images on the page
MAX_PAGE_IMAGES = 100  # images shown on the page (all are in the tables of values)
MAX_SHEET_IMAGES = 12  # rows of the contact sheet


def write_report(out_dir: Path, plan, results, doc: dict, names: Sequence[str]) -> Path:
    """Write ``index.html``, ``contact_sheet.png`` and ``charts/<metric>.png`` into `out_dir`.

    `plan` and `results` come from `diffmf_cli.metrics.evaluation` (`Plan`, `ImageResult` list), `doc` is the
    result document of the evaluate command, `names` the metrics shown. Returns the HTML file's path.
    Raises InputError when the folder cannot be written.
    """
    from diffmf_cli.metrics.evaluation import best_methods, method_blocks

    out_dir = Path(out_dir)
    try:
        (out_dir / "charts").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create report folder ({exc.strerror or exc})") from None
    blocks = method_blocks(doc)
    methods = list(blocks)
    best = best_methods(doc, names)

    charts = {}
    for metric in names:
        png = _bar_chart(metric, doc, blocks)
        _write_bytes(out_dir / "charts" / f"{_safe(metric)}.png", png)
        charts[metric] = png

    tasks = {t.name: t for t in plan.tasks}
    scored = [r for r in results if r.values]
    sheet = _contact_sheet([tasks[r.name] for r in scored[:MAX_SHEET_IMAGES]], methods)
    if sheet is not None:
        _write_bytes(out_dir / "contact_sheet.png", sheet)

    page = _page(doc, names, methods, blocks, best, charts, [tasks[r.name] for r in scored], results, sheet)
    path = out_dir / "index.html"
    _write_bytes(path, page.encode("utf-8"))
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data, durable=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot write report file ({exc.strerror or exc})") from None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# --- images ----------------------------------------------------------------------------------------------


def _display(path: Path) -> np.ndarray | None:
    """8-bit RGB or gray image for showing (16-bit scaled), or None when the file cannot be read."""
    try:
        img = read_image(path)
    except InputError:
        return None
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    return img


def _thumb(img: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    h, w = img.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return img


def _data_uri(img: np.ndarray) -> str:
    bgr = img[:, :, ::-1] if img.ndim == 3 else img
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- figures (Agg canvas) --------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _bar_chart(metric: str, doc: dict, blocks: dict) -> bytes:
    from diffmf_cli.metrics.evaluation import best_methods
    from diffmf_cli.metrics import METRICS

    methods = list(blocks)
    means = [blocks[m]["summary"][metric]["mean"] for m in methods]
    stds = [blocks[m]["summary"][metric]["std"] for m in methods]
    fig = _figure(max(3.2, 0.9 * len(methods) + 1.6), 2.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(methods))
    heights = [0.0 if _bad(v) else v for v in means]
    errs = [0.0 if _bad(v) else v for v in stds]
    best = best_methods(doc, [metric])[metric]
    colors = ["#55A868" if m in best else "#4C72B0" for m in methods]
    ax.bar(x, heights, yerr=errs, capsize=3, color=colors)
    for xi, v in zip(x, means):
        ax.annotate("nan" if _bad(v) else f"{v:.4g}", (xi, 0), ha="center", va="bottom", fontsize=8,
                    color="white", xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=20 if len(methods) > 3 else 0, fontsize=8)
    ax.set_title(f"{metric} {METRICS[metric].arrow}  (mean ± std)", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return _png(fig)


def _bad(v) -> bool:
    return v is None or not math.isfinite(v)


def _contact_sheet(tasks, methods: list[str]) -> bytes | None:
    if not tasks:
        return None
    cols = ["infrared", "visible", *methods]
    fig = _figure(2.0 * len(cols), 1.7 * len(tasks) + 0.3)
    for row, task in enumerate(tasks):
        paths = [task.ir, task.vis, *(task.fused.get(m) for m in methods)]
        for col, path in enumerate(paths):
            ax = fig.add_subplot(len(tasks), len(cols), row * len(cols) + col + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            img = _display(path) if path is not None else None
            if img is not None:
                img = _thumb(img, 200)
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=8)
            if row == 0:
                ax.set_title(cols[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(task.name, fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --- the page --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right;font-size:.9em}
th:first-child,td:first-child{text-align:left}
.best{background:#d8f0d8;font-weight:bold}
.charts img{margin:.3em}
.row{display:flex;gap:.6em;flex-wrap:wrap;margin:.4em 0 1.2em}
.cell{text-align:center;font-size:.8em}
.cell img{display:block;max-height:256px}
.vals td{font-size:.75em;padding:.05em .3em}
.err{color:#a00}
"""


def _page(doc, names, methods, blocks, best, charts, tasks, results, sheet) -> str:
    from diffmf_cli.metrics import METRICS

    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>diffmf evaluate report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Fusion metrics</h1>",
        f"<p>Convention: <b>{esc(doc['convention'])}</b>. Methods: {esc(', '.join(methods))}.</p>",
        "<ul>" + "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in doc.get("conventions", {}).items()) + "</ul>",
    ]
    for note in doc.get("notes", []):
        parts.append(f"<p>Note: {esc(note)}</p>")
    # summary
    parts.append("<h2>Summary (mean ± std over images)</h2><table><tr><th>metric</th>")
    parts += [f"<th>{esc(m)}</th>" for m in methods]
    parts.append("</tr><tr><td>images</td>")
    parts += [f"<td>{len(blocks[m]['per_image'])}</td>" for m in methods]
    parts.append("</tr>")
    for metric in names:
        parts.append(f"<tr><td>{esc(metric)} {METRICS[metric].arrow}</td>")
        for m in methods:
            s = blocks[m]["summary"][metric]
            text = f"{format_value(s['mean'])} ± {format_value(s['std'])}"
            text += f" ({s['excluded']} nan)" if s["excluded"] else ""
            cls = " class='best'" if m in best[metric] else ""
            parts.append(f"<td{cls}>{esc(text)}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    if len(methods) > 1 and same_images(doc):
        parts.append("<p>Green: best mean per metric (↑ higher is better, ↓ lower is better).</p>")
    elif len(methods) > 1:
        parts.append("<p>No best marked: the methods were scored on different images, so their means do not "
                     "compare.</p>")
    parts.append("<h2>Per metric</h2><div class='charts'>")
    parts += [f"<img alt='{esc(m)}' src='{_png_uri(png)}'>" for m, png in charts.items()]
    parts.append("</div>")
    # errors
    errors = doc.get("errors", [])
    if errors:
        parts.append("<h2>Problems</h2><ul>" + "".join(f"<li class='err'>{esc(e)}</li>" for e in errors) + "</ul>")
    # images
    shown = tasks[:MAX_PAGE_IMAGES]
    parts.append(f"<h2>Images ({len(shown)} of {len(tasks)} shown)</h2>")
    if sheet is not None:
        parts.append("<p>A contact sheet of the first images is in <code>contact_sheet.png</code>.</p>")
    for task in shown:
        parts.append(f"<h3>{esc(task.name)}</h3><div class='row'>")
        for label, path in (("infrared", task.ir), ("visible", task.vis)):
            parts.append(_cell(label, path, None, names))
        for m in methods:
            values = blocks[m]["per_image"].get(task.name)
            parts.append(_cell(m, task.fused.get(m), values, names))
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def _cell(label: str, path: Path | None, values: dict | None, names) -> str:
    esc = html.escape
    img = _display(path) if path is not None else None
    pic = f"<img alt='{esc(label)}' src='{_data_uri(_thumb(img))}'>" if img is not None else "<p>(no image)</p>"
    table = ""
    if values is not None:
        table = "<table class='vals'>" + "".join(
            f"<tr><td>{esc(n)}</td><td>{format_value(values.get(n))}</td></tr>" for n in names
        ) + "</table>"
    return f"<div class='cell'>{pic}<b>{esc(label)}</b>{table}</div>"
