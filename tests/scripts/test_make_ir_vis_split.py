"""scripts/make_ir_vis_split.py: RoadScene train lists with a random and an anti-correlated group held out,
read back by validate_models.py --ir-lists."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_ir_vis_split import main  # noqa: E402
from test_validate_models import _fake_train_splits  # noqa: E402
import validate_models  # noqa: E402

from diffmf_cli.io.pairs import read_pair_list  # noqa: E402


def test_split_holds_out_anti_correlated_and_random_pairs(tmp_path, tiny_weights, capsys):
    _fake_train_splits(tmp_path / "data")  # roadscene: h1 h2 same1 same2 alike, anti1 anti2 = 255 - IR
    out = tmp_path / "lists"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--anti", "1", "--val", "2"]) == 0
    groups = {g: [p.name for p in read_pair_list(out / f"roadscene_{g}.csv")] for g in ("train", "val", "anti")}
    # Smallest SHA-1 of the name first: the anti-correlated pair first, then the others for validation.
    names = ["h1", "h2", "anti1", "anti2", "same1", "same2"]
    by_hash = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    anti = [n for n in by_hash if n.startswith("anti")][:1]
    val = [n for n in by_hash if n not in anti][:2]
    assert groups["anti"] == anti
    assert sorted(groups["val"]) == sorted(val)
    assert sorted(groups["train"]) == sorted(set(by_hash) - set(anti) - set(val))
    report = json.loads((out / "report.json").read_text())
    assert report["correlation"][groups["anti"][0]] < -0.99
    # Deterministic: a second run writes the same lists.
    first = (out / "roadscene_train.csv").read_text()
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--anti", "1", "--val", "2"]) == 0
    assert (out / "roadscene_train.csv").read_text() == first
    # validate_models.py scores the held-out lists as its RoadScene groups.
    capsys.readouterr()
    means = tmp_path / "means.json"
    assert validate_models.main(["--data", str(tmp_path / "data"), "--ir-lists", str(out), "--json", str(means),
                                 f"tiny={tiny_weights}"]) == 0
    doc = json.loads(means.read_text())
    assert doc["groups"]["roadscene-anti"] == groups["anti"] and doc["groups"]["roadscene-val"] == groups["val"]


def test_split_errors_are_one_line(tmp_path, capsys):
    _fake_train_splits(tmp_path / "data")
    for args, message in ((["--anti", "3"], "only 2 pairs have r < -0.5"),
                          (["--anti", "1", "--val", "5"], "would leave no training pairs"),
                          (["--anti", "-1"], "must be >= 0")):
        assert main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("make_ir_vis_split: error: ") and message in err and err.count("\n") == 1
    (tmp_path / "afile").write_text("")
    assert main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "afile"), "--anti", "1", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert "afile: cannot write the lists" in err and err.count("\n") == 1
    for extra, message in (([], "roadscene_val.csv: not found"), (["--run", str(tmp_path)], "replaces --run"),
                           (["--task", "medical"], "for --task ir-vis only")):
        assert validate_models.main(["--data", str(tmp_path / "data"), "--ir-lists", str(tmp_path / "none"),
                                     *extra, "x=" + __file__]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
