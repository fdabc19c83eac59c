"""`segkd split`: which prepared items each fold trains and tests on.

Strategies:

* ``official``: one fold; train = the dataset's train + val items, test = its test items (CamVid's
  367 + 101 / 233 split).
* ``sequence-blocked``: K folds. Each video sequence, frames sorted by frame number, is cut into K
  contiguous blocks; block j of every sequence is fold j's test set and the other blocks its training
  set. Neighbouring frames of a video are near-duplicates, so `guard` frames at every block boundary
  are dropped from all folds: no frame of one block sits next to a frame of another. Dropped items are
  listed in ``dropped``.

The folds file is deterministic (same prepared dataset and options, same bytes) and written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segkd.classes import CLASS_NAMES, IGNORE_INDEX
from segkd.data.prepare import load_prepared
from segkd.errors import UserError
from segkd.jsonfiles import read_json, write_text

STRATEGIES = ("official", "sequence-blocked")


def split(prepared: Path, out: Path, strategy: str, k: int = 2, guard: int = 2) -> dict:
    """Write the folds of the prepared dataset to `out`, print their sizes and class shares, return them."""
    if strategy not in STRATEGIES:
        raise UserError(f"folds.strategy: unknown fold strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    data = load_prepared(prepared)
    items = data.manifest["items"]
    if strategy == "official":
        folds, dropped = _official(items), []
        k, guard = 1, 0
    else:
        folds, dropped = _sequence_blocked(items, k, guard)
    result = {"dataset": data.manifest["dataset"], "strategy": strategy, "k": k, "guard": guard,
              "folds": folds, "dropped": dropped}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text(Path(out), json.dumps(result, indent=1) + "\n")
    print(f"segkd split: {strategy} folds of {data.manifest['dataset']} ({len(items)} items) -> {out}")
    print(share_table(result, class_pixels(data.labels)))
    return result


def load_folds(path: str | Path, num_items: int | None = None) -> dict:
    """The folds file at `path`, validated (and checked against `num_items` prepared items if given)."""
    path = Path(path)
    folds = read_json(path, "folds file", "run `segkd split` first")
    _validate(folds, path, num_items)
    return folds


def _official(items: list[dict]) -> list[dict]:
    train = [it["index"] for it in items if it["split"] in ("train", "val")]
    test = [it["index"] for it in items if it["split"] == "test"]
    if not test or not train:
        raise UserError("folds.strategy: 'official' needs the dataset's own train and test splits; this dataset "
                        f"has {len(train)} train/val and {len(test)} test items (use 'sequence-blocked')")
    return [{"fold": 0, "train": train, "test": test}]


def _sequence_blocked(items: list[dict], k: int, guard: int) -> tuple[list[dict], list[int]]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise UserError(f"folds.k: sequence-blocked needs k >= 2 folds, got {k!r}")
    if isinstance(guard, bool) or not isinstance(guard, int) or guard < 0:
        raise UserError(f"folds.guard: expected an integer >= 0, got {guard!r}")
    sequences: dict[str, list[dict]] = {}
    for it in items:
        sequences.setdefault(it["sequence"], []).append(it)
    test: list[list[int]] = [[] for _ in range(k)]
    dropped: list[int] = []
    for name in sorted(sequences):
        frames = sorted(sequences[name], key=lambda it: (it["frame"], it["index"]))
        if len(frames) < k + guard * (k - 1):
            raise UserError(f"folds.k: sequence {name!r} has {len(frames)} frames, too few for {k} blocks "
                            f"with {guard} guard frames between them")
        # block j is frames[bounds[j]:bounds[j+1]]; a boundary drops ceil(guard/2) frames before, floor after
        bounds = np.linspace(0, len(frames), k + 1).round().astype(int)
        for j in range(k):
            lo = bounds[j] + (guard // 2 if j > 0 else 0)
            hi = bounds[j + 1] - ((guard + 1) // 2 if j < k - 1 else 0)
            if hi <= lo:
                raise UserError(f"folds.guard: sequence {name!r} ({len(frames)} frames) leaves block {j} empty "
                                f"with guard {guard}; use fewer folds or a smaller guard")
            test[j] += [it["index"] for it in frames[lo:hi]]
            if j < k - 1:
                dropped += [it["index"] for it in frames[hi:bounds[j + 1] + guard // 2]]
    kept = sorted(i for block in test for i in block)
    folds = []
    for j in range(k):
        held = set(test[j])
        folds.append({"fold": j, "train": [i for i in kept if i not in held], "test": sorted(test[j])})
    return folds, sorted(dropped)


def class_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixel count of each class (columns 0..10) and void (column 11), per item: int64 (N, 12)."""
    counts = np.zeros((len(labels), len(CLASS_NAMES) + 1), np.int64)
    for i, label in enumerate(labels):
        c = np.bincount(np.asarray(label).ravel(), minlength=256)
        counts[i, : len(CLASS_NAMES)] = c[: len(CLASS_NAMES)]
        counts[i, -1] = c[IGNORE_INDEX]
    return counts


def share_table(folds: dict, pixels: np.ndarray) -> str:
    """Image counts and per-class pixel shares (percent, void included) of each fold's train and test sets."""
    columns = []
    for f in folds["folds"]:
        for part in ("train", "test"):
            total = pixels[f[part]].sum(axis=0)
            columns.append((f"f{f['fold']} {part}", len(f[part]), 100.0 * total / max(total.sum(), 1)))
    names = [*CLASS_NAMES, "void"]
    width = max(len(n) for n in names) + 1
    lines = [" " * width + "".join(f"{c[0]:>10}" for c in columns),
             f"{'images':<{width}}" + "".join(f"{c[1]:>10d}" for c in columns)]
    for r, name in enumerate(names):
        lines.append(f"{name:<{width}}" + "".join(f"{c[2][r]:>9.2f}%" for c in columns))
    if folds["dropped"]:
        lines.append(f"dropped (guard frames): {len(folds['dropped'])} images")
    return "\n".join(lines)


def _validate(folds, path: Path, num_items: int | None) -> None:
    def bad(msg):
        raise UserError(f"{path}: {msg}")

    if not isinstance(folds, dict):
        bad("not a folds file (expected a JSON object)")
    for key in ("dataset", "strategy", "k", "guard", "folds", "dropped"):
        if key not in folds:
            bad(f"missing key {key!r}")
    if folds["strategy"] not in STRATEGIES:
        bad(f"strategy: unknown fold strategy {folds['strategy']!r}; known: {', '.join(STRATEGIES)}")
    if not isinstance(folds["folds"], list) or not folds["folds"]:
        bad("folds: expected a non-empty list")
    if folds["k"] != len(folds["folds"]):
        bad(f"k: says {folds['k']} but the file has {len(folds['folds'])} folds")

    def indices(value, where):
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            bad(f"{where}: expected a list of item indices")
        if any(i < 0 or (num_items is not None and i >= num_items) for i in value):
            bad(f"{where}: index out of range" + (f" (the prepared dataset has {num_items} items)"
                                                  if num_items is not None else ""))
        if len(set(value)) != len(value):
            bad(f"{where}: repeated index")
        return set(value)

    dropped = indices(folds["dropped"], "dropped")
    for j, fold in enumerate(folds["folds"]):
        if not isinstance(fold, dict) or fold.get("fold") != j:
            bad(f"folds[{j}]: expected an object with \"fold\": {j}")
        train, test = indices(fold.get("train"), f"folds[{j}].train"), indices(fold.get("test"), f"folds[{j}].test")
        if not train or not test:
            bad(f"folds[{j}]: train and test must both be non-empty")
        if train & test:
            bad(f"folds[{j}]: item {min(train & test)} is in both train and test")
        if (train | test) & dropped:
            bad(f"folds[{j}]: item {min((train | test) & dropped)} is listed as dropped")
