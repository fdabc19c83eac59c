"""The images of one fold, held as uint8 tensors, and a deterministic, resumable batch sampler.

The prepared arrays are small (CamVid at 360x480 is ~360 MB as uint8), so a fold lives in memory
(pinned on CUDA) and batches are sliced from it: no decoding, no worker processes, and the data
order is a pure function of the seed, which makes runs bit-reproducible and resumable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from segkd.data.folds import load_folds
from segkd.data.prepare import load_prepared
from segkd.errors import UserError


@dataclass
class FoldData:
    train_images: torch.Tensor  # (N, H, W, 3) uint8
    train_labels: torch.Tensor  # (N, H, W) uint8, 255 = void
    test_images: torch.Tensor
    test_labels: torch.Tensor
    dataset: str
    identity: dict  # what the data is (see data_identity); stored in every checkpoint


def load_fold(prepared: str, folds_file: str, fold: int, dataset: dict | None = None,
              device: torch.device | str = "cpu") -> FoldData:
    """Load the train and held-out parts of `fold`; check they match the run's dataset spec. On a GPU the
    arrays are kept on the device (uint8: CamVid's 701 images at 360x480 are 0.4 GB), so a step reads its
    batch there instead of copying it from the host."""
    data = load_prepared(prepared)
    folds = load_folds(folds_file)
    man = data.manifest
    if dataset is not None:
        expect = (dataset["name"], dataset["height"], dataset["width"])
        found = (man["dataset"], man["height"], man["width"])
        if expect != found:
            raise UserError(f"{prepared}: prepared data is {found}, the run expects {expect}; "
                            "re-run `segkd prepare`")
    if folds["dataset"] != man["dataset"]:
        raise UserError(f"{folds_file}: folds of dataset {folds['dataset']!r}, data is {man['dataset']!r}")
    if not 0 <= fold < len(folds["folds"]):
        raise UserError(f"{folds_file}: no fold {fold} (it has {len(folds['folds'])})")
    part = folds["folds"][fold]

    def take(indices):
        idx = np.asarray(sorted(indices), dtype=np.int64)
        images = torch.from_numpy(np.ascontiguousarray(data.images[idx]))
        labels = torch.from_numpy(np.ascontiguousarray(data.labels[idx]))
        return images.to(device), labels.to(device)

    return FoldData(*take(part["train"]), *take(part["test"]), dataset=man["dataset"],
                    identity=data_identity(man, folds, fold))


def data_identity(manifest: dict, folds: dict, fold: int) -> dict:
    """What a run was trained and evaluated on: dataset, size, the prepared arrays' checksums and a
    checksum of the fold's split. Two runs with equal identities saw the same pixels and labels."""
    split = json.dumps(folds["folds"][fold], sort_keys=True).encode()
    return {"dataset": manifest["dataset"], "height": manifest["height"], "width": manifest["width"],
            "arrays_sha256": manifest["arrays_sha256"], "fold": fold,
            "fold_sha256": hashlib.sha256(split).hexdigest()}


class BatchSampler:
    """Epoch-wise shuffled batches of indices, drop-last, drawn from its own seeded generator."""

    def __init__(self, num_items: int, batch_size: int, seed: int):
        if num_items < batch_size:
            raise UserError(f"train.batch_size={batch_size} exceeds the {num_items} training images of the fold")
        self.num_items, self.batch_size = num_items, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(num_items, generator=self.generator)
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.num_items:
            self.order = torch.randperm(self.num_items, generator=self.generator)
            self.position = 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]
