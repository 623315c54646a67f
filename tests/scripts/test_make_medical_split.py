"""scripts/make_medical_split.py: the Harvard training lists without the CDDFuse test slices."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_medical_split import harvard_train_pairs, main, pixel_hash  # noqa: E402


def test_pixel_hash_ignores_gray_storage():
    g = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    assert pixel_hash(g) == pixel_hash(np.stack([g, g, g], axis=2))
    assert pixel_hash(g) != pixel_hash(g.T.copy())


def _fake_harvard(root):
    rng = np.random.default_rng(3)
    slices = [cv2.GaussianBlur(rng.integers(0, 256, (32, 32), dtype=np.uint8), (5, 5), 2) for _ in range(4)]
    for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):
        for sub in ("a", "b"):
            (root / "harvard" / kind / sub).mkdir(parents=True)
            (root / "harvard_cddfuse" / kind / sub).mkdir(parents=True)
        for i, s in enumerate(slices):
            cv2.imwrite(str(root / "harvard" / kind / "a" / f"{i}.png"), s)
            cv2.imwrite(str(root / "harvard" / kind / "b" / f"{i}.png"), 255 - s)
        (root / "harvard" / kind / "train_split_xianming-gu.txt").write_text("0.png\n1.png\n2.png\n")
    # CDDFuse copies: slice 0 exactly (stored as 3 channels), slice 1 with slightly different pixels.
    cv2.imwrite(str(root / "harvard_cddfuse" / "MRI_CT" / "a" / "11.png"), cv2.merge([slices[0]] * 3))
    near = np.clip(slices[1].astype(int) + rng.integers(-1, 2, slices[1].shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(root / "harvard_cddfuse" / "MRI_SPECT" / "a" / "12.png"), near)
    unrelated = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    for kind in ("MRI_CT", "MRI_SPECT"):
        cv2.imwrite(str(root / "harvard_cddfuse" / kind / "b" / f"{11 if kind == 'MRI_CT' else 12}.png"),
                    unrelated)


def test_medical_split_drops_exact_and_near_copies_of_test_slices(tmp_path):
    _fake_harvard(tmp_path)
    pairs, report = harvard_train_pairs(tmp_path)
    for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):
        # The same MRI slices are in every type here, so every type loses slices 0 (exact) and 1 (near).
        assert [p.name for p in pairs[kind]] == ["2"]
        assert report["types"][kind]["dropped_names"] == {"0": "exact", "1": "near"}
        assert report["types"][kind]["listed"] == 3
    _, strict = harvard_train_pairs(tmp_path, near=1.01)  # exact matching only
    assert strict["types"]["MRI_CT"]["dropped_names"] == {"0": "exact"}


def test_val_per_type_moves_pairs_of_every_type_into_validation_lists(tmp_path):
    _fake_harvard(tmp_path / "d")
    for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):  # every slice is a training slice here
        (tmp_path / "d" / "harvard" / kind / "train_split_xianming-gu.txt").write_text("2.png\n3.png\n")
    out = tmp_path / "lists"
    assert main(["--data", str(tmp_path / "d"), "--out", str(out), "--val-per-type", "1"]) == 0
    for kind in ("MRI_CT", "MRI_PET", "MRI_SPECT"):
        train = (out / f"harvard_train_{kind}.csv").read_text().splitlines()
        val = (out / f"harvard_val_{kind}.csv").read_text().splitlines()
        assert train[0] == val[0] == "ir,vis" and len(train) == len(val) == 2
        assert train[1] != val[1]  # one pair each, never both
        # The choice depends on the names only: sha1("3") < sha1("2").
        assert val[1].split(",")[0].endswith("/a/3.png")
    assert main(["--data", str(tmp_path / "d"), "--out", str(out), "--val-per-type", "-1"]) == 2
    assert main(["--data", str(tmp_path / "d"), "--out", str(out), "--val-per-type", "2"]) == 2  # none left
    assert main(["--data", str(tmp_path / "d"), "--out", str(out)]) == 0  # again without: the old lists go
    assert not list(out.glob("harvard_val_*.csv"))
    assert len((out / "harvard_train_MRI_CT.csv").read_text().splitlines()) == 3


@pytest.mark.data
def test_medical_split_on_the_real_data(shared_data):
    pairs, report = harvard_train_pairs(shared_data)
    kept = {k: v["kept"] for k, v in report["types"].items()}
    dropped = {k: v["dropped"] for k, v in report["types"].items()}
    # Measured once (see README): CT loses 13 near-copies, SPECT 40 exact + 22 near, PET none.
    assert dropped == {"MRI_CT": 13, "MRI_PET": 0, "MRI_SPECT": 62}
    assert kept == {"MRI_CT": 147, "MRI_PET": 245, "MRI_SPECT": 271}
    assert all(len(pairs[k]) == kept[k] for k in kept)
