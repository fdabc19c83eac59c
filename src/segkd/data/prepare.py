"""`segkd prepare`: decode a dataset once, resize it to the study resolution, store compact uint8 arrays.

Training reads `images.npy` (N, H, W, 3) and `labels.npy` (N, H, W) memory-mapped, so no job ever decodes
a PNG/JPEG or resizes a label. `manifest.json` says where every item came from (split, video sequence,
frame, source files, their SHA-256) because folds are cut along sequences and results must be traceable
to the exact input bytes.

The output is stamped with a hash of the dataset section of the params and of the source checksums:
re-running with the same input does nothing. It is written to a temporary directory beside the target
and renamed into place, so a crash or a bad file never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from segkd.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from segkd.data import camvid, synthetic
from segkd.errors import UserError
from segkd.jsonfiles import read_json

FORMAT_VERSION = 1
WORKERS = 2  # decoding (threads) and rendering (processes) both scale to two workers
DATASETS = ("camvid", "synthetic")
IMAGES, LABELS, MANIFEST = "images.npy", "labels.npy", "manifest.json"


class Prepared(NamedTuple):
    images: np.ndarray  # uint8 (N, H, W, 3), memory-mapped read-only
    labels: np.ndarray  # uint8 (N, H, W), 0..10 or IGNORE_INDEX
    manifest: dict


def prepare(dataset_cfg: dict, out: Path, force: bool = False) -> Path:
    """Write the prepared dataset to `out` (unless it is up to date) and return `out`."""
    out = Path(out)
    source = _source(dataset_cfg)
    stamp = source.stamp()
    if not force and _up_to_date(out, stamp):
        print(f"segkd prepare: {out} is up to date ({source.name}, {source.height}x{source.width}); nothing to do")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        n, h, w = source.count(), source.height, source.width
        images = np.lib.format.open_memmap(tmp / IMAGES, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        labels = np.lib.format.open_memmap(tmp / LABELS, mode="w+", dtype=np.uint8, shape=(n, h, w))
        items = []
        with tqdm(total=n, desc=f"prepare {source.name}", unit="img", dynamic_ncols=True) as bar:
            for i, (image, label, item) in enumerate(source.decode()):
                images[i], labels[i] = image, label
                items.append({"index": i, **item})
                bar.update(1)
        images.flush()
        labels.flush()
        # The manifest carries the arrays' checksums: it changes exactly when the data does, so
        # workflows can depend on this small file instead of the arrays.
        arrays = {"images": _sha256(images), "labels": _sha256(labels)}  # hashed in place, no copy
        del images, labels  # close the memory maps before the directory is renamed
        manifest = {"dataset": source.name, "height": h, "width": w, "classes": list(CLASS_NAMES),
                    "format": FORMAT_VERSION, "stamp": stamp, "arrays_sha256": arrays, "items": items}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"segkd prepare: wrote {n} {source.name} images at {h}x{w} to {out}")
    return out


def load_prepared(path: str | Path) -> Prepared:
    """The prepared arrays (memory-mapped) and manifest in `path`; a clear error if missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: prepared dataset not found (run `segkd prepare` first)")
    manifest = _read_manifest(path / MANIFEST)
    arrays = []
    for name in (IMAGES, LABELS):
        try:
            arrays.append(np.load(path / name, mmap_mode="r", allow_pickle=False))
        except FileNotFoundError as err:
            raise UserError(f"{path / name}: missing from the prepared dataset (re-run `segkd prepare`)") from err
        except (ValueError, OSError, EOFError) as err:
            raise UserError(f"{path / name}: corrupt array file ({err}); re-run `segkd prepare --force`") from err
    images, labels = arrays
    n, h, w = len(manifest["items"]), manifest["height"], manifest["width"]
    for name, array, shape in ((IMAGES, images, (n, h, w, 3)), (LABELS, labels, (n, h, w))):
        if array.dtype != np.uint8 or array.shape != shape:
            raise UserError(f"{path / name}: expected uint8 {shape}, found {array.dtype} {array.shape} "
                            f"(does not match {MANIFEST}); re-run `segkd prepare --force`")
    return Prepared(images, labels, manifest)


def _read_manifest(path: Path) -> dict:
    manifest = read_json(path, "manifest of the prepared dataset", "re-run `segkd prepare --force`")
    required = ("dataset", "height", "width", "classes", "items")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise UserError(f"{path}: not a segkd manifest (needs keys {', '.join(required)})")
    if list(manifest["classes"]) != list(CLASS_NAMES):
        raise UserError(f"{path}: classes {manifest['classes']} differ from segkd's {list(CLASS_NAMES)}; "
                        "re-run `segkd prepare --force`")
    return manifest


def _up_to_date(out: Path, stamp: str) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("stamp") != stamp:
            return False
        load_prepared(out)
    except (OSError, ValueError, UserError):
        return False
    return True


def _replace_dir(new: Path, out: Path) -> None:
    """Move `new` to `out`; an older `out` is swapped aside first and removed afterwards."""
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(data) -> str:  # bytes or any contiguous buffer (arrays hash without a copy)
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    try:
        return _sha256(path.read_bytes())
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from err


def _require(cfg: dict, key: str, kind: type, where: str = "dataset"):
    if not isinstance(cfg, dict) or key not in cfg:
        raise UserError(f"{where}.{key}: missing")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return value


def _source(cfg: dict):
    name = _require(cfg, "name", str)
    height, width = _require(cfg, "height", int), _require(cfg, "width", int)
    if name == "camvid":
        root = cfg.get("root")
        if not root:
            raise UserError("dataset.root: required for the camvid dataset (folder in the SegNet layout)")
        return _CamVidSource(Path(root), height, width)
    if name == "synthetic":
        syn = _require(cfg, "synthetic", dict)
        return _SyntheticSource(height, width, *(_require(syn, k, int, "dataset.synthetic")
                                                 for k in ("sequences", "frames")),
                                seed=_require_seed(syn))
    raise UserError(f"dataset.name: unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def _require_seed(syn: dict) -> int:
    seed = syn.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"dataset.synthetic.seed: expected an integer >= 0, got {seed!r}")
    return seed


def _stamp(description: dict) -> str:
    return _sha256(json.dumps({"format": FORMAT_VERSION, **description}, sort_keys=True).encode())


class _CamVidSource:
    """CamVid frames from either layout (see segkd.data.camvid), resized once."""

    name = "camvid"

    def __init__(self, root: Path, height: int, width: int):
        self.root, self.height, self.width = root, height, width
        self.items = camvid.find_items(root)
        with ThreadPoolExecutor(WORKERS) as pool:
            self.sha = list(pool.map(lambda it: (_file_sha256(it.image), _file_sha256(it.label)), self.items))

    def count(self) -> int:
        return len(self.items)

    def stamp(self) -> str:
        return _stamp({"dataset": self.name, "height": self.height, "width": self.width,
                       "items": [[it.id, it.split, *sha] for it, sha in zip(self.items, self.sha)]})

    def _decode(self, item: camvid.Item) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        size = (self.width, self.height)
        image, label = camvid.load_pair(item, draft=size)
        shape = label.shape
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)  # Pillow filters (antialiases) when shrinking
        if shape != (self.height, self.width):
            label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
        return np.asarray(image), label, list(shape)

    def decode(self) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
        # Pillow releases the GIL while decoding and resizing, so two threads decode in parallel
        with ThreadPoolExecutor(WORKERS) as pool:
            for item, sha, (image, label, shape) in zip(self.items, self.sha, pool.map(self._decode, self.items)):
                yield image, label, {
                    "id": item.id, "split": item.split, "sequence": item.sequence, "frame": item.frame,
                    "source": {"image": _relative(item.image, self.root), "label": _relative(item.label, self.root)},
                    "sha256": {"image": sha[0], "label": sha[1]}, "shape": shape}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _render_sequence(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, sequence, frames, height, width = args
    street = synthetic.Street(seed, sequence)
    pairs = [street.render(t, height, width) for t in range(frames)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class _SyntheticSource:
    """Procedural street scenes (segkd.data.synthetic), rendered directly at the study resolution."""

    name = "synthetic"

    def __init__(self, height: int, width: int, sequences: int, frames: int, seed: int):
        self.height, self.width = height, width
        self.sequences, self.frames, self.seed = sequences, frames, seed

    def count(self) -> int:
        return self.sequences * self.frames

    def stamp(self) -> str:
        return _stamp({"dataset": self.name, "height": self.height, "width": self.width, "seed": self.seed,
                       "sequences": self.sequences, "frames": self.frames,
                       "generator": synthetic.GENERATOR_VERSION})

    def decode(self) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
        jobs = [(self.seed, s, self.frames, self.height, self.width) for s in range(self.sequences)]
        # sequences are independent: render them in worker processes when there is enough to do
        parallel = self.sequences > 1 and self.count() * self.height * self.width >= 200_000
        with ProcessPoolExecutor(WORKERS) if parallel else _Inline() as pool:
            for s, (images, labels) in enumerate(pool.map(_render_sequence, jobs)):
                sequence = synthetic.sequence_name(s)
                for t in range(self.frames):
                    if not np.isin(labels[t], (*range(NUM_CLASSES), IGNORE_INDEX)).all():
                        raise RuntimeError(f"synthetic generator produced an invalid label in {sequence}/{t}")
                    ref = f"synthetic:seed={self.seed}/{sequence}/{t:04d}"
                    yield images[t], labels[t], {
                        "id": f"{sequence}_{t:04d}", "split": "train", "sequence": sequence, "frame": t,
                        "source": {"image": ref, "label": ref},
                        "sha256": {"image": _sha256(images[t].tobytes()), "label": _sha256(labels[t].tobytes())},
                        "shape": [self.height, self.width]}


class _Inline:
    """A stand-in for an executor that runs jobs in this process, lazily."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, jobs):
        return map(fn, jobs)
