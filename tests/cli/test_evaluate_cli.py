"""`diffmf evaluate` through Typer's CliRunner (and one real subprocess) on generated images."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app
from diffmf_cli.metrics import METRIC_NAMES, compute_metrics
from diffmf_cli.metrics.evaluation import read_for_metrics

_register()
runner = CliRunner()


def _scene(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 100 + 50 * np.sin(x / (4.0 + seed)) + 40 * (y > h // 2) + rng.normal(0, 8, (h, w))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path: Path):
    """ir/, vis/ (colour), fused_a/ (average), fused_b/ (maximum): three 48x56 triples a, b, c."""
    for d in ("ir", "vis", "fused_a", "fused_b"):
        (tmp_path / d).mkdir()
    for i, stem in enumerate(("a", "b", "c")):
        ir = _scene(48, 56, i)
        vis = np.stack([_scene(48, 56, 10 + i), _scene(48, 56, 20 + i), _scene(48, 56, 30 + i)], axis=2)
        cv2.imwrite(str(tmp_path / "ir" / f"{stem}.png"), ir)
        cv2.imwrite(str(tmp_path / "vis" / f"{stem}.jpg"), vis, [cv2.IMWRITE_JPEG_QUALITY, 95])
        vis_gray = read_for_metrics(tmp_path / "vis" / f"{stem}.jpg")[0]
        cv2.imwrite(str(tmp_path / "fused_a" / f"{stem}.png"), np.round((ir + vis_gray) / 2).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "fused_b" / f"{stem}.bmp"), np.maximum(ir, vis_gray).astype(np.uint8))
    return tmp_path


def _invoke(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


def test_json_schema_and_values_match_the_library(dataset):
    res = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["convention"] == "reference"
    assert set(doc["per_image"]) == {"a", "b", "c"}
    assert set(doc["summary"]) == set(METRIC_NAMES)
    for metric, s in doc["summary"].items():
        assert set(s) == {"mean", "std", "n", "excluded"}
        assert s["n"] == 3 and s["excluded"] == 0, metric
    # values are those of the library on the same files (colour read as rounded BGR2GRAY)
    F = read_for_metrics(dataset / "fused_a" / "b.png")[0]
    A = read_for_metrics(dataset / "ir" / "b.png")[0]
    B = read_for_metrics(dataset / "vis" / "b.jpg")[0]
    expected, _ = compute_metrics(F, A, B)
    for metric in METRIC_NAMES:
        assert doc["per_image"]["b"][metric] == pytest.approx(expected[metric], rel=1e-12)
    en = [doc["per_image"][k]["EN"] for k in "abc"]
    assert doc["summary"]["EN"]["mean"] == pytest.approx(np.mean(en))
    assert doc["summary"]["EN"]["std"] == pytest.approx(np.std(en, ddof=1))
    assert doc["metrics"]["MSE"] == {"higher_is_better": False}


def test_several_methods_side_by_side(dataset):
    res = _invoke(dataset / "ir", dataset / "vis", "--fused", f"avg={dataset / 'fused_a'}",
                  "--fused", f"max={dataset / 'fused_b'}", "-m", "EN,MSE,SSIM", "-f", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc["methods"]) == {"avg", "max"}
    for block in doc["methods"].values():
        assert set(block) == {"convention", "per_image", "summary"}
        assert set(block["summary"]) == {"EN", "MSE", "SSIM"}
    table = _invoke(dataset / "ir", dataset / "vis", "--fused", f"avg={dataset / 'fused_a'}",
                    "--fused", f"max={dataset / 'fused_b'}", "-m", "EN,MSE")
    assert table.exit_code == 0
    assert "avg" in table.stdout and "max" in table.stdout and "MSE ↓" in table.stdout and "EN ↑" in table.stdout
    # best per metric is marked (max fusion: higher entropy; average: lower MSE)
    doc = json.loads(res.stdout)["methods"]
    en_best = max(doc, key=lambda m: doc[m]["summary"]["EN"]["mean"])
    mse_best = min(doc, key=lambda m: doc[m]["summary"]["MSE"]["mean"])
    rows = {ln.split()[1]: ln for ln in table.stdout.splitlines() if ln.startswith("│ EN") or ln.startswith("│ MSE")}
    cells = {k: [c.strip() for c in v.split("│")[2:4]] for k, v in rows.items()}
    assert cells["EN"][["avg", "max"].index(en_best)].endswith("*")
    assert cells["MSE"][["avg", "max"].index(mse_best)].endswith("*")
    assert sum(c.endswith("*") for c in cells["EN"] + cells["MSE"]) == 2


def test_best_value_per_metric_follows_direction(dataset):
    from diffmf_cli.metrics.evaluation import best_methods

    doc = {"methods": {
        "x": {"summary": {"EN": {"mean": 7.0}, "MSE": {"mean": 10.0}}},
        "y": {"summary": {"EN": {"mean": 6.0}, "MSE": {"mean": 5.0}}},
    }}
    assert best_methods(doc, ["EN", "MSE"]) == {"EN": {"x"}, "MSE": {"y"}}


def test_no_best_is_marked_between_methods_scored_on_different_images(dataset):
    """A method with one image against one with three: their means do not compare, so no star."""
    import shutil

    (dataset / "part").mkdir()
    shutil.copy(dataset / "fused_b" / "a.bmp", dataset / "part" / "a.bmp")
    res = _invoke(dataset / "ir", dataset / "vis", "--fused", f"full={dataset / 'fused_a'}",
                  "--fused", f"part={dataset / 'part'}", "-m", "EN,MSE")
    assert "*" not in res.stdout and "scored on different images" in res.stdout
    report = dataset / "report"
    _invoke(dataset / "ir", dataset / "vis", "--fused", f"full={dataset / 'fused_a'}",
            "--fused", f"part={dataset / 'part'}", "-m", "EN", "--report", report)
    page = (report / "index.html").read_text()
    assert "Green: best" not in page and "scored on different images" in page and "class='best'" not in page


def test_csv_output_to_file(dataset, tmp_path):
    out = tmp_path / "res" / "m.csv"
    res = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "EN,CC", "-f", "csv", "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["kind"] for r in rows] == ["image"] * 3 + ["mean", "std", "n", "excluded"]
    assert {r["method"] for r in rows} == {"fused_a"}
    assert rows[0]["image"] == "a" and float(rows[0]["EN"]) > 0
    assert rows[-2]["CC"] == "3" and rows[0]["convention"] == "reference"


def test_convention_is_named_and_changes_values(dataset):
    base = json.loads(_invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "MI", "-f", "json").stdout)
    bits = json.loads(_invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "MI", "-f", "json",
                              "--convention", "mi-bits").stdout)
    assert bits["convention"] == "reference+mi-bits"
    assert bits["summary"]["MI"]["mean"] == pytest.approx(base["summary"]["MI"]["mean"] / math.log(2))
    table = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "MI", "-c", "standard")
    assert "convention: standard" in table.stdout


def test_bad_file_is_reported_others_still_scored_exit_1(dataset):
    (dataset / "fused_a" / "b.png").write_bytes(b"not an image")
    cv2.imwrite(str(dataset / "fused_b" / "c.bmp"), np.zeros((10, 12), np.uint8))  # size mismatch
    cv2.imwrite(str(dataset / "fused_a" / "orphan.png"), np.zeros((48, 56), np.uint8))  # no sources
    res = _invoke(dataset / "ir", dataset / "vis", "--fused", f"avg={dataset / 'fused_a'}",
                  "--fused", f"max={dataset / 'fused_b'}", "-m", "EN", "-f", "json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert set(doc["methods"]["avg"]["per_image"]) == {"a", "c"}
    assert set(doc["methods"]["max"]["per_image"]) == {"a", "b"}
    lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert any("b.png" in ln and "not a readable image" in ln for ln in lines), res.stderr
    assert any("c.bmp" in ln and "12x10" in ln for ln in lines), res.stderr
    assert any("orphan.png" in ln and "no infrared or visible source" in ln for ln in lines), res.stderr
    assert all(ln.count("\n") == 0 for ln in lines)


def test_missing_partner_in_one_method_is_an_error(dataset):
    (dataset / "fused_b" / "a.bmp").unlink()
    res = _invoke(dataset / "ir", dataset / "vis", "--fused", f"avg={dataset / 'fused_a'}",
                  "--fused", f"max={dataset / 'fused_b'}", "-m", "SD")
    assert res.exit_code == 1
    assert "no fused image of method 'max'" in res.stderr


def test_nan_is_reported_and_excluded(tmp_path):
    for d in ("ir", "vis", "f"):
        (tmp_path / d).mkdir()
    flat = np.full((20, 20), 90, np.uint8)
    for stem, ir in (("flat", flat), ("real", _scene(20, 20, 1))):
        cv2.imwrite(str(tmp_path / "ir" / f"{stem}.png"), ir)
        cv2.imwrite(str(tmp_path / "vis" / f"{stem}.png"), flat if stem == "flat" else _scene(20, 20, 2))
        cv2.imwrite(str(tmp_path / "f" / f"{stem}.png"), flat if stem == "flat" else _scene(20, 20, 3))
    res = _invoke(tmp_path / "f", tmp_path / "ir", tmp_path / "vis", "-m", "CC,VIF,EN", "-f", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["per_image"]["flat"]["CC"] is None
    assert doc["summary"]["CC"] == {"mean": doc["per_image"]["real"]["CC"], "std": 0.0, "n": 1, "excluded": 1}
    assert doc["summary"]["VIF"]["n"] == 0 and doc["summary"]["VIF"]["excluded"] == 2
    assert "VIF needs at least 41 px" in res.stderr
    table = _invoke(tmp_path / "f", tmp_path / "ir", tmp_path / "vis", "-m", "CC,VIF")
    assert "nan" in table.stdout and "(1 nan)" in table.stdout


def test_sixteen_bit_inputs_are_scaled_and_said_so(tmp_path):
    for d in ("ir", "vis", "f"):
        (tmp_path / d).mkdir()
    ir = _scene(24, 24, 1).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "ir" / "x.png"), ir)
    cv2.imwrite(str(tmp_path / "vis" / "x.png"), _scene(24, 24, 2))
    cv2.imwrite(str(tmp_path / "f" / "x.png"), _scene(24, 24, 3))
    res = _invoke(tmp_path / "f", tmp_path / "ir", tmp_path / "vis", "-m", "MSE", "-f", "json")
    doc = json.loads(res.stdout)
    assert any("16-bit" in n for n in doc["notes"])
    A = _scene(24, 24, 1).astype(np.float64)
    B, F = _scene(24, 24, 2).astype(np.float64), _scene(24, 24, 3).astype(np.float64)
    assert doc["per_image"]["x"]["MSE"] == pytest.approx(0.5 * (np.mean((F - A) ** 2) + np.mean((F - B) ** 2)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "EN,BOGUS"], "unknown metric 'BOGUS'"),
        (["-c", "nonsense"], "unknown word 'nonsense'"),
        (["-f", "xml"], "--format"),
        (["-j", "0"], "--jobs"),
    ],
)
def test_usage_errors_exit_2(dataset, args, message):
    res = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", *args)
    assert res.exit_code == 2
    assert message in res.stderr


def test_missing_folder_exit_2(dataset):
    res = _invoke(dataset / "nope", dataset / "ir", dataset / "vis")
    assert res.exit_code == 2 and "nope" in res.stderr
    assert _invoke(dataset / "ir", dataset / "vis").exit_code == 2  # no fused folder at all


@pytest.mark.parametrize("where", ["ir/a.png", "ir/metrics.csv", "vis/metrics.csv", "fused_a/metrics.csv"])
def test_output_file_never_lands_in_a_folder_it_reads(dataset, where):
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    res = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "EN", "-f", "csv",
                  "-o", dataset / where)
    assert res.exit_code == 2 and "is inside the input folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("where, message", [("ir", "is the input folder"), ("fused_a/report", "is inside"),
                                            (".", "contains")])
def test_report_folder_never_mixes_with_the_images(dataset, where, message):
    before = sorted(dataset.rglob("*"))
    res = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "EN", "--report", dataset / where)
    assert res.exit_code == 2 and message in res.stderr
    assert sorted(dataset.rglob("*")) == before


def test_jobs_give_the_same_numbers(dataset):
    one = json.loads(_invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-f", "json").stdout)
    two = json.loads(_invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-f", "json", "-j", "2").stdout)
    assert one == two


def test_subprocess_run(dataset):
    proc = subprocess.run(
        [sys.executable, "-m", "diffmf_cli", "evaluate", str(dataset / "fused_a"), str(dataset / "ir"),
         str(dataset / "vis"), "-m", "EN,SD", "-f", "csv"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "kind,method,image,EN,SD,convention"


def test_report_is_self_contained_with_sheet_and_charts(dataset, tmp_path):
    rep = tmp_path / "report"
    res = _invoke(dataset / "ir", dataset / "vis", "--fused", f"avg={dataset / 'fused_a'}",
                  "--fused", f"max={dataset / 'fused_b'}", "-m", "EN,SSIM,Nabf", "--report", rep)
    assert res.exit_code == 0, res.output
    page = (rep / "index.html").read_text()
    assert "convention" in page.lower() and "reference" in page
    assert "avg" in page and "max" in page and "Nabf" in page
    import re

    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 3 + 3 * 4  # 3 charts; per image: ir, vis, 2 fused
    assert all(s.startswith("data:image/") for s in sources)
    assert (rep / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (rep / "charts").iterdir()) == ["EN.png", "Nabf.png", "SSIM.png"]
    assert "class='best'" in page


def test_recursive_pairs_by_relative_stem(dataset):
    for d in ("ir", "vis", "fused_a"):
        sub = dataset / d / "night"
        sub.mkdir()
        for f in (dataset / d).glob("a.*"):
            (sub / f.name).write_bytes(f.read_bytes())
    flat = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "EN", "-f", "json")
    deep = _invoke(dataset / "fused_a", dataset / "ir", dataset / "vis", "-m", "EN", "-f", "json", "-r")
    assert set(json.loads(flat.stdout)["per_image"]) == {"a", "b", "c"}
    per_image = json.loads(deep.stdout)["per_image"]
    assert set(per_image) == {"a", "b", "c", "night/a"}
    assert per_image["night/a"] == per_image["a"]


def test_real_tno_images_two_jobs(shared_data, tmp_path):
    ir_dir, vis_dir = shared_data / "tno" / "test" / "ir", shared_data / "tno" / "test" / "vi"
    fused = tmp_path / "avg"
    fused.mkdir()
    names = sorted(p.name for p in ir_dir.iterdir())[:3]
    for name in names:
        a = read_for_metrics(ir_dir / name)[0]
        b = read_for_metrics(vis_dir / name)[0]
        cv2.imwrite(str(fused / name), np.round((a + b) / 2).astype(np.uint8))
    res = _invoke(fused, ir_dir, vis_dir, "-f", "json", "-j", "2", "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc["per_image"]) == {Path(n).stem for n in names}
    assert all(s["n"] == 3 and s["excluded"] == 0 for s in doc["summary"].values())
    assert "source pair(s) have no fused image" in res.stderr  # the rest of tno/test is not scored
    assert (tmp_path / "rep" / "index.html").is_file()
