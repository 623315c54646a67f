"""`diffmf fuse` run unattended: sources are never written, nothing to do is an error, a bad output location is
found before any work, and outputs carry a record of what made them (re-runs skip only their own)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app
from diffmf_cli.io.images import write_image

_register()
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    from diffmf_cli.models import create_model
    from diffmf_cli.weights import save_weights

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "other.safetensors"
    save_weights(path, create_model("tiny"), {"name": "another tiny model"})
    return path


def make_pairs(root: Path, names=("a", "b", "c"), size=(12, 16)) -> tuple[Path, Path]:
    for name in names:
        write_image(root / "ir" / f"{name}.png", RNG.integers(0, 256, size).astype(np.uint8))
        write_image(root / "vis" / f"{name}.png", RNG.integers(0, 256, (*size, 3)).astype(np.uint8))
    return root / "ir", root / "vis"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def fuse(*args, weights):
    return CliRunner().invoke(app, ["fuse", *map(str, args), "--weights", str(weights)])


def one_error_line(res, *words):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("diffmf fuse: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ inputs are never written


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("where, words", [
    ("ir", ("is the input folder",)),
    ("vis", ("is the input folder",)),
    ("ir/fused", ("is inside the input folder",)),
    (".", ("contains the input folder",)),
])
def test_output_folder_on_an_input_folder_is_refused(tmp_path, tiny_weights, monkeypatch, where, words, overwrite):
    ir, vis = make_pairs(tmp_path)
    before = digests(ir), digests(vis)
    monkeypatch.chdir(tmp_path)
    res = fuse("ir", "vis", "-o", where, *(["--overwrite"] if overwrite else []), weights=tiny_weights)
    one_error_line(res, *words)
    assert (digests(ir), digests(vis)) == before
    assert not (tmp_path / "ir" / "fused").exists()


def test_same_folder_through_a_link_or_dots_is_the_same_folder(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    (tmp_path / "link").symlink_to(ir)
    one_error_line(fuse(ir, vis, "-o", tmp_path / "link", weights=tiny_weights), "is the input folder")
    one_error_line(fuse(ir, vis, "-o", vis / ".." / "ir", "--overwrite", weights=tiny_weights), "input folder")


def test_single_pair_output_naming_an_input_file_is_refused(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    before = digests(ir), digests(vis)
    for target in (ir / "a.png", vis / "a.png"):
        for extra in ([], ["--overwrite"]):
            res = fuse(ir / "a.png", vis / "a.png", "-o", target, *extra, weights=tiny_weights)
            one_error_line(res, "is an input file", "refusing")
    assert (digests(ir), digests(vis)) == before


def test_pair_list_output_naming_an_input_file_is_refused(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    before = digests(ir)
    (tmp_path / "list.csv").write_text("ir,vis,out\nir/a.png,vis/a.png,out/a.png\nir/b.png,vis/b.png,ir/a.png\n")
    one_error_line(fuse("--pairs", tmp_path / "list.csv", "--overwrite", weights=tiny_weights), "is an input file")
    assert digests(ir) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["list", "single"])
@pytest.mark.parametrize("out", ["ir/b.png", "vis/c.png", "ir/seq/d.png"])
def test_a_file_diffmf_did_not_write_beside_the_inputs_is_never_replaced(tmp_path, tiny_weights, monkeypatch,
                                                                         mode, out):
    """ir/b.png is a source this run does not read: --overwrite once replaced it. A file in a sub-folder of
    an input's folder is one too for a later -r run."""
    ir, vis = make_pairs(tmp_path)
    write_image(tmp_path / "ir" / "seq" / "d.png", RNG.integers(0, 256, (12, 16)).astype(np.uint8))
    before = digests(ir), digests(vis), digests(ir / "seq")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.csv").write_text(f"ir,vis,out\nir/a.png,vis/a.png,{out}\n")
    args = ["--pairs", "list.csv"] if mode == "list" else ["ir/a.png", "vis/a.png", "-o", out]
    for extra in ([], ["--overwrite"]):
        one_error_line(fuse(*args, *extra, weights=tiny_weights), out, "without a diffmf record",
                       "never replaced, --overwrite or not")
    assert (digests(ir), digests(vis), digests(ir / "seq")) == before
    assert not (ir / ".diffmf").exists() and not (vis / ".diffmf").exists()


def test_outputs_beside_their_inputs_are_allowed_and_redone_by_their_record(tmp_path, tiny_weights, monkeypatch):
    """Per-scene folders (scene/ir.png, scene/vis.png -> scene/fused.png), as the README's shell-loop-to-list
    advice gives: written, skipped on a re-run, replaced with --overwrite (diffmf wrote them)."""
    for scene in ("s1", "s2"):
        write_image(tmp_path / scene / "ir.png", RNG.integers(0, 256, (12, 16)).astype(np.uint8))
        write_image(tmp_path / scene / "vis.png", RNG.integers(0, 256, (12, 16, 3)).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.csv").write_text("s1/ir.png,s1/vis.png,s1/fused.png\ns2/ir.png,s2/vis.png,s2/fused.png\n")
    res = fuse("--pairs", "list.csv", weights=tiny_weights)
    assert res.exit_code == 0 and "2 fused" in res.stdout, res.output
    res = fuse("--pairs", "list.csv", weights=tiny_weights)
    assert res.exit_code == 0 and "2 skipped" in res.stdout, res.output
    res = fuse("--pairs", "list.csv", "--overwrite", weights=tiny_weights)
    assert res.exit_code == 0 and "2 fused" in res.stdout, res.output


def test_output_folder_containing_the_inputs_is_refused_even_nested(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path / "data")
    one_error_line(fuse(ir, vis, "-o", tmp_path, weights=tiny_weights), "contains the input folder")


def test_real_process_cannot_replace_sources(tmp_path, tiny_weights):
    """The issue's reproduction: `-o ir --overwrite` once replaced the infrared sources with fused images."""
    ir, vis = make_pairs(tmp_path)
    before = digests(ir)
    proc = subprocess.run([sys.executable, "-m", "diffmf_cli", "fuse", str(ir), str(vis), "-o", str(ir),
                           "--overwrite", "--weights", str(tiny_weights)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "is the input folder" in proc.stderr
    assert digests(ir) == before


# ---------------------------------------------------------------------------------------------- nothing to do


def test_parent_of_the_folders_is_nothing_to_do_with_an_r_hint(tmp_path, tiny_weights):
    make_pairs(tmp_path / "set")
    line = one_error_line(fuse(tmp_path / "set", tmp_path / "set", "-o", tmp_path / "out", weights=tiny_weights),
                          "both IR and VIS")
    assert "fused with itself" in line
    (tmp_path / "other").mkdir()
    line = one_error_line(fuse(tmp_path / "set", tmp_path / "other", "-o", tmp_path / "out", weights=tiny_weights),
                          "no image pairs")
    assert "add -r" in line
    assert not (tmp_path / "out").exists()


def test_folders_without_common_names_are_nothing_to_do(tmp_path, tiny_weights):
    write_image(tmp_path / "ir" / "x.png", RNG.integers(0, 256, (8, 8)).astype(np.uint8))
    write_image(tmp_path / "vis" / "y.png", RNG.integers(0, 256, (8, 8)).astype(np.uint8))
    line = one_error_line(fuse(tmp_path / "ir", tmp_path / "vis", "-o", tmp_path / "out", weights=tiny_weights),
                          "no image pairs", "1 image(s) in")
    assert "add -r" not in line


def test_empty_folders_and_empty_pair_list_are_nothing_to_do(tmp_path, tiny_weights):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vis").mkdir()
    one_error_line(fuse(tmp_path / "ir", tmp_path / "vis", "-o", tmp_path / "out", weights=tiny_weights),
                   "no image pairs")
    (tmp_path / "list.csv").write_text("ir,vis\n# nothing yet\n")
    one_error_line(fuse("--pairs", tmp_path / "list.csv", "-o", tmp_path / "out", weights=tiny_weights),
                   "no pairs", "nothing to do")


def test_same_file_twice_is_refused(tmp_path, tiny_weights):
    ir, _vis = make_pairs(tmp_path)
    one_error_line(fuse(ir / "a.png", ir / "a.png", "-o", tmp_path / "f.png", weights=tiny_weights), "both IR and VIS")


def test_an_empty_shard_is_not_an_error(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path, names=("a",))
    from diffmf_cli.io.pairs import shard_of

    empty = next(k for k in range(4) if shard_of("a", 4) != k)
    res = fuse(ir, vis, "-o", tmp_path / "out", "--shard", f"{empty}/4", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.stderr


# ------------------------------------------------------------------------------ the output location, up front


def test_output_under_a_file_fails_before_any_pair_is_fused(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    (tmp_path / "file").write_text("x")
    res = fuse(ir, vis, "-o", tmp_path / "file" / "out", weights=tiny_weights)
    line = one_error_line(res, "cannot create the output folder")
    assert "failed:" not in res.output and str(tmp_path / "file" / "out") in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_folder_fails_before_any_pair_is_fused(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        res = fuse(ir, vis, "-o", locked, weights=tiny_weights)
        one_error_line(res, "not writable")
        res = fuse(ir, vis, "-o", locked / "sub", weights=tiny_weights)
        one_error_line(res, "cannot create the output folder")
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_output_folder_is_created_with_parents(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    res = fuse(ir, vis, "-o", tmp_path / "new" / "deep" / "out", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "new" / "deep" / "out").glob("*.png")) == ["a.png", "b.png", "c.png"]


# -------------------------------------------------------------------------------- output records (provenance)


def records(out: Path) -> dict[str, dict]:
    return {p.name.removesuffix(".json"): json.loads(p.read_text()) for p in (out / ".diffmf").glob("*.json")}


def test_every_output_has_a_record_of_what_made_it(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    res = fuse(ir, vis, "-o", tmp_path / "out", "--gray", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    recs = records(tmp_path / "out")
    assert sorted(recs) == ["a.png", "b.png", "c.png"]
    rec = recs["a.png"]
    assert rec["settings"]["gray"] is True and rec["settings"]["precision"] == "fp32"
    assert rec["settings"]["tile"] == "auto" and rec["settings"]["weights_sha256"] == hashlib.sha256(
        tiny_weights.read_bytes()).hexdigest()
    import diffmf_cli

    assert rec["settings"]["diffmf_version"] == diffmf_cli.__version__
    assert rec["output_sha256"] == hashlib.sha256((tmp_path / "out" / "a.png").read_bytes()).hexdigest()
    assert rec["inputs"]["ir_sha256"] == hashlib.sha256((ir / "a.png").read_bytes()).hexdigest()
    # hidden: the records folder is never taken for an image by fuse or evaluate
    from diffmf_cli.io.pairs import list_images

    assert sorted(list_images(tmp_path / "out", recursive=True)[0]) == ["a", "b", "c"]


def test_rerun_with_the_same_settings_skips_and_says_why(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    assert fuse(ir, vis, "-o", tmp_path / "out", weights=tiny_weights).exit_code == 0
    res = fuse(ir, vis, "-o", tmp_path / "out", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert "0 fused, 3 skipped (output exists from the same settings)" in res.stdout
    doc = json.loads(fuse(ir, vis, "-o", tmp_path / "out", "--json", weights=tiny_weights).stdout)
    assert doc["reasons"]["skipped"] == {"output exists from the same settings": 3}
    assert {r["reason"] for r in doc["pairs"]} == {"output exists from the same settings"}


@pytest.mark.parametrize("change, words", [
    (["--gray"], "gray off -> on"),
    (["--tile", "64"], "tile auto -> 64"),
    (["--tile", "off"], "tile auto -> off"),
    ("other-weights", "weights"),
])
def test_outputs_of_other_settings_are_refused_not_kept(tmp_path, tiny_weights, other_weights, change, words):
    ir, vis = make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse(ir, vis, "-o", out, weights=tiny_weights).exit_code == 0
    before = digests(out)
    if change == "other-weights":
        res = fuse(ir, vis, "-o", out, weights=other_weights)
    else:
        res = fuse(ir, vis, "-o", out, *change, weights=tiny_weights)
    line = one_error_line(res, "made with other settings", words, "--overwrite", "nothing was fused")
    assert "(and 2 more output(s))" in line
    assert digests(out) == before  # nothing replaced, nothing kept as if it were this run's
    # the way out: --overwrite replaces them, and says so; then they are this settings' outputs
    args = ["--weights", other_weights] if change == "other-weights" else change
    res = CliRunner().invoke(app, ["fuse", str(ir), str(vis), "-o", str(out), "--overwrite", *map(str, args),
                                   *(["--weights", str(tiny_weights)] if change != "other-weights" else [])])
    assert res.exit_code == 0, res.output
    assert "3 fused (replaced an existing output, --overwrite)" in res.stdout
    res = CliRunner().invoke(app, ["fuse", str(ir), str(vis), "-o", str(out), *map(str, args),
                                   *(["--weights", str(tiny_weights)] if change != "other-weights" else [])])
    assert res.exit_code == 0 and "3 skipped" in res.stdout, res.output


def test_the_shipped_models_do_not_pass_for_each_other(tmp_path):
    """The issue's case: `--model medical` after an ir-vis run into the same folder."""
    ir, vis = make_pairs(tmp_path, names=("a",), size=(16, 16))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["fuse", str(ir), str(vis), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["fuse", str(ir), str(vis), "-o", str(out), "--model", "medical"])
    one_error_line(res, "made with other settings", "weights ir-vis", "-> medical")


def test_outputs_without_a_record_are_refused(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    out = tmp_path / "out"
    write_image(out / "b.png", RNG.integers(0, 256, (12, 16)).astype(np.uint8))  # made by something else
    before = digests(out)
    one_error_line(fuse(ir, vis, "-o", out, weights=tiny_weights), f"{out / 'b.png'}", "no record of what made it",
                   "--overwrite")
    assert digests(out) == before and not (out / "a.png").exists()
    (out / ".diffmf").mkdir()
    (out / ".diffmf" / "b.png.json").write_text("{not json")
    one_error_line(fuse(ir, vis, "-o", out, weights=tiny_weights), "record is unusable")


def test_an_interrupted_replacement_or_a_changed_input_is_made_again(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse(ir, vis, "-o", out, weights=tiny_weights).exit_code == 0
    good = (out / "a.png").read_bytes()
    first_c = records(out)["c.png"]
    # the state a crash leaves between writing a replacement's record and its image: the record names the new
    # image's digest and the file it replaces, which is still there
    rec_path = out / ".diffmf" / "a.png.json"
    rec = json.loads(rec_path.read_text())
    rec["replaces_sha256"], rec["output_sha256"] = rec["output_sha256"], "0" * 64
    rec_path.write_text(json.dumps(rec))
    # and an input replaced since the run makes its output stale
    write_image(vis / "b.png", RNG.integers(0, 256, (12, 16, 3)).astype(np.uint8))
    old_b = hashlib.sha256((out / "b.png").read_bytes()).hexdigest()
    res = fuse(ir, vis, "-o", out, "--json", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["fused"], doc["skipped"]) == (2, 1)
    why = {r["name"]: r["reason"] for r in doc["pairs"]}
    assert "interrupted" in why["a"] and "input changed" in why["b"]
    assert (out / "a.png").read_bytes() == good
    # a replacement records what it replaced (what tells a crash from an edit)
    assert records(out)["b.png"]["replaces_sha256"] == old_b
    assert first_c["replaces_sha256"] is None  # written where nothing was


def test_a_record_of_an_older_diffmf_is_redone_as_it_was_then(tmp_path, tiny_weights):
    """Records written before `replaces_sha256` existed cannot tell a crash from an edit: redone, as before."""
    ir, vis = make_pairs(tmp_path, names=("a",))
    out = tmp_path / "out"
    assert fuse(ir, vis, "-o", out, weights=tiny_weights).exit_code == 0
    good = (out / "a.png").read_bytes()
    rec_path = out / ".diffmf" / "a.png.json"
    rec = json.loads(rec_path.read_text())
    del rec["replaces_sha256"]
    rec["output_sha256"] = "0" * 64
    rec_path.write_text(json.dumps(rec))
    res = fuse(ir, vis, "-o", out, "--json", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    assert "interrupted" in json.loads(res.stdout)["pairs"][0]["reason"]
    assert (out / "a.png").read_bytes() == good


def test_an_output_changed_since_diffmf_wrote_it_is_not_replaced_silently(tmp_path, tiny_weights):
    ir, vis = make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse(ir, vis, "-o", out, weights=tiny_weights).exit_code == 0
    write_image(out / "a.png", RNG.integers(0, 256, (12, 16)).astype(np.uint8))  # someone edited it
    before = digests(out)
    one_error_line(fuse(ir, vis, "-o", out, weights=tiny_weights), f"{out / 'a.png'}", "changed since diffmf wrote it",
                   "--overwrite", "nothing was fused")
    assert digests(out) == before
    res = fuse(ir, vis, "-o", out, "--overwrite", weights=tiny_weights)
    assert res.exit_code == 0 and "3 fused" in res.stdout, res.output


def test_one_format_per_pair_and_folder(tmp_path, tiny_weights):
    """`--ext jpg` into a folder of png outputs would leave two outputs per pair (evaluate: ambiguous)."""
    ir, vis = make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse(ir, vis, "-o", out, weights=tiny_weights).exit_code == 0
    before = digests(out)
    for extra in ([], ["--overwrite"]):
        one_error_line(fuse(ir, vis, "-o", out, "--ext", "jpg", *extra, weights=tiny_weights),
                       f"{out / 'a.jpg'}", "already there as a.png", "--ext png", "(and 2 more output(s))")
    assert digests(out) == before and not list(out.glob("*.jpg"))
    res = fuse(ir, vis, "-o", out, "--ext", "png", weights=tiny_weights)
    assert res.exit_code == 0 and "3 skipped" in res.stdout, res.output


def test_records_written_before_images_in_a_real_process(tmp_path, tiny_weights):
    """Shards write into one folder from separate processes; each output has its own record, so none is lost."""
    ir, vis = make_pairs(tmp_path, names=tuple(f"s{i}" for i in range(6)))
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "diffmf_cli", "fuse", str(ir), str(vis), "-o", str(out),
                               "--shard", f"{k}/2", "--quiet", "--weights", str(tiny_weights)])
             for k in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert sorted(records(out)) == [f"s{i}.png" for i in range(6)]
    res = fuse(ir, vis, "-o", out, weights=tiny_weights)
    assert "0 fused, 6 skipped" in res.stdout
    assert not [p for p in (out / ".diffmf").iterdir() if p.suffix == ".tmp"]


# ------------------------------------------------------------- what the user should hear: warnings, progress


def test_silent_conversions_are_warned_about_once_per_kind(tmp_path, tiny_weights):
    import cv2

    ir, vis = tmp_path / "ir", tmp_path / "vis"
    write_image(ir / "deep.png", RNG.integers(0, 65536, (12, 16)).astype(np.uint16))
    write_image(vis / "deep.png", RNG.integers(0, 256, (12, 16)).astype(np.uint8))
    gray = RNG.integers(0, 256, (12, 16)).astype(np.uint8)
    for name in ("palette1", "palette2"):  # a false-colour IR image (e.g. a JET palette)
        cv2.imwrite(str(ir / f"{name}.png"), cv2.applyColorMap(gray, cv2.COLORMAP_JET))
        write_image(vis / f"{name}.png", gray)
    res = fuse(ir, vis, "-o", tmp_path / "out", "--ext", "jpg", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, res.stderr
    assert any("deep.jpg: 16-bit inputs written with 8 bits" in w and "--ext png or tif" in w for w in warnings)
    assert any("palette1.png: a colour infrared image" in w and "(and 1 more like it)" in w for w in warnings)
    doc = json.loads(fuse(ir, vis, "-o", tmp_path / "out2", "--ext", "jpg", "--json", weights=tiny_weights).stdout)
    assert {r["name"]: len(r["warnings"]) for r in doc["pairs"]} == {"deep": 1, "palette1": 1, "palette2": 1}
    quiet = fuse(ir, vis, "-o", tmp_path / "out3", "--ext", "jpg", "--quiet", weights=tiny_weights)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
    png = fuse(ir, vis, "-o", tmp_path / "out4", weights=tiny_weights)  # 16 bits kept: nothing to say
    assert "16-bit" not in png.stderr


def test_transparency_dropped_is_said_only_when_something_was_transparent(tmp_path, tiny_weights):
    import cv2

    ir, vis = tmp_path / "ir", tmp_path / "vis"
    for name, alpha in (("see_through", 0), ("opaque", 255)):
        write_image(ir / f"{name}.png", RNG.integers(0, 256, (12, 16)).astype(np.uint8))
        bgra = RNG.integers(0, 256, (12, 16, 4)).astype(np.uint8)
        bgra[:, :, 3] = 255
        bgra[:4, :4, 3] = alpha
        vis.mkdir(exist_ok=True)
        cv2.imwrite(str(vis / f"{name}.png"), bgra)
    res = fuse(ir, vis, "-o", tmp_path / "out", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "see_through.png: transparency dropped" in warnings[0], res.stderr


def _damaged_inputs(root: Path) -> tuple[Path, Path]:
    """A PNG with a broken IDAT stream (libpng errors), a truncated PNG, and a JPEG with a damaged scan that
    libjpeg decodes anyway (with a warning)."""
    import cv2

    ir, vis = make_pairs(root, names=("good", "broken", "cut"), size=(64, 80))
    data = bytearray((ir / "broken.png").read_bytes())
    data[200:260] = bytes(60)
    (ir / "broken.png").write_bytes(bytes(data))
    cut = (ir / "cut.png").read_bytes()
    (ir / "cut.png").write_bytes(cut[: len(cut) // 2])
    smooth = cv2.GaussianBlur(RNG.integers(0, 256, (64, 80)).astype(np.uint8), (9, 9), 3)
    ok, buf = cv2.imencode(".jpg", smooth)
    jpeg = bytearray(buf.tobytes())
    jpeg[len(jpeg) // 2: len(jpeg) // 2 + 40] = bytes(40)
    (ir / "jpeg.jpg").write_bytes(bytes(jpeg))
    write_image(vis / "jpeg.png", smooth)
    return ir, vis


def test_codec_chatter_never_reaches_stderr_in_a_real_process(tmp_path, tiny_weights):
    ir, vis = _damaged_inputs(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "diffmf_cli", "fuse", str(ir), str(vis), "-o", str(tmp_path / "out"),
                           "--weights", str(tiny_weights)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "libpng" not in proc.stderr.replace("decoder said: libpng", "")
    assert not [line for line in lines if not line.startswith(("failed: ", "warning: "))], proc.stderr
    failed = sorted(line for line in lines if line.startswith("failed: "))
    assert len(failed) == 2 and "broken.png" in failed[0] and "cut.png" in failed[1]
    assert "the decoder said: libpng error" in failed[0]  # what libpng said, inside our one line
    assert [line for line in lines if line.startswith("warning: ")] == [
        line for line in lines if "jpeg.jpg: damaged data, decoded anyway" in line]
    assert "2 fused" in proc.stdout


def test_progress_within_one_large_image_on_a_terminal(tmp_path, tiny_weights):
    """A large image fused in tiles shows how far it is (the issue: a 4000x6000 pair sat at 0/1 for minutes)."""
    import pty

    ir, vis = make_pairs(tmp_path, names=("big",), size=(200, 260))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "diffmf_cli", "fuse", str(ir), str(vis), "-o",
                             str(tmp_path / "out"), "--tile", "64", "--weights", str(tiny_weights)],
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "tiles of this image" in screen
    from diffmf_cli.tiling import tile_boxes

    total = len(tile_boxes(200, 260, 64, 64))  # the engine's own count (the overlap is capped at a quarter tile)
    import re

    assert re.search(rf"\b\d+/{total}\b", screen), screen
    assert "1 fused" in proc.stdout.read().decode()
