"""The Python API (`from diffmf_cli import Fuser`): arrays as OpenCV reads them in, exactly the bytes that
`diffmf fuse` writes out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app
from diffmf_cli.errors import InputError, UsageError

_register()
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "diffmf_cli" / "samples"
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def fuser(tiny_weights):
    from diffmf_cli import Fuser

    return Fuser(weights=tiny_weights, device="cpu")


def png_bytes(array: np.ndarray) -> bytes:
    """The file `diffmf fuse` writes for `array` (PNG, compression 3)."""
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok
    return buf.tobytes()


def write_inputs(root: Path) -> dict[str, tuple]:
    """Pairs of every kind: gray/colour visible, 8/16 bits, BGRA, odd sizes; name -> (ir_file, vis_file)."""
    cases = {
        "gray8": (RNG.integers(0, 256, (20, 28)).astype(np.uint8), RNG.integers(0, 256, (20, 28)).astype(np.uint8)),
        "colour8": (RNG.integers(0, 256, (17, 23)).astype(np.uint8),
                    RNG.integers(0, 256, (17, 23, 3)).astype(np.uint8)),
        "colour16": (RNG.integers(0, 65536, (12, 30)).astype(np.uint16),
                     RNG.integers(0, 65536, (12, 30, 3)).astype(np.uint16)),
        "bgra_ir": (RNG.integers(0, 256, (9, 9, 4)).astype(np.uint8), RNG.integers(0, 256, (9, 9)).astype(np.uint8)),
    }
    for name, (ir, vis) in cases.items():
        (root / "ir").mkdir(exist_ok=True), (root / "vis").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "ir" / f"{name}.png"), ir)
        cv2.imwrite(str(root / "vis" / f"{name}.png"), vis)
    return cases


def test_import_is_light_and_fuser_is_exported():
    import diffmf_cli

    assert "Fuser" in diffmf_cli.__all__ and diffmf_cli.Fuser.__name__ == "Fuser"


@pytest.mark.parametrize("gray", [False, True])
def test_fuse_gives_the_cli_bytes(fuser, tiny_weights, tmp_path, gray):
    write_inputs(tmp_path)
    args = ["fuse", str(tmp_path / "ir"), str(tmp_path / "vis"), "-o", str(tmp_path / "out"),
            "--weights", str(tiny_weights), "--device", "cpu", "--json"] + (["--gray"] if gray else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fused"] == 4
    for out in sorted((tmp_path / "out").glob("[!.]*")):
        ir = cv2.imread(str(tmp_path / "ir" / out.name), cv2.IMREAD_UNCHANGED)
        vis = cv2.imread(str(tmp_path / "vis" / out.name), cv2.IMREAD_UNCHANGED)
        fused = fuser.fuse(ir, vis, gray=gray)
        on_disk = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert fused.dtype == on_disk.dtype and fused.shape == on_disk.shape, out.name
        assert png_bytes(fused) == out.read_bytes(), out.name
        colour = vis.ndim == 3 and not gray
        assert fused.ndim == (3 if colour else 2)
        assert fused.dtype == (np.uint16 if "16" in out.name else np.uint8)


def test_fuse_batch_equals_one_pair_at_a_time(fuser):
    irs = [RNG.integers(0, 256, (16, 16)).astype(np.uint8) for _ in range(3)]
    viss = [RNG.integers(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(3)]
    batched = fuser.fuse_batch(irs, viss)
    assert len(batched) == 3
    for ir, vis, got in zip(irs, viss, batched):
        assert np.array_equal(got, fuser.fuse(ir, vis))
    assert fuser.fuse_batch([], []) == []


def test_bad_arrays_raise_typed_errors(fuser, tiny_weights):
    from diffmf_cli import Fuser

    ir = np.zeros((8, 8), np.uint8)
    with pytest.raises(InputError, match=r"ir\[0\] is 8x8 but vis\[0\] is 9x8"):
        fuser.fuse(ir, np.zeros((8, 9), np.uint8))
    with pytest.raises(InputError, match="unsupported pixel type float32"):
        fuser.fuse(ir.astype(np.float32), ir)
    with pytest.raises(InputError, match="pairs of one size only"):
        fuser.fuse_batch([ir, np.zeros((4, 4), np.uint8)], [ir, np.zeros((4, 4), np.uint8)])
    with pytest.raises(UsageError, match="--model nope"):
        Fuser("nope")
    with pytest.raises(UsageError, match="tile"):
        Fuser(weights=tiny_weights, tile="big")


def test_shipped_model_on_the_sample_pairs_gives_the_cli_bytes(tmp_path):
    from diffmf_cli import Fuser
    from diffmf_cli.errors import CheckpointError

    try:
        fuser = Fuser("ir-vis", device="cpu")
    except CheckpointError as exc:
        pytest.skip(f"the shipped IR-visible weights are not installed ({exc})")
    names = ["roadscene_FLIR_00211", "tno_07"]  # a colour and a gray visible image
    listing = tmp_path / "pairs.csv"
    listing.write_text("".join(f"{SAMPLES}/ir/{n}{ext},{SAMPLES}/vis/{n}{ext}\n"
                               for n, ext in zip(names, (".jpg", ".png"))))
    res = CliRunner().invoke(app, ["fuse", "--pairs", str(listing), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for name, ext in zip(names, (".jpg", ".png")):
        ir = cv2.imread(str(SAMPLES / "ir" / f"{name}{ext}"), cv2.IMREAD_UNCHANGED)
        vis = cv2.imread(str(SAMPLES / "vis" / f"{name}{ext}"), cv2.IMREAD_UNCHANGED)
        assert png_bytes(fuser.fuse(ir, vis)) == (tmp_path / "out" / f"{name}.png").read_bytes()


def test_run_never_replaces_an_unrecorded_file_beside_the_inputs(fuser, tmp_path):
    """`Fuser.run` shares the CLI's rule: a pair's own output may not replace a file diffmf did not write in
    an input's folder (it may be a source), overwrite or not."""
    from diffmf_cli.io.pairs import Pair

    write_inputs(tmp_path)
    other = tmp_path / "ir" / "gray8.png"  # a source this call does not read
    before = other.read_bytes()
    pair = Pair("colour8", tmp_path / "ir" / "colour8.png", tmp_path / "vis" / "colour8.png", other)
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="without a diffmf record"):
            list(fuser.run([pair], overwrite=overwrite))
    assert other.read_bytes() == before


def test_run_takes_path_tuples_and_a_string_folder(fuser, tmp_path, monkeypatch):
    """The README's call: (ir, vis) tuples of strings and a string output folder, as the CLI writes them."""
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    results = list(fuser.run([("ir/gray8.png", "vis/gray8.png"), ("ir/colour8.png", "vis/colour8.png", "x/c.png")],
                             "fused"))
    assert [(r.name, r.status) for r in results] == [("gray8", "fused"), ("colour8", "fused")]
    assert (tmp_path / "fused" / "gray8.png").is_file() and (tmp_path / "x" / "c.png").is_file()
    with pytest.raises(TypeError, match=r"an \(ir, vis\[, out\]\) tuple"):
        list(fuser.run(["ir/gray8.png"], "fused"))


def test_run_refuses_two_pairs_with_one_output(fuser, tmp_path, monkeypatch):
    """Tuples are named after the IR file's stem: a/x.png and b/x.png would both write fused/x.png."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_inputs(tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"the output of both a/ir/gray8.png and b/ir/gray8.png"):
        list(fuser.run([("a/ir/gray8.png", "a/vis/gray8.png"), ("b/ir/gray8.png", "b/vis/gray8.png")], "fused"))
    assert not (tmp_path / "fused").exists()
