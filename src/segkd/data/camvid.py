"""CamVid readers: find every (image, label) pair under a root and decode it into the 11-class label space.

Two layouts are recognised, so a user can point `dataset.root` at whichever copy they have:

* **SegNet layout** (the usual benchmark copy): ``train/ val/ test/`` hold the RGB frames and
  ``trainannot/ valannot/ testannot/`` the label maps, one uint8 class index per pixel (0..10 are the
  classes of `segkd.classes`, 11 is void). Optional ``train.txt``-style lists ("<image> <label>" per
  line) select the items of a split; without a list, every file of the split folders is used. Image
  and label are paired by file *stem*, whatever the image extension (copies re-encode PNG frames as
  JPEG).

* **Original release** (Brostow et al.): frames ``<seq>_<frame>.png`` and RGB-coded label images
  ``<seq>_<frame>_L.png`` with 32 classes, anywhere under the root (e.g. ``701_StillsRaw_full/`` and
  ``LabeledApproved_full/``). Colours are grouped into the 11 classes by the standard SegNet grouping:

  ===========  ===============================================================
  Sky          Sky
  Building     Building, Wall, Bridge, Tunnel, Archway
  Pole         Column_Pole, TrafficCone
  Road         Road, LaneMkgsDriv, LaneMkgsNonDriv
  Sidewalk     Sidewalk, ParkingBlock, RoadShoulder
  Tree         Tree, VegetationMisc
  SignSymbol   SignSymbol, Misc_Text, TrafficLight
  Fence        Fence
  Car          Car, SUVPickupTruck, Truck_Bus, Train, OtherMoving
  Pedestrian   Pedestrian, Child, CartLuggagePram, Animal
  Bicyclist    Bicyclist, MotorcycleScooter
  void         Void and any colour not in the 32-class palette
  ===========  ===============================================================

  The release has no split of its own: ``train.txt``/``val.txt``/``test.txt`` lists under the root are
  used when present, otherwise SegNet's split is reproduced from the file names (0001TP frames before
  8550 train, the rest test; 0006R0 train; 0016E5 frames 7959..8159 val, the rest train; Seq05VD test;
  any other sequence train).

Both layouts name frames ``<sequence>_<frame>`` (``0001TP_006690``, ``Seq05VD_f00030``); the sequence
(0001TP, 0006R0, 0016E5, Seq05VD) and the frame number are parsed from that name, because folds must be
cut along sequences: neighbouring frames of one video are nearly identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segkd.classes import CLASS_NAMES, IGNORE_INDEX, SEGNET_VOID
from segkd.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
RGB_LABEL_SUFFIX = "_L"

_STEM = re.compile(r"^(?P<sequence>[A-Za-z0-9]+)_f?(?P<frame>\d+)$")

# The 32 classes of the original release: colour -> 11-class name (None = void).
ORIGINAL_CLASSES: dict[str, tuple[tuple[int, int, int], str | None]] = {
    "Animal": ((64, 128, 64), "Pedestrian"),
    "Archway": ((192, 0, 128), "Building"),
    "Bicyclist": ((0, 128, 192), "Bicyclist"),
    "Bridge": ((0, 128, 64), "Building"),
    "Building": ((128, 0, 0), "Building"),
    "Car": ((64, 0, 128), "Car"),
    "CartLuggagePram": ((64, 0, 192), "Pedestrian"),
    "Child": ((192, 128, 64), "Pedestrian"),
    "Column_Pole": ((192, 192, 128), "Pole"),
    "Fence": ((64, 64, 128), "Fence"),
    "LaneMkgsDriv": ((128, 0, 192), "Road"),
    "LaneMkgsNonDriv": ((192, 0, 64), "Road"),
    "Misc_Text": ((128, 128, 64), "SignSymbol"),
    "MotorcycleScooter": ((192, 0, 192), "Bicyclist"),
    "OtherMoving": ((128, 64, 64), "Car"),
    "ParkingBlock": ((64, 192, 128), "Sidewalk"),
    "Pedestrian": ((64, 64, 0), "Pedestrian"),
    "Road": ((128, 64, 128), "Road"),
    "RoadShoulder": ((128, 128, 192), "Sidewalk"),
    "Sidewalk": ((0, 0, 192), "Sidewalk"),
    "SignSymbol": ((192, 128, 128), "SignSymbol"),
    "Sky": ((128, 128, 128), "Sky"),
    "SUVPickupTruck": ((64, 128, 192), "Car"),
    "TrafficCone": ((0, 0, 64), "Pole"),
    "TrafficLight": ((0, 64, 64), "SignSymbol"),
    "Train": ((192, 64, 128), "Car"),
    "Tree": ((128, 128, 0), "Tree"),
    "Truck_Bus": ((192, 128, 192), "Car"),
    "Tunnel": ((64, 0, 64), "Building"),
    "VegetationMisc": ((192, 192, 0), "Tree"),
    "Void": ((0, 0, 0), None),
    "Wall": ((64, 192, 0), "Building"),
}


def _colour_table() -> tuple[np.ndarray, np.ndarray]:
    """Sorted packed colours (r<<16|g<<8|b) and their 11-class index, for a vectorised lookup."""
    codes, classes = [], []
    for colour, target in ORIGINAL_CLASSES.values():
        r, g, b = colour
        codes.append((r << 16) | (g << 8) | b)
        classes.append(IGNORE_INDEX if target is None else CLASS_NAMES.index(target))
    order = np.argsort(codes)
    return np.asarray(codes, dtype=np.int64)[order], np.asarray(classes, dtype=np.uint8)[order]


_CODES, _CODE_CLASSES = _colour_table()


@dataclass(frozen=True)
class Item:
    """One labelled frame: where its files are and where it belongs (split, sequence, frame)."""

    id: str
    split: str
    sequence: str
    frame: int
    image: Path
    label: Path
    label_format: str  # "index" (SegNet uint8 class map) or "rgb" (original 32-class colours)


def parse_stem(stem: str, path: Path | None = None) -> tuple[str, int]:
    """``0001TP_006690`` -> ("0001TP", 6690); ``Seq05VD_f00030`` -> ("Seq05VD", 30)."""
    m = _STEM.match(stem)
    if not m:
        where = path if path is not None else stem
        raise UserError(f"{where}: file name is not '<sequence>_<frame>' (e.g. 0001TP_006690), "
                        "cannot tell its video sequence")
    return m["sequence"], int(m["frame"])


def find_items(root: str | Path) -> list[Item]:
    """Every labelled frame under `root`, sorted by (sequence, frame); the layout is detected."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset.root: CamVid folder not found: {root}")
    if any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in SPLITS):
        items = _segnet_items(root)
    else:
        labels = sorted(p for p in _image_files(root, depth=2) if p.stem.endswith(RGB_LABEL_SUFFIX))
        if not labels:
            raise UserError(f"{root}: no CamVid layout found: expected train/ + trainannot/ "
                            f"(SegNet layout) or *{RGB_LABEL_SUFFIX}.png colour labels (original release)")
        items = _original_items(root, labels)
    if not items:
        raise UserError(f"{root}: no labelled images found")
    if not any(it.split == "train" for it in items):
        raise UserError(f"{root}: no training images (none of the {len(items)} labelled images is in the "
                        "train split)")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise UserError(f"{root}: frame {dup!r} appears more than once")
    return sorted(items, key=lambda it: (it.sequence, it.frame, it.id))


def _image_files(folder: Path, depth: int = 1) -> list[Path]:
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if depth > 1:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found += _image_files(sub, depth - 1)
    return found


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(files):
        if p.stem in out:
            raise UserError(f"{p}: two {what} files with stem {p.stem!r} ({out[p.stem].name}, {p.name})")
        out[p.stem] = p
    return out


def _read_list(path: Path) -> list[str]:
    """Stems of the images named in a SegNet list file ("<image path> <label path>" per line)."""
    stems = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        image = line.split()[0]
        stems.append(Path(image.replace("\\", "/")).stem)
    if not stems:
        raise UserError(f"{path}: the list is empty")
    return stems


def _check_pairs(images: dict[str, Path], labels: dict[str, Path], label_at, image_at) -> None:
    """Every image has its label and every label its image, paired by file stem; `label_at(stem)` and
    `image_at(stem)` say where the missing partner was looked for."""
    for stem, path in images.items():
        if stem not in labels:
            raise UserError(f"{path}: image has no label (no {label_at(stem)})")
    for stem, path in labels.items():
        if stem not in images:
            raise UserError(f"{path}: label has no image (no {image_at(stem)})")


def _segnet_items(root: Path) -> list[Item]:
    items = []
    for split in SPLITS:
        image_dir, label_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir() and not label_dir.is_dir():
            continue
        if not image_dir.is_dir() or not label_dir.is_dir():
            missing = image_dir if not image_dir.is_dir() else label_dir
            raise UserError(f"{missing}: folder missing (SegNet layout pairs {split}/ with {split}annot/)")
        images = _by_stem(_image_files(image_dir), "image")
        labels = _by_stem(_image_files(label_dir), "label")
        if not images and not labels:  # a failed copy or download, not a split that is meant to be empty
            raise UserError(f"{image_dir}: no images in {split}/ or {split}annot/ (fill the pair of folders, "
                            "or remove both)")
        listing = root / f"{split}.txt"
        if listing.is_file():
            stems = _read_list(listing)
            for stem in stems:
                if stem not in images:
                    raise UserError(f"{listing}: lists {stem!r} but {image_dir} has no image with that name")
                if stem not in labels:
                    raise UserError(f"{images[stem]}: image has no label ({label_dir / (stem + '.png')} missing)")
        else:
            _check_pairs(images, labels, lambda stem: label_dir / f"{stem}.png", lambda stem: f"{stem}.* in {image_dir}")
            stems = sorted(images)
        for stem in stems:
            sequence, frame = parse_stem(stem, images[stem])
            items.append(Item(stem, split, sequence, frame, images[stem], labels[stem], "index"))
    return items


def segnet_split(sequence: str, frame: int) -> str:
    """SegNet's official split of the original release, reproduced from sequence and frame number."""
    if sequence == "0001TP":
        return "train" if frame < 8550 else "test"
    if sequence == "0016E5" and 7959 <= frame <= 8159:
        return "val"
    if sequence == "Seq05VD":
        return "test"
    return "train"


def _original_items(root: Path, label_files: list[Path]) -> list[Item]:
    labels = _by_stem(label_files, "label")
    label_stems = {stem[: -len(RGB_LABEL_SUFFIX)]: path for stem, path in labels.items()}
    images = _by_stem([p for p in _image_files(root, depth=2) if not p.stem.endswith(RGB_LABEL_SUFFIX)],
                      "image")
    _check_pairs(images, label_stems, lambda stem: f"{stem}{RGB_LABEL_SUFFIX}.png under {root}",
                 lambda stem: f"{stem}.* under {root}")
    listed: dict[str, str] = {}
    for split in SPLITS:
        if (root / f"{split}.txt").is_file():
            listed.update({s: split for s in _read_list(root / f"{split}.txt")})
    items = []
    for stem in sorted(images):
        sequence, frame = parse_stem(stem, images[stem])
        split = listed.get(stem) if listed else segnet_split(sequence, frame)
        if split is None:
            continue  # lists exist and do not name this frame: not part of the dataset
        items.append(Item(stem, split, sequence, frame, images[stem], label_stems[stem], "rgb"))
    return items


def _open(path: Path, what: str, draft: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded file and its full size (height, width)."""
    try:
        img = Image.open(path)
        full = (img.height, img.width)
        if draft is not None:
            img.draft("RGB", draft)  # JPEG: decode at a reduced scale that is still >= draft (much faster)
        img.load()
    except FileNotFoundError as err:
        raise UserError(f"{path}: {what} file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: unreadable or corrupt {what} file ({err})") from err
    return img, full


def read_image(path: Path, draft: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB frame and its full size (height, width).

    With `draft` (width, height) a JPEG may be decoded directly at a reduced scale (DCT scaling, itself
    an antialiasing filter) that is still at least that large: for data that is shrunk anyway.
    """
    img, full = _open(path, "image", draft)
    return img.convert("RGB"), full


def read_label(item: Item) -> np.ndarray:
    """The label map as uint8 (H, W): 0..10 for the classes, IGNORE_INDEX for void."""
    img, _ = _open(item.label, "label")
    if item.label_format == "rgb":
        return rgb_to_classes(np.asarray(img.convert("RGB")))
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise UserError(f"{item.label}: label must be a single-channel class-index image, got mode {img.mode}")
    raw = np.asarray(img)
    if raw.ndim != 2:
        raise UserError(f"{item.label}: label must be a single-channel image")
    return segnet_to_classes(raw, item.label)


def segnet_to_classes(raw: np.ndarray, path: Path | str = "label") -> np.ndarray:
    """SegNet class indices -> prepared labels: 0..10 unchanged, 11 (and an existing 255) -> IGNORE_INDEX."""
    raw = raw.astype(np.int64, copy=False)
    bad = (raw > SEGNET_VOID) & (raw != IGNORE_INDEX) | (raw < 0)
    if bad.any():
        value = int(raw[bad][0])
        raise UserError(f"{path}: label value {value} is neither a class (0..{len(CLASS_NAMES) - 1}) "
                        f"nor void ({SEGNET_VOID})")
    out = raw.astype(np.uint8)
    out[raw == SEGNET_VOID] = IGNORE_INDEX
    return out


def rgb_to_classes(rgb: np.ndarray) -> np.ndarray:
    """Original 32-class colour label (H, W, 3) -> 11-class labels; unknown colours become void."""
    rgb = rgb.astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pos = np.clip(np.searchsorted(_CODES, code), 0, len(_CODES) - 1)
    return np.where(_CODES[pos] == code, _CODE_CLASSES[pos], IGNORE_INDEX).astype(np.uint8)


def load_pair(item: Item, draft: tuple[int, int] | None = None) -> tuple[Image.Image, np.ndarray]:
    """Decoded image (see `read_image` for `draft`) and label of one item; sizes must agree."""
    image, full = read_image(item.image, draft)
    label = read_label(item)
    if label.shape != full:
        raise UserError(f"{item.label}: label size {label.shape[1]}x{label.shape[0]} does not match image "
                        f"{item.image} ({full[1]}x{full[0]})")
    return image, label
