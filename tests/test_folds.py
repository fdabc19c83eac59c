"""`segkd split`: official and sequence-blocked folds, guard frames, validation, and CamVid's folds."""

import json
import re

import numpy as np
import pytest
from test_data_camvid import make_segnet, prepared_camvid

from segkd.classes import CLASS_NAMES
from segkd.data.folds import class_pixels, load_folds, share_table, split
from segkd.data.prepare import load_prepared, prepare
from segkd.errors import UserError


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    cfg = {"name": "synthetic", "height": 24, "width": 32, "synthetic": {"sequences": 3, "frames": 9, "seed": 0}}
    return prepare(cfg, tmp_path_factory.mktemp("folds") / "synthetic")


def assert_sequence_blocked(folds: dict, manifest: dict, k: int, guard: int) -> None:
    """Every kept frame is tested exactly once; folds share nothing; no frame of one fold's test block is
    next to (consecutive in its sequence's sorted frame list) a frame of another fold's test block."""
    items = manifest["items"]
    assert folds["k"] == k == len(folds["folds"]) and folds["guard"] == guard
    tests = [set(f["test"]) for f in folds["folds"]]
    dropped = set(folds["dropped"])
    assert sum(len(t) for t in tests) == len(set().union(*tests))  # disjoint test blocks
    assert set().union(*tests) | dropped == set(range(len(items))) and not dropped & set().union(*tests)
    for f, test in zip(folds["folds"], tests):
        assert set(f["train"]) == set().union(*tests) - test
        assert f["train"] == sorted(f["train"]) and f["test"] == sorted(f["test"])
    fold_of = {i: j for j, t in enumerate(tests) for i in t}
    sequences = {}
    for it in items:
        sequences.setdefault(it["sequence"], []).append(it)
    for frames in sequences.values():
        order = [it["index"] for it in sorted(frames, key=lambda it: it["frame"])]
        for a, b in zip(order, order[1:]):
            if guard and a in fold_of and b in fold_of:
                assert fold_of[a] == fold_of[b], "adjacent frames in different folds"
        # every fold tests one contiguous block of every sequence
        blocks = [fold_of[i] for i in order if i in fold_of]
        assert blocks == sorted(blocks) and set(blocks) == set(range(k))
    assert len(dropped) == guard * (k - 1) * len(sequences)


@pytest.mark.parametrize("k,guard", [(2, 2), (3, 1), (2, 0), (2, 3)])
def test_sequence_blocked(synthetic_dir, tmp_path, k, guard):
    folds = split(synthetic_dir, tmp_path / "folds.json", "sequence-blocked", k=k, guard=guard)
    assert_sequence_blocked(folds, load_prepared(synthetic_dir).manifest, k, guard)
    assert load_folds(tmp_path / "folds.json", num_items=27) == folds


def test_guard_frames_sit_at_the_block_boundary(synthetic_dir, tmp_path):
    folds = split(synthetic_dir, tmp_path / "f.json", "sequence-blocked", k=2, guard=2)
    # 9 frames per sequence: block 0 = frames 0..2, dropped 3 and 4, block 1 = frames 5..8
    frames = {it["index"]: (it["sequence"], it["frame"]) for it in load_prepared(synthetic_dir).manifest["items"]}
    assert sorted(f for s, f in map(frames.get, folds["dropped"]) if s == "synth00") == [3, 4]
    assert sorted(frames[i][1] for i in folds["folds"][0]["test"] if frames[i][0] == "synth01") == [0, 1, 2]


def test_split_is_deterministic_and_atomic(synthetic_dir, tmp_path):
    split(synthetic_dir, tmp_path / "a.json", "sequence-blocked")
    split(synthetic_dir, tmp_path / "b.json", "sequence-blocked")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_prints_counts_and_class_shares(synthetic_dir, tmp_path, capsys):
    folds = split(synthetic_dir, tmp_path / "f.json", "sequence-blocked", k=2, guard=2)
    out = capsys.readouterr().out
    assert "f0 train" in out and "f1 test" in out and "void" in out and "Bicyclist" in out
    counts = re.search(r"^images\s+(.*)$", out, re.M).group(1).split()
    assert [int(c) for c in counts] == [len(f[p]) for f in folds["folds"] for p in ("train", "test")]
    table = share_table(folds, class_pixels(load_prepared(synthetic_dir).labels))
    rows = [line for line in table.splitlines() if line.endswith("%")]
    assert len(rows) == len(CLASS_NAMES) + 1
    shares = np.array([[float(v) for v in re.findall(r"([\d.]+)%", r)] for r in rows])
    assert np.allclose(shares.sum(axis=0), 100, atol=0.1)


def test_official_split(tmp_path):
    prepared = prepare({"name": "camvid", "root": str(make_segnet(tmp_path / "cv")), "height": 6, "width": 8},
                       tmp_path / "prepared")
    items = load_prepared(prepared).manifest["items"]
    folds = split(prepared, tmp_path / "folds.json", "official", k=5, guard=3)
    assert (folds["k"], folds["guard"], folds["dropped"]) == (1, 0, [])
    assert folds["folds"][0]["train"] == [it["index"] for it in items if it["split"] in ("train", "val")]
    assert folds["folds"][0]["test"] == [it["index"] for it in items if it["split"] == "test"]


@pytest.mark.parametrize("strategy,kwargs,expect", [
    ("random", {}, "folds.strategy: unknown fold strategy 'random'"),
    ("official", {}, "'official' needs the dataset's own train and test splits"),
    ("sequence-blocked", {"k": 1}, "folds.k"),
    ("sequence-blocked", {"k": 4, "guard": 2}, "sequence 'synth00' has 9 frames, too few"),
])
def test_split_errors_write_nothing(synthetic_dir, tmp_path, strategy, kwargs, expect):
    with pytest.raises(UserError, match=expect):
        split(synthetic_dir, tmp_path / "folds.json", strategy, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_split_needs_a_prepared_dataset(tmp_path):
    with pytest.raises(UserError, match="prepared dataset not found"):
        split(tmp_path / "none", tmp_path / "folds.json", "official")


@pytest.mark.parametrize("edit,expect", [
    (lambda f: f.pop("dropped"), "missing key 'dropped'"),
    (lambda f: f.update(strategy="random"), "unknown fold strategy"),
    (lambda f: f["folds"][0]["train"].append(f["folds"][0]["test"][0]), "in both train and test"),
    (lambda f: f["folds"][1]["test"].append(f["dropped"][0]), "listed as dropped"),
    (lambda f: f["folds"][0]["test"].append(99), "index out of range"),
    (lambda f: f.update(k=3), "k: says 3"),
    (lambda f: f["folds"][1].update(fold=0), r"folds\[1\]"),
])
def test_load_folds_validates(synthetic_dir, tmp_path, edit, expect):
    folds = split(synthetic_dir, tmp_path / "folds.json", "sequence-blocked")
    edit(folds)
    (tmp_path / "folds.json").write_text(json.dumps(folds))
    with pytest.raises(UserError, match=expect):
        load_folds(tmp_path / "folds.json", num_items=27)


def test_load_folds_missing_or_corrupt(tmp_path):
    with pytest.raises(UserError, match="folds file not found"):
        load_folds(tmp_path / "folds.json")
    (tmp_path / "folds.json").write_text("[1, 2")
    with pytest.raises(UserError, match="corrupt folds file"):
        load_folds(tmp_path / "folds.json")


# ---------------------------------------------------------------------------- the real CamVid copy
def test_camvid_official(camvid_root, tmp_path_factory, tmp_path):
    folds = split(prepared_camvid(camvid_root, tmp_path_factory), tmp_path / "camvid.json", "official")
    assert len(folds["folds"]) == 1
    assert (len(folds["folds"][0]["train"]), len(folds["folds"][0]["test"])) == (367 + 101, 233)


def test_camvid_sequence_blocked(camvid_root, tmp_path_factory, tmp_path):
    prepared = prepared_camvid(camvid_root, tmp_path_factory)
    folds = split(prepared, tmp_path / "camvid.json", "sequence-blocked", k=2, guard=2)
    assert_sequence_blocked(folds, load_prepared(prepared).manifest, k=2, guard=2)
    assert not set(folds["folds"][0]["test"]) & set(folds["folds"][1]["test"])
    assert len(folds["dropped"]) == 4 * 2  # four sequences, one boundary each
