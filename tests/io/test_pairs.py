"""Pairing by stem, pair lists and shards (diffmf_cli.io.pairs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffmf_cli.errors import UsageError
from diffmf_cli.io.pairs import (
    is_image_file,
    pair_folders,
    parse_shard,
    read_pair_list,
    select_shard,
    shard_of,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_is_image_file_any_case_and_not_hidden():
    for name in ["a.png", "a.PNG", "a.Jpg", "a.jpeg", "a.BMP", "a.tif", "a.TIFF"]:
        assert is_image_file(name), name
    for name in ["a.txt", "a.gif", "a", ".a.png", ".x.png.123.tmp", "png"]:
        assert not is_image_file(name), name


def test_pairs_by_stem_not_by_sort_order(tmp_path):
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    touch(ir / "00123.png"), touch(vis / "00123.jpg")
    touch(ir / "b.PNG"), touch(vis / "b.tiff")
    touch(ir / "only_ir.bmp"), touch(vis / "only_vis.png")
    touch(ir / "notes.txt"), touch(vis / "notes.txt")
    touch(ir / "sub" / "c.png"), touch(vis / "sub" / "c.png")  # ignored without recursion
    got = pair_folders(ir, vis)
    assert [(p.name, p.ir.name, p.vis.name) for p in got.pairs] == [
        ("00123", "00123.png", "00123.jpg"),
        ("b", "b.PNG", "b.tiff"),
    ]
    assert got.unmatched_ir == [ir / "only_ir.bmp"]
    assert got.unmatched_vis == [vis / "only_vis.png"]
    assert got.unmatched == [ir / "only_ir.bmp", vis / "only_vis.png"]
    assert got.ambiguous == {}


def test_recursive_pairs_by_relative_stem(tmp_path):
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    touch(ir / "x" / "1.png"), touch(vis / "x" / "1.jpg")
    touch(ir / "y" / "1.png"), touch(vis / "y" / "1.png")
    touch(ir / "z" / "2.png"), touch(vis / "2.png")  # different folders: no pair
    touch(ir / ".hidden" / "3.png"), touch(vis / ".hidden" / "3.png")
    got = pair_folders(ir, vis, recursive=True)
    assert [p.name for p in got.pairs] == ["x/1", "y/1"]
    assert got.unmatched_ir == [ir / "z" / "2.png"] and got.unmatched_vis == [vis / "2.png"]


def test_same_stem_twice_is_ambiguous_not_guessed(tmp_path):
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    touch(ir / "a.png"), touch(ir / "a.jpg"), touch(vis / "a.png")
    touch(ir / "b.png"), touch(vis / "b.png")
    got = pair_folders(ir, vis)
    assert [p.name for p in got.pairs] == ["b"]
    assert got.ambiguous == {"a": [ir / "a.jpg", ir / "a.png", vis / "a.png"]}
    assert got.unmatched == []


def test_missing_folder_is_usage_error(tmp_path):
    (tmp_path / "vis").mkdir()
    with pytest.raises(UsageError, match="ir.*does not exist"):
        pair_folders(tmp_path / "ir", tmp_path / "vis")
    touch(tmp_path / "file.png")
    with pytest.raises(UsageError, match="not a folder"):
        pair_folders(tmp_path / "file.png", tmp_path / "vis")


def test_pair_list_rows_header_relative_paths_and_outputs(tmp_path):
    lst = tmp_path / "lists" / "pairs.csv"
    lst.parent.mkdir()
    lst.write_text("ir,vis,out\nA/one.png, B/uno.jpg\n# comment\n\n/abs/two.png,/abs/dos.png,res/two.tif\n")
    pairs = read_pair_list(lst)
    assert [(p.name, p.ir, p.vis, p.out) for p in pairs] == [
        ("one", lst.parent / "A/one.png", lst.parent / "B/uno.jpg", None),
        ("res/two", Path("/abs/two.png"), Path("/abs/dos.png"), lst.parent / "res/two.tif"),
    ]


@pytest.mark.parametrize(
    "text, match",
    [
        ("a.png\n", "expected 'ir,vis'"),
        ("a.png,b.png,c.png,d.png\n", "expected 'ir,vis'"),
        ("x/a.png,b.png\ny/a.png,c.png\n", "same output as line 1"),
        ("a.png,b.png,o.png\nc.png,d.png,o.png\n", "same output as line 1"),
    ],
)
def test_bad_pair_list(tmp_path, text, match):
    lst = tmp_path / "p.csv"
    lst.write_text(text)
    with pytest.raises(UsageError, match=match):
        read_pair_list(lst)


def test_missing_pair_list(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_pair_list(tmp_path / "nope.csv")


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard("3/4") == (3, 4)
    for bad in ["4/4", "-1/4", "1/0", "a/b", "1", "1/2/3"]:
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_shards_disjoint_cover_and_stable():
    from diffmf_cli.io.pairs import Pair

    names = [f"img{i:04d}" for i in range(500)]
    pairs = [Pair(n, Path(n), Path(n)) for n in names]
    n = 7
    shards = [select_shard(pairs, k, n) for k in range(n)]
    seen = [p.name for s in shards for p in s]
    assert sorted(seen) == names  # cover, no duplicates
    assert all(40 < len(s) < 105 for s in shards)  # roughly balanced
    # Stable: a pair's shard does not depend on the other pairs present or on their order.
    subset = pairs[::3][::-1]
    for k in range(n):
        assert {p.name for p in select_shard(subset, k, n)} == {p.name for p in shards[k]} & {p.name for p in subset}
    # Stable across processes/releases: a fixed value (sha1 based, not Python's salted hash).
    assert shard_of("img0000", 7) == int.from_bytes(__import__("hashlib").sha1(b"img0000").digest()[:8], "big") % 7


def test_pair_list_from_stdin_is_relative_to_the_current_folder():
    import io

    from diffmf_cli.io.pairs import read_pair_list as read

    pairs = read("-", stdin=io.StringIO("\ufeffir,vis,out\nt/1.png,v/1.png\nt/2.png,v/2.png,o/two.png\n"))
    assert [(p.name, p.ir, p.vis, p.out) for p in pairs] == [
        ("1", Path("t/1.png"), Path("v/1.png"), None),
        ("o/two", Path("t/2.png"), Path("v/2.png"), Path("o/two.png")),
    ]
    with pytest.raises(UsageError, match=r"<stdin>:2: expected"):
        read("-", stdin=io.StringIO("a.png,b.png\nonly-one-cell\n"))


SLURM = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}


def test_shard_auto_reads_the_slurm_array_task():
    assert parse_shard("auto", SLURM) == (2, 4)
    assert parse_shard("auto", {**SLURM, "SLURM_ARRAY_TASK_ID": "5"}) == (0, 4)
    stepped = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "5",
               "SLURM_ARRAY_TASK_STEP": "2"}  # --array=0-8:2
    assert parse_shard("auto", stepped) == (3, 5)


def test_shard_auto_fails_in_one_line_outside_an_array_job():
    with pytest.raises(UsageError, match="not in a SLURM array job") as info:
        parse_shard("auto", {"SLURM_JOB_ID": "12"})
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="not one of 3 evenly stepped tasks"):
        parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1",
                             "SLURM_ARRAY_TASK_COUNT": "3"})  # --array=1,5,9
    with pytest.raises(UsageError, match="whole numbers"):
        parse_shard("auto", {**SLURM, "SLURM_ARRAY_TASK_ID": "x"})
