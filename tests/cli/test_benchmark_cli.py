"""`diffmf benchmark`: runs on the tiny preset at small sizes, every output field is there, user errors are
one line with the right exit code. No test asserts a timing."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffmf_cli import benchmark as bm
from diffmf_cli.cli.app import _register, app
from diffmf_cli.errors import UsageError
from diffmf_cli.models import model_cost

_register()
runner = CliRunner()
FAST = ["--preset", "tiny", "--warmup", "0", "--iters", "1", "--quiet"]
SAMPLES = Path(__file__).resolve().parents[2] / "diffmf_cli" / "samples"
MACHINE_FIELDS = {"timestamp", "cpu_model", "logical_cpus", "usable_cpus", "torch_threads", "torch_version",
                  "gpu_name", "device", "load_average_1_5_15", "load_average_at_end", "numba_version"}


def _invoke(*args: str):
    result = runner.invoke(app, ["benchmark", *args])
    return result


def _json(*args: str) -> dict:
    result = _invoke(*FAST, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_has_every_field_for_every_row():
    doc = _json("--sizes", "32,24x40", "--batch-sizes", "1,2")
    assert MACHINE_FIELDS <= set(doc["machine"])
    assert doc["machine"]["torch_version"] == torch.__version__
    assert doc["model"]["params"] == model_cost("tiny")["params"]
    assert doc["model"]["preset"] == "tiny" and doc["model"]["weights"] is None
    rows = doc["rows"]
    assert len(rows) == 4
    assert {(r["size"], r["batch"]) for r in rows} == {("32x32", 1), ("32x32", 2), ("24x40", 1), ("24x40", 2)}
    optional = {"tile", "error", "tiles_per_pair", "fraction_of_peak"}
    for row in rows:
        assert list(row) == bm.row_fields() + ["achieved_tflops", "fraction_of_peak"]
        missing = [k for k, v in row.items() if v is None and k not in optional]
        assert not missing, f"unfilled fields {missing} in {row}"
        assert row["error"] is None
        assert row["scan_path"] == "cpu" and row["device"] == "cpu" and row["precision"] == "fp32"
        assert row["iters"] == 1 and row["peak_memory_bytes"] > 0
        assert row["peak_memory_kind"] in ("process peak RSS", "process lifetime peak RSS")
        # the derived figures agree with each other (arithmetic, not speed)
        assert math.isclose(row["megapixels_per_s"], row["pairs_per_s"] * row["height"] * row["width"] / 1e6)
        assert math.isclose(row["ms_per_pair_p50"] * row["batch"], row["batch_ms_p50"])


def test_csv_rows_carry_machine_columns():
    result = _invoke(*FAST, "--sizes", "16", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1
    assert set(bm.row_fields()) <= set(rows[0])
    assert rows[0]["size"] == "16x16" and rows[0]["cpu_model"] and rows[0]["torch_version"] == torch.__version__


def test_table_names_the_columns_and_the_model(tmp_path):
    out = tmp_path / "bench.txt"
    result = _invoke(*FAST, "--sizes", "16", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    text = out.read_text()
    for word in ("size", "pairs/s", "MP/s", "ms/pair p50", "p95", "peak memory", "GMAC/MP", "preset 'tiny'",
                 "machine:", "16x16"):
        assert word in text


def test_peak_rate_gives_the_achieved_fraction():
    row = _json("--sizes", "16", "--peak-tflops", "0.5")["rows"][0]
    assert math.isclose(row["achieved_tflops"], 2 * row["achieved_gmacs_per_s"] / 1e3)
    assert math.isclose(row["fraction_of_peak"], row["achieved_tflops"] / 0.5)


def test_forced_scan_path_is_the_one_reported():
    rows = _json("--sizes", "16", "--scan", "reference")["rows"]
    assert rows[0]["scan_path"] == "reference"


def test_tiled_rows_go_through_the_engine():
    # 40x72 in 32-pixel tiles with the engine's overlap (a quarter tile): 2 rows x 3 columns. (A copy of the
    # tile arithmetic with another overlap once reported 8 here.)
    row = _json("--sizes", "40x72", "--tile", "32")["rows"][0]
    assert row["tile"] == 32 and row["tiles_per_pair"] == 6 and "engine" in row["timed"]


@pytest.mark.parametrize("size, tile", [((40, 72), 32), ((70, 95), 48), ((33, 200), 32), ((16, 16), 32)])
def test_reported_tiles_are_the_tiles_the_network_saw(size, tile):
    bench = bm.load_model(torch.device("cpu"), preset="tiny")
    seen = []
    hook = bench.model.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    try:
        row = bm.measure(bench, size, 1, torch.device("cpu"), warmup=0, iters=1, tile=tile)
    finally:
        hook.remove()
    passes = sum(seen)  # one timed pass: every forward's batch is a tile (or the whole image)
    assert row["tiles_per_pair"] == (passes if passes > 1 else 0)


def test_compare_scan_paths_agree():
    doc = _json("--compare-scan", "--sizes", "16")
    compare = doc["compare"]
    assert {"reference", "cpu"} <= set(compare["paths"]) and compare["automatic_path"] == "cpu"
    by_path = {r["path"]: r for r in compare["rows"]}
    assert by_path["cpu"]["diff_against"] == "reference"
    assert by_path["cpu"]["max_abs_diff"] < 1e-4
    assert by_path["cpu"]["speed_vs_automatic"] == 1.0
    assert by_path["reference"]["scan_ms_per_pair"] > 0


def test_compare_scan_skips_the_reference_above_its_cap():
    doc = _json("--compare-scan", "--sizes", "136x128")
    assert [r["path"] for r in doc["compare"]["rows"]] == ["cpu"]
    assert doc["compare"]["rows"][0]["diff_against"] == "cpu"
    assert any("reference path skipped" in n for n in doc["compare"]["notes"])


def test_sweep_fits_an_exponent_and_writes_a_png(tmp_path):
    plot = tmp_path / "sweep.png"
    doc = _json("--sweep", "--sizes", "16,32,48", "--plot", str(plot))
    rows = doc["rows"]
    assert [r["size"] for r in rows] == ["16x16", "32x32", "48x48"]
    pixels = [r["height"] * r["width"] for r in rows]
    seconds = [r["ms_per_pair_p50"] / 1e3 for r in rows]
    # the exponents are the fits of these rows' times, over all sizes and without the smallest
    assert doc["sweep"]["exponent"] == pytest.approx(bm.fit_exponent(pixels, seconds))
    assert doc["sweep"]["exponent_without_smallest"] == pytest.approx(bm.fit_exponent(pixels[1:], seconds[1:]))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_input_times_the_pipeline_on_real_files():
    doc = _json("--input", str(SAMPLES / "ir"), str(SAMPLES / "vis"), "--limit", "2")
    p = doc["pipeline"]
    assert p["pairs"] == 2 and p["fused"] == 2 and p["failed"] == 0 and p["split_pairs"] == 2
    assert p["read_s"] > 0 and p["model_s"] > 0 and p["write_s"] > 0
    assert math.isclose(p["read_share"] + p["model_share"] + p["write_share"], 1.0)


@pytest.mark.parametrize("args, needle", [
    (["--sizes", "12xq"], "size '12xq'"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--preset", "huge"], "--preset huge"),
    (["--preset", "tiny", "--weights", "ir-vis"], "not both"),
    (["--scan", "warp"], "unknown scan path"),
    (["--precision", "bf16", "--device", "cpu"], "CUDA only"),
    (["--format", "xml"], "--format xml"),
    (["--sweep", "--compare-scan"], "one of"),
    (["--sweep", "--batch-sizes", "1,2"], "one --batch-sizes"),
    (["--compare-scan", "--scan", "cpu"], "do not also give --scan"),
    (["--sweep", "--sizes", "64"], "two different sizes"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    result = _invoke(*args, "--quiet")
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_weights_file_is_timed_with_its_own_architecture(tmp_path):
    from diffmf_cli.models import create_model
    from diffmf_cli.weights import save_weights

    path = save_weights(tmp_path / "tiny.safetensors", create_model("tiny"), {"name": "tiny-test"})
    result = _invoke("--weights", str(path), "--sizes", "16", "--warmup", "0", "--iters", "1", "--quiet",
                     "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["weights"] == str(path) and "tiny-test" in doc["model"]["source"]
    assert doc["rows"][0]["params"] == model_cost("tiny")["params"]
    assert doc["model"]["config"]["dim"] == create_model("tiny").config.dim


def test_missing_weights_file_is_a_checkpoint_error(tmp_path):
    result = _invoke("--weights", str(tmp_path / "nope.safetensors"), "--sizes", "16", "--quiet")
    assert result.exit_code == 2
    assert "nope.safetensors" in result.stderr


def test_input_folder_must_exist(tmp_path):
    result = _invoke(*FAST, "--input", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.exit_code == 2 and "is not a folder" in result.stderr


# ---------------------------------------------------------------------------------------- the engine


def test_fit_exponent_recovers_a_power_law():
    pixels = [1e4, 4e4, 1.6e5, 6.4e5]
    assert math.isclose(bm.fit_exponent(pixels, [3e-6 * p ** 0.8 for p in pixels]), 0.8, rel_tol=1e-9)
    with pytest.raises(ValueError):
        bm.fit_exponent([5, 5], [1, 2])


def test_summarize_is_in_milliseconds():
    stats = bm.summarize([0.001, 0.002, 0.003, 0.004, 0.100])
    assert stats["p50"] == pytest.approx(3.0) and stats["min"] == pytest.approx(1.0)
    assert stats["max"] == pytest.approx(100.0) and stats["iqr"] == pytest.approx(2.0) and stats["n"] == 5


def test_parse_size():
    assert bm.parse_size("480x640") == (480, 640)
    assert bm.parse_size(" 256 ") == (256, 256)
    assert bm.parse_sizes("16,8x4") == [(16, 16), (8, 4)]
    for bad in ("0x4", "4x4x4", "abc", ""):
        with pytest.raises(UsageError):
            bm.parse_size(bad)


def test_scan_timer_counts_and_times_every_scan():
    from diffmf_cli.models import create_model
    from diffmf_cli.modules.vss import watch_scans

    model = create_model("tiny").eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.inference_mode(), watch_scans() as counted, bm.scan_timer(torch.device("cpu")) as record:
        model(x, x)
    assert record.calls == counted.calls > 0 and record.seconds > 0 and counted.seconds == 0


def test_real_subprocess_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = tmp_path / "b.json"
    done = subprocess.run([sys.executable, "-m", "diffmf_cli", "benchmark", *FAST, "--threads", "1",
                           "--sizes", "16", "--format", "json", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["rows"][0]["size"] == "16x16"
    # a fresh process: numba's threading layer starts during the run and must not undo --threads 1
    assert doc["machine"]["torch_threads"] == 1 and doc["rows"][0]["threads"] == 1


def test_output_file_never_lands_in_an_input_folder(tmp_path):
    """`-o irb/x.png` once replaced a source image with the benchmark's text."""
    import shutil

    ir, vis = tmp_path / "ir", tmp_path / "vis"
    shutil.copytree(SAMPLES / "ir", ir)
    shutil.copytree(SAMPLES / "vis", vis)
    target = next(ir.iterdir())
    before = target.read_bytes()
    result = _invoke(*FAST, "--input", str(ir), str(vis), "--limit", "1", "-o", str(target))
    assert result.exit_code == 2 and "is inside the input folder" in result.stderr
    assert target.read_bytes() == before
