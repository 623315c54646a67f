"""scripts/validate_models.py: validation groups from the train splits, the pixel maximum beside every model."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from validate_models import cells_below, main, resampled, score_group  # noqa: E402


def _image(seed: int, size=(48, 56)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, size, dtype=np.uint8), (7, 7), 2)


def _fake_train_splits(root: Path) -> None:
    """roadscene (two held out, two anti-correlated, two alike), llvip (7 pairs), msrs (2 pairs)."""
    for ds, names in (("roadscene", ["h1", "h2", "anti1", "anti2", "same1", "same2"]),
                      ("llvip", [f"{i:02d}" for i in range(7)]), ("msrs", ["m1", "m2"])):
        for sub in ("ir", "vi"):
            (root / ds / "train" / sub).mkdir(parents=True)
        for i, name in enumerate(names):
            ir = _image(i + 10 * len(ds))
            vis = 255 - ir if name.startswith("anti") else cv2.addWeighted(ir, 0.7, _image(i + 99), 0.3, 0)
            cv2.imwrite(str(root / ds / "train" / "ir" / f"{name}.png"), ir)
            cv2.imwrite(str(root / ds / "train" / "vi" / f"{name}.png"), cv2.merge([vis, vis, vis]))


def test_ir_vis_groups_and_json(tmp_path, tiny_weights, capsys):
    _fake_train_splits(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"validation_pairs": ["h1", "h2"]}))
    out = tmp_path / "means.json"
    code = main(["--data", str(tmp_path / "data"), "--run", str(run), "--json", str(out),
                 f"tiny={tiny_weights}"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["groups"] == {"roadscene-val": ["h1", "h2"], "roadscene-anti": ["anti1", "anti2"],
                             "llvip": ["00", "06"], "msrs": ["m1", "m2"]}
    assert set(doc["means"]) == {"max", "tiny"}
    # The pixel maximum of a pair and its negative folds it about mid-grey: half the spread of its source.
    ir = cv2.imread(str(tmp_path / "data/roadscene/train/ir/anti1.png"), cv2.IMREAD_GRAYSCALE).astype(float)
    folded = np.maximum(ir, 255 - ir)
    ir2 = cv2.imread(str(tmp_path / "data/roadscene/train/ir/anti2.png"), cv2.IMREAD_GRAYSCALE).astype(float)
    expect = (folded.std() + np.maximum(ir2, 255 - ir2).std()) / 2
    assert doc["means"]["max"]["roadscene-anti"]["SD"] == pytest.approx(expect, rel=1e-6)
    assert all(np.isfinite(v) for v in doc["means"]["tiny"]["msrs"].values())
    printed = capsys.readouterr().out
    assert "### roadscene-anti (2 pairs)" in printed and "| tiny |" in printed and "| max |" in printed


def _medical_lists(tmp_path) -> Path:
    lists = tmp_path / "lists"
    (lists / "img").mkdir(parents=True)
    for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):
        rows = []
        for i in range(2):
            a, b = f"img/{kind}_{i}_a.png", f"img/{kind}_{i}_b.png"
            cv2.imwrite(str(lists / a), _image(i))
            cv2.imwrite(str(lists / b), _image(i + 50))
            rows.append({"ir": a, "vis": b})
        with open(lists / f"harvard_val_{kind}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["ir", "vis"])
            writer.writeheader()
            writer.writerows(rows)
    return lists


def test_medical_groups_count_cells_below_the_maximum(tmp_path, tiny_weights, capsys):
    lists = _medical_lists(tmp_path)
    assert main(["--task", "medical", "--lists", str(lists), f"tiny={tiny_weights}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("tiny: ") and "cells below the pixel maximum" in last


def test_resampled_groups_score_resampled_sources(tmp_path, tiny_weights, capsys):
    """A resampled group scores exactly what the plain group scores on files resampled beforehand: the same
    resampled pixels reach the metrics and (in OpenCV's colour order) the model. Colour visible images."""
    lists = tmp_path / "lists"
    pre = tmp_path / "pre"
    for root in (lists, pre):
        (root / "img").mkdir(parents=True)
    for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):
        rows = []
        for i in range(2):
            a, b = f"img/{kind}_{i}_a.png", f"img/{kind}_{i}_b.png"
            mri, colour = _image(i), cv2.merge([_image(i + 50), _image(i + 60), _image(i + 70)])  # BGR
            cv2.imwrite(str(lists / a), mri)
            cv2.imwrite(str(lists / b), colour)
            cv2.imwrite(str(pre / a), resampled(mri, 0.5))
            cv2.imwrite(str(pre / b), resampled(colour, 0.5))  # per channel: the order does not matter
            rows.append({"ir": a, "vis": b})
        for root in (lists, pre):
            with open(root / f"harvard_val_{kind}.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, ["ir", "vis"])
                writer.writeheader()
                writer.writerows(rows)
    out, ref = tmp_path / "m.json", tmp_path / "ref.json"
    assert main(["--task", "medical", "--lists", str(lists), "--resampled", "0.5", "--json", str(out),
                 f"tiny={tiny_weights}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("tiny: ") and lines[-2].count("resampled") == 0
    assert lines[-1].startswith("tiny: ") and "cells below the pixel maximum on the resampled groups" in lines[-1]
    assert main(["--task", "medical", "--lists", str(pre), "--json", str(ref), f"tiny={tiny_weights}"]) == 0
    doc, expected = json.loads(out.read_text()), json.loads(ref.read_text())["means"]
    assert doc["resampled"] == 0.5
    for method in ("max", "tiny"):
        for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):
            got, want = doc["means"][method][f"{kind} resampled"], expected[method][kind]
            assert got.keys() == want.keys()
            assert all(got[k] == want[k] or (np.isnan(got[k]) and np.isnan(want[k])) for k in got), (method, kind)
        assert doc["means"][method]["MRI_PET"] != doc["means"][method]["MRI_PET resampled"]
    for bad in ("0", "1", "1.5"):
        assert main(["--task", "medical", "--lists", str(lists), "--resampled", bad, f"tiny={tiny_weights}"]) == 2
        assert "--resampled must be between 0 and 1" in capsys.readouterr().err
    # The model gets the pixels in OpenCV's order, as `diffmf fuse` reads the files (colour matters for Y).
    from diffmf_cli import Fuser
    from diffmf_cli.io.pairs import read_pair_list
    from diffmf_cli.metrics.evaluation import read_for_metrics
    from diffmf_cli.metrics.registry import compute_metrics

    pair = read_pair_list(pre / "harvard_val_MRI_PET.csv")[0]
    fuser = Fuser(weights=tiny_weights, device="cpu")
    fused = fuser.fuse(cv2.imread(str(pair.ir), cv2.IMREAD_UNCHANGED), cv2.imread(str(pair.vis), cv2.IMREAD_UNCHANGED),
                       gray=True).astype(np.float64)
    direct, _ = compute_metrics(fused, read_for_metrics(pair.ir)[0], read_for_metrics(pair.vis)[0], ("SD", "VIF"))
    scored = score_group([pair], {"tiny": fuser})["tiny"]
    assert scored["SD"] == direct["SD"] and scored["VIF"] == direct["VIF"]
    # A factor that rounds back to the image's own size would score the plain pairs again: refused.
    assert main(["--task", "medical", "--lists", str(lists), "--resampled", "0.995", f"tiny={tiny_weights}"]) == 2
    assert "at its size; use a smaller factor" in capsys.readouterr().err


def test_resampling_keeps_size_and_type_and_softens_hard_edges():
    step = np.zeros((40, 50, 3), np.uint8)
    step[:, 25:] = 255
    out = resampled(step, 0.8)
    assert out.shape == step.shape and out.dtype == np.uint8
    values = set(np.unique(out).tolist())
    assert {0, 255} <= values and len(values) > 2  # the edge now has values between its two sides
    deep = np.zeros((30, 40), np.uint16)
    deep[:, 20:] = 65535
    out = resampled(deep, 0.5)
    assert out.dtype == np.uint16 and len(np.unique(out)) > 2 and out.max() == 65535


def test_cells_below_and_bad_arguments(tmp_path, tiny_weights, capsys):
    top = {"CT": {"VIF": 0.6, "SD": 90.0}}
    assert cells_below({"CT": {"VIF": 0.5, "SD": 91.0}}, top, ("VIF", "SD")) == ["CT VIF"]
    assert main(["--task", "medical", "--lists", str(tmp_path), f"tiny={tiny_weights}"]) == 2
    assert "harvard_val_MRI_CT.csv: not found" in capsys.readouterr().err
    for bad, message in (("tiny", "expected NAME=WEIGHTS_FILE"), ("max=" + str(tiny_weights), "not 'max'"),
                         ("x=" + str(tmp_path / "missing.safetensors"), "weights file not found")):
        assert main(["--data", str(tmp_path), bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("validate_models: error: ") and message in err and err.count("\n") == 1
    # A run record without held-out pairs, or not JSON: one line, exit 2, before anything is fused.
    _fake_train_splits(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    for text, message in (("{}", "roadscene-val: no pairs"), ("not json", "not a training run's data record")):
        (run / "data.json").write_text(text)
        assert main(["--data", str(tmp_path / "data"), "--run", str(run), f"tiny={tiny_weights}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["--threads", "0", f"tiny={tiny_weights}"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert main(["--json", str(tmp_path / "no" / "m.json"), f"tiny={tiny_weights}"]) == 2
    assert "does not exist" in capsys.readouterr().err
