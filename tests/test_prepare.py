"""`segkd prepare`: arrays + manifest, idempotence, atomic output, clear errors, and the real CamVid copy."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_camvid import make_segnet, prepared_camvid

from segkd.classes import CLASS_NAMES, IGNORE_INDEX
from segkd.data import synthetic
from segkd.data.prepare import IMAGES, LABELS, MANIFEST, load_prepared, prepare
from segkd.errors import UserError

SYN = {"name": "synthetic", "root": None, "height": 48, "width": 64,
       "synthetic": {"sequences": 2, "frames": 6, "seed": 0}}


def camvid_cfg(root, height=6, width=8):
    return {"name": "camvid", "root": str(root), "height": height, "width": width}


def mtimes(path: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_synthetic_prepare_matches_the_generator(tmp_path):
    out = prepare(SYN, tmp_path / "prepared" / "synthetic")
    data = load_prepared(out)
    assert data.images.shape == (12, 48, 64, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (12, 48, 64) and data.labels.dtype == np.uint8
    assert isinstance(data.images, np.memmap) and not data.images.flags.writeable
    m = data.manifest
    assert (m["dataset"], m["height"], m["width"], m["classes"]) == ("synthetic", 48, 64, list(CLASS_NAMES))
    item = m["items"][7]
    assert {k: item[k] for k in ("index", "id", "split", "sequence", "frame", "shape")} == {
        "index": 7, "id": "synth01_0001", "split": "train", "sequence": "synth01", "frame": 1, "shape": [48, 64]}
    assert item["sha256"]["label"] == hashlib.sha256(data.labels[7].tobytes()).hexdigest()
    image, label = synthetic.Street(0, 1).render(1, 48, 64)
    assert np.array_equal(data.images[7], image) and np.array_equal(data.labels[7], label)
    assert leftovers(out.parent) == []


def test_synthetic_parallel_rendering_gives_the_same_pixels(tmp_path):
    cfg = {**SYN, "height": 96, "width": 128, "synthetic": {"sequences": 2, "frames": 3, "seed": 4}}
    data = load_prepared(prepare(cfg, tmp_path / "p"))  # large enough to render in worker processes
    image, label = synthetic.Street(4, 1).render(2, 96, 128)
    assert np.array_equal(data.images[5], image) and np.array_equal(data.labels[5], label)


def test_prepare_is_idempotent_and_force_rebuilds(tmp_path, capsys):
    out = tmp_path / "synthetic"
    prepare(SYN, out)
    before = mtimes(out)
    capsys.readouterr()
    assert prepare(SYN, out) == out
    assert "up to date" in capsys.readouterr().out
    assert mtimes(out) == before
    prepare(SYN, out, force=True)
    assert "wrote 12" in capsys.readouterr().out
    assert mtimes(out) != before
    other = {**SYN, "synthetic": {**SYN["synthetic"], "seed": 1}}
    prepare(other, out)  # a changed config is a different dataset: rebuilt
    assert "wrote 12" in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_camvid_prepare_resizes_and_records_sources(tmp_path, capsys):
    root = make_segnet(tmp_path / "cv")
    out = prepare(camvid_cfg(root), tmp_path / "prepared")
    data = load_prepared(out)
    m = data.manifest
    assert len(m["items"]) == 6 and data.images.shape == (6, 6, 8, 3)
    assert [it["split"] for it in m["items"]] == ["train", "train", "train", "val", "test", "test"]  # by sequence
    first = m["items"][0]
    assert first["id"] == "0001TP_000010" and (first["sequence"], first["frame"]) == ("0001TP", 10)
    assert first["source"] == {"image": "train/0001TP_000010.jpg", "label": "trainannot/0001TP_000010.png"}
    assert first["shape"] == [12, 16]
    assert first["sha256"]["image"] == hashlib.sha256((root / first["source"]["image"]).read_bytes()).hexdigest()
    # labels are resized by nearest neighbour: only source values, void as IGNORE_INDEX
    raw = np.asarray(Image.open(root / first["source"]["label"]))
    expected = np.where(raw == 11, IGNORE_INDEX, raw)[1::2, 1::2]
    assert set(np.unique(data.labels[0])) <= set(np.unique(expected))
    assert (data.labels[0] == expected).mean() > 0.7
    # a changed source file changes the stamp
    capsys.readouterr()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / first["source"]["label"])
    prepare(camvid_cfg(root), out)
    assert "wrote 6" in capsys.readouterr().out
    assert (load_prepared(out).labels[0] == 0).all()


@pytest.mark.parametrize("case", ["missing_root", "image_without_label", "label_without_image", "size_mismatch",
                                  "bad_label_value", "corrupt_image", "unknown_dataset", "missing_key"])
def test_bad_input_is_one_clear_error_and_leaves_nothing(tmp_path, case):
    root = make_segnet(tmp_path / "cv")
    cfg = camvid_cfg(root)
    if case == "missing_root":
        cfg["root"], expect = str(tmp_path / "absent"), "absent"
    elif case == "image_without_label":
        (root / "valannot" / "0016E5_07961.png").unlink()
        expect = "0016E5_07961.jpg: image has no label"
    elif case == "label_without_image":
        (root / "train" / "0006R0_f00030.jpg").unlink()
        expect = "0006R0_f00030.png: label has no image"
    elif case == "size_mismatch":
        Image.fromarray(np.zeros((11, 16), np.uint8)).save(root / "testannot" / "Seq05VD_f00030.png")
        expect = "Seq05VD_f00030.png: label size 16x11 does not match"
    elif case == "bad_label_value":
        Image.fromarray(np.full((12, 16), 40, np.uint8)).save(root / "testannot" / "Seq05VD_f00030.png")
        expect = "Seq05VD_f00030.png: label value 40 is neither a class"
    elif case == "corrupt_image":
        (root / "test" / "Seq05VD_f00030.jpg").write_bytes(b"garbage")
        expect = "Seq05VD_f00030.jpg: unreadable or corrupt image"
    elif case == "unknown_dataset":
        cfg["name"], expect = "kitti", "dataset.name: unknown dataset 'kitti'"
    else:
        del cfg["height"]
        expect = "dataset.height"
    parent = tmp_path / "prepared"
    parent.mkdir()
    with pytest.raises(UserError, match=expect):
        prepare(cfg, parent / "camvid")
    assert list(parent.iterdir()) == []  # no output, no temporary directory


def test_failed_rebuild_keeps_the_previous_output(tmp_path):
    root = make_segnet(tmp_path / "cv")
    out = prepare(camvid_cfg(root), tmp_path / "prepared" / "camvid")
    before = mtimes(out)
    (root / "test" / "Seq05VD_f00030.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="Seq05VD_f00030.jpg"):
        prepare(camvid_cfg(root), out)
    assert mtimes(out) == before and len(load_prepared(out).manifest["items"]) == 6
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("case", ["missing_dir", "missing_manifest", "corrupt_manifest", "missing_labels",
                                  "corrupt_images", "shape_mismatch"])
def test_load_prepared_errors(tmp_path, case):
    out = prepare(SYN, tmp_path / "syn")
    if case == "missing_dir":
        out, expect = tmp_path / "nothing", "nothing: prepared dataset not found"
    elif case == "missing_manifest":
        (out / MANIFEST).unlink()
        expect = "manifest.json: manifest of the prepared dataset not found"
    elif case == "corrupt_manifest":
        (out / MANIFEST).write_text("{not json")
        expect = "manifest.json: corrupt"
    elif case == "missing_labels":
        (out / LABELS).unlink()
        expect = "labels.npy: missing"
    elif case == "corrupt_images":
        (out / IMAGES).write_bytes((out / IMAGES).read_bytes()[:1000])
        expect = "images.npy: corrupt"
    else:
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["height"] = 40
        (out / MANIFEST).write_text(json.dumps(manifest))
        expect = r"images.npy: expected uint8 \(12, 40, 64, 3\)"
    with pytest.raises(UserError, match=expect):
        load_prepared(out)


# ---------------------------------------------------------------------------- the real CamVid copy
def test_camvid_prepared_small(camvid_root, tmp_path_factory, capsys):
    out = prepared_camvid(camvid_root, tmp_path_factory)
    data = load_prepared(out)
    items = data.manifest["items"]
    assert data.images.shape == (701, 45, 60, 3) and data.labels.shape == (701, 45, 60)
    assert {s: sum(it["split"] == s for it in items) for s in ("train", "val", "test")} == {
        "train": 367, "val": 101, "test": 233}
    assert all(it["shape"] == [360, 480] for it in items)
    assert set(np.unique(data.labels)) == set(range(len(CLASS_NAMES))) | {IGNORE_INDEX}
    # nearest-neighbour downsizing keeps the class shares close to full resolution (Road ~31.7% on train)
    train = [it["index"] for it in items if it["split"] == "train"]
    road = (data.labels[train] == CLASS_NAMES.index("Road")).mean() * 100
    assert road == pytest.approx(31.7, abs=1.0)
    capsys.readouterr()
    prepare({"name": "camvid", "root": str(camvid_root), "height": 45, "width": 60}, out)
    assert "up to date" in capsys.readouterr().out
