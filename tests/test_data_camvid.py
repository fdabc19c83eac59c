"""CamVid readers: both layouts, pairing by stem, void mapping, bad input, and the real SegNet copy."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkd.classes import CLASS_NAMES, IGNORE_INDEX
from segkd.data import camvid
from segkd.errors import UserError

_PREPARED: dict = {}


def make_segnet(root: Path, splits=None, size=(12, 16), image_ext=".jpg") -> Path:
    """A tiny SegNet-layout dataset: {split: [stem, ...]}, labels cycling through 0..11."""
    splits = splits or {"train": ["0001TP_000010", "0001TP_000020", "0006R0_f00030"],
                        "val": ["0016E5_07961"], "test": ["Seq05VD_f00000", "Seq05VD_f00030"]}
    rng = np.random.default_rng(0)
    h, w = size
    for split, stems in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for n, stem in enumerate(stems):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / f"{stem}{image_ext}")
            label = ((np.arange(h * w).reshape(h, w) // 7 + n) % 12).astype(np.uint8)
            Image.fromarray(label).save(root / f"{split}annot" / f"{stem}.png")
    return root


def prepared_camvid(root: Path, tmp_path_factory, height=45, width=60) -> Path:
    """The real CamVid copy prepared once per test session at a small resolution (shared by test files)."""
    if (height, width) not in _PREPARED:
        from segkd.data.prepare import prepare

        out = tmp_path_factory.mktemp("camvid_prepared") / "camvid"
        _PREPARED[height, width] = prepare({"name": "camvid", "root": str(root), "height": height,
                                            "width": width}, out)
    return _PREPARED[height, width]


def test_segnet_layout_pairs_by_stem_and_parses_sequences(tmp_path):
    root = make_segnet(tmp_path / "cv")
    items = camvid.find_items(root)
    assert len(items) == 6
    assert {it.split for it in items} == {"train", "val", "test"}
    by_id = {it.id: it for it in items}
    seq05 = by_id["Seq05VD_f00030"]
    assert (seq05.sequence, seq05.frame, seq05.split) == ("Seq05VD", 30, "test")
    assert seq05.image.suffix == ".jpg" and seq05.label.name == "Seq05VD_f00030.png"
    assert (by_id["0001TP_000020"].sequence, by_id["0001TP_000020"].frame) == ("0001TP", 20)
    assert [it.id for it in items] == sorted(by_id, key=lambda i: (by_id[i].sequence, by_id[i].frame))


def test_png_images_and_list_files(tmp_path):
    root = make_segnet(tmp_path / "cv", {"train": ["0006R0_f00930", "0006R0_f00960"]}, image_ext=".png")
    (root / "train.txt").write_text("/SegNet/CamVid/train/0006R0_f00960.png /SegNet/CamVid/trainannot/x.png\n")
    items = camvid.find_items(root)
    assert [it.id for it in items] == ["0006R0_f00960"]  # the list selects the items


def test_void_becomes_ignore_index(tmp_path):
    root = make_segnet(tmp_path / "cv")
    item = camvid.find_items(root)[0]
    raw = np.asarray(Image.open(item.label))
    image, label = camvid.load_pair(item)
    assert label.dtype == np.uint8 and label.shape == (image.height, image.width)
    assert np.array_equal(label == IGNORE_INDEX, raw == 11)
    assert np.array_equal(label[raw < 11], raw[raw < 11])


@pytest.mark.parametrize("case", ["no_root", "no_layout", "image_without_label", "label_without_image",
                                  "listed_missing", "bad_name"])
def test_layout_errors_name_the_file(tmp_path, case):
    root = make_segnet(tmp_path / "cv")
    if case == "no_root":
        root, expect = tmp_path / "nowhere", "nowhere"
    elif case == "no_layout":
        root, expect = tmp_path / "empty", "no CamVid layout"
        root.mkdir()
    elif case == "image_without_label":
        (root / "trainannot" / "0001TP_000010.png").unlink()
        expect = "0001TP_000010.jpg: image has no label"
    elif case == "label_without_image":
        (root / "test" / "Seq05VD_f00000.jpg").unlink()
        expect = "Seq05VD_f00000.png: label has no image"
    elif case == "listed_missing":
        (root / "val.txt").write_text("val/0016E5_09999.png valannot/0016E5_09999.png\n")
        expect = "0016E5_09999"
    else:
        Image.new("RGB", (16, 12)).save(root / "train" / "frame.jpg")
        Image.new("L", (16, 12)).save(root / "trainannot" / "frame.png")
        expect = "frame.jpg: file name is not '<sequence>_<frame>'"
    with pytest.raises(UserError, match=expect):
        camvid.find_items(root)


@pytest.mark.parametrize("splits, expect", [
    ({"train": [], "val": [], "test": []}, r"cv/train: no images in train/ or trainannot/"),
    ({"train": ["0006R0_f00030"], "val": [], "test": ["Seq05VD_f00000"]}, r"cv/val: no images in val/ or valannot/"),
    ({"val": ["0016E5_07961"], "test": ["Seq05VD_f00000"]}, r"cv: no training images"),
], ids=["all_empty", "val_empty", "no_train_split"])
def test_empty_split_folders_and_no_training_images_are_errors(tmp_path, splits, expect):
    root = make_segnet(tmp_path / "cv", splits)
    with pytest.raises(UserError, match=expect):
        camvid.find_items(root)


@pytest.mark.parametrize("case", ["size_mismatch", "bad_value", "corrupt_image", "corrupt_label", "rgb_label"])
def test_decode_errors_name_the_file(tmp_path, case):
    root = make_segnet(tmp_path / "cv")
    item = next(it for it in camvid.find_items(root) if it.id == "0006R0_f00030")
    if case == "size_mismatch":
        Image.fromarray(np.zeros((10, 16), np.uint8)).save(item.label)
        expect = "0006R0_f00030.png: label size 16x10 does not match image"
    elif case == "bad_value":
        Image.fromarray(np.full((12, 16), 12, np.uint8)).save(item.label)
        expect = "0006R0_f00030.png: label value 12 is neither a class"
    elif case == "corrupt_image":
        item.image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        expect = "0006R0_f00030.jpg: unreadable or corrupt image"
    elif case == "corrupt_label":
        item.label.write_bytes(item.label.read_bytes()[:40])
        expect = "0006R0_f00030.png: unreadable or corrupt label"
    else:
        Image.new("RGB", (16, 12)).save(item.label)
        expect = "0006R0_f00030.png: label must be a single-channel"
    with pytest.raises(UserError, match=expect):
        camvid.load_pair(item)


def test_original_layout_maps_colours_to_11_classes(tmp_path):
    root = tmp_path / "orig"
    (root / "701_StillsRaw_full").mkdir(parents=True)
    (root / "LabeledApproved_full").mkdir()
    colours = {name: colour for name, (colour, _) in camvid.ORIGINAL_CLASSES.items()}
    names = list(colours)
    label = np.zeros((5, 8, 3), np.uint8)
    for i, name in enumerate(names):
        label[i // 8, i % 8] = colours[name]
    label[4, 0] = (1, 2, 3)  # not a CamVid colour
    for stem in ("0001TP_008520", "0001TP_008550", "0016E5_07961", "0016E5_08190", "Seq05VD_f00030"):
        Image.new("RGB", (8, 5), (9, 9, 9)).save(root / "701_StillsRaw_full" / f"{stem}.png")
        Image.fromarray(label).save(root / "LabeledApproved_full" / f"{stem}_L.png")
    items = camvid.find_items(root)
    assert {it.id: it.split for it in items} == {"0001TP_008520": "train", "0001TP_008550": "test",
                                                 "0016E5_07961": "val", "0016E5_08190": "train",
                                                 "Seq05VD_f00030": "test"}
    _, out = camvid.load_pair(items[0])
    expected = {"Sky": "Sky", "Wall": "Building", "Column_Pole": "Pole", "LaneMkgsDriv": "Road",
                "ParkingBlock": "Sidewalk", "VegetationMisc": "Tree", "TrafficLight": "SignSymbol",
                "Fence": "Fence", "SUVPickupTruck": "Car", "Child": "Pedestrian", "MotorcycleScooter": "Bicyclist"}
    for name, target in expected.items():
        i = names.index(name)
        assert out[i // 8, i % 8] == CLASS_NAMES.index(target), name
    assert out[names.index("Void") // 8, names.index("Void") % 8] == IGNORE_INDEX
    assert out[4, 0] == IGNORE_INDEX
    # every 11-class target is reachable
    assert set(np.unique(out)) == set(range(len(CLASS_NAMES))) | {IGNORE_INDEX}


def test_original_layout_orphans(tmp_path):
    root = tmp_path / "orig"
    root.mkdir()
    Image.new("RGB", (8, 4)).save(root / "0006R0_f00930.png")
    Image.new("RGB", (8, 4)).save(root / "0006R0_f00960_L.png")
    with pytest.raises(UserError, match="0006R0_f00930.png: image has no label"):
        camvid.find_items(root)


# ---------------------------------------------------------------------------- the real CamVid copy
def test_camvid_items_and_official_split(camvid_root):
    items = camvid.find_items(camvid_root)
    assert len(items) == 701
    counts = {s: sum(it.split == s for it in items) for s in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    sequences = {}
    for it in items:
        sequences[it.sequence] = sequences.get(it.sequence, 0) + 1
    assert sequences == {"0001TP": 124, "0006R0": 101, "0016E5": 305, "Seq05VD": 171}
    # the SegNet split is a function of sequence and frame (what the original-layout reader relies on)
    assert all(camvid.segnet_split(it.sequence, it.frame) == it.split for it in items)


def test_camvid_train_pixel_shares(camvid_root):
    """Class shares of the training split at full 360x480 resolution, straight from the raw labels."""
    counts = np.zeros(256, np.int64)
    for item in camvid.find_items(camvid_root):
        if item.split == "train":
            raw = np.asarray(Image.open(item.label))
            assert raw.shape == (360, 480)
            counts += np.bincount(raw.ravel(), minlength=256)
    share = 100 * counts / counts.sum()
    assert share[CLASS_NAMES.index("Road")] == pytest.approx(31.7, abs=0.3)
    assert share[CLASS_NAMES.index("Sky")] == pytest.approx(16.9, abs=0.3)
    assert share[11] == pytest.approx(3.95, abs=0.3)  # void
    assert counts[12:].sum() == 0
