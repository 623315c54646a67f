"""`diffmf evaluate --combine`: results of disjoint shards combine into exactly the all-at-once result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from diffmf_cli.cli.app import _register, app

_register()
runner = CliRunner()
STEMS = [f"img{i:02d}" for i in range(7)]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """ir/, vis/, two methods' fused folders, and each method's images split into three shard folders."""
    root = tmp_path_factory.mktemp("combine")
    rng = np.random.default_rng(3)
    for d in ("ir", "vis", "avg", "max"):
        (root / d).mkdir()
    for i, stem in enumerate(STEMS):
        ir = np.clip(rng.normal(110 + 5 * i, 30, (24, 30)), 0, 255).astype(np.uint8)
        vis = np.clip(rng.normal(90, 40, (24, 30, 3)), 0, 255).astype(np.uint8)
        gray = cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(root / "ir" / f"{stem}.png"), ir)
        cv2.imwrite(str(root / "vis" / f"{stem}.png"), vis)
        cv2.imwrite(str(root / "avg" / f"{stem}.png"), ((ir.astype(int) + gray) // 2).astype(np.uint8))
        cv2.imwrite(str(root / "max" / f"{stem}.png"), np.maximum(ir, gray))
        if i == 4:  # a constant image: some metrics are NaN there (excluded from means)
            cv2.imwrite(str(root / "avg" / f"{stem}.png"), np.full((24, 30), 128, np.uint8))
    for k in range(3):
        for method in ("avg", "max"):
            shard = root / f"{method}{k}"
            shard.mkdir()
            for stem in STEMS[k::3]:
                shutil.copy(root / method / f"{stem}.png", shard / f"{stem}.png")
    return root


def evaluate(*args):
    res = runner.invoke(app, ["evaluate", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_shards_combine_to_exactly_the_single_run(scored, tmp_path, fmt):
    root = scored
    whole = evaluate(root / "avg", root / "ir", root / "vis", "-f", "json")
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part{k}.{fmt}")
        evaluate(root / f"avg{k}", root / "ir", root / "vis", "-f", fmt, "-o", parts[-1])
    combined = evaluate("--combine", *parts, "-f", "json")
    assert json.loads(combined)["summary"]["EN"]["n"] == len(STEMS)
    a, b = json.loads(combined), json.loads(whole)
    assert (a.pop("method"), b.pop("method")) == ("avg0", "avg")  # named after the first shard's folder
    assert a == b
    assert json.dumps(a) == json.dumps(b)  # same order, same bits
    assert json.loads(evaluate("--combine", *parts[::-1], "-f", "json"))["summary"] == b["summary"]  # any order
    assert "(7 images)" in evaluate("--combine", *parts)


def test_several_methods_combine_too(scored, tmp_path):
    root = scored
    whole = evaluate(root / "ir", root / "vis", "--fused", f"avg={root / 'avg'}", "--fused", f"max={root / 'max'}",
                     "-f", "csv")
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"p{k}.json")
        evaluate(root / "ir", root / "vis", "--fused", f"avg={root / f'avg{k}'}", "--fused",
                 f"max={root / f'max{k}'}", "-f", "json", "-o", parts[-1])
    assert evaluate("--combine", *parts, "-f", "csv") == whole


def test_overlapping_or_mismatched_results_are_refused(scored, tmp_path):
    root = scored
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    evaluate(root / "avg0", root / "ir", root / "vis", "-f", "json", "-o", a)
    res = runner.invoke(app, ["evaluate", "--combine", str(a), str(a)])
    assert res.exit_code == 2 and "is in both" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    evaluate(root / "avg1", root / "ir", root / "vis", "-f", "json", "-m", "EN,SD", "-o", b)
    res = runner.invoke(app, ["evaluate", "--combine", str(a), str(b)])
    assert res.exit_code == 2 and "has metrics EN,SD" in res.stderr
    (tmp_path / "junk.txt").write_text("hello\n")
    res = runner.invoke(app, ["evaluate", "--combine", str(tmp_path / "junk.txt")])
    # nothing can be combined from it: exit 2 (as for any command that could not run), one line
    assert res.exit_code == 2 and "not a diffmf evaluate JSON or CSV result" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_combine_never_writes_over_a_result_it_reads(scored, tmp_path):
    root = scored
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    evaluate(root / "avg0", root / "ir", root / "vis", "-f", "json", "-o", a)
    evaluate(root / "avg1", root / "ir", root / "vis", "-f", "json", "-o", b)
    before = a.read_bytes()
    res = runner.invoke(app, ["evaluate", "--combine", str(a), str(b), "-f", "csv", "-o", str(a)])
    assert res.exit_code == 2 and "is one of the results being combined" in res.stderr
    assert a.read_bytes() == before
