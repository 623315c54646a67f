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
def tiny_weights(tmp_path_factory) -> Path:
    from diffmf_cli.models import create_model
    from diffmf_cli.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(path, create_model("tiny"), {"name": "tiny test model (random)"})
    return path


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
