"""Resumable checkpoints: written atomically, holding everything a bit-exact resume needs.

A checkpoint is written to a temporary file in the run directory and renamed into place, so an
interrupted write never replaces the last good checkpoint. A run's periodic checkpoint holds the
model, distillation adapters, optimizer, scheduler, grad scaler, every RNG state (torch CPU/CUDA,
numpy, random, the data generator), the sampler position, the iteration, the loss history and the
run spec; its final one, the weights, spec and history only (engine/train.py: `save`).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from segkd.errors import UserError


def capture_rng() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random; data order has its own generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files that an interrupted `save_atomic` left in `directory` (a killed
    process cannot clean up after itself). Call it only where no other process writes: a run
    directory belongs to one job at a time."""
    stale = sorted(Path(directory).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or foreign file
        raise UserError(f"checkpoint {path} is unreadable: {err}") from err


RUN_KEYS = ("spec", "model", "num_classes")  # what evaluating or distilling from a run needs


def load_run_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `segkd train`, refused in one line when it is anything else.

    The likely mix-up is a file of pretrained weights (a bare state dict), which has no run spec to
    say what model, data and fold it belongs to; such files are read through `models.pretrained`.
    """
    ckpt = load(path)
    if not isinstance(ckpt, dict) or "spec" not in ckpt:
        raise UserError(f"{path}: not a segkd run checkpoint (it has no run spec); pretrained weights "
                        "go in params models.pretrained")
    absent = [key for key in RUN_KEYS if key not in ckpt]
    if absent:
        raise UserError(f"{path}: incomplete segkd run checkpoint (no {', '.join(absent)})")
    return ckpt


def _looks_like(state: dict) -> str | None:
    """The SegFormer variant whose encoder widths and depths the weights have, if any."""
    from segkd.models.segformer import SIZES

    blocks: dict[int, set[int]] = {}
    for key in state:
        match = re.match(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    depths = tuple(len(blocks.get(s, ())) for s in range(4))
    norms = [state.get(f"encoder.stages.{s}.norm.weight") for s in range(4)]
    widths = tuple(n.shape[0] if isinstance(n, torch.Tensor) else 0 for n in norms)
    return next((name for name, v in SIZES.items() if (v.stage_dims, v.depths) == (widths, depths)), None)


def load_model_state(model: torch.nn.Module, ckpt: dict, path: str | Path) -> None:
    """Load a run checkpoint's weights into `model`, built from the model its spec names.

    Weights of another model under that spec (a hand-edited or mixed-up file) would otherwise end in
    torch's list of every mismatched key; here it is one line with counts, one example and, when the
    weights are recognisable, the model they belong to.
    """
    state = ckpt.get("model")
    name = getattr(model, "name", type(model).__name__)
    if not isinstance(state, dict):
        raise UserError(f"{path}: the checkpoint holds no model weights")
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys()
                      if tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape))
    if missing or unexpected or reshaped:
        counts = ", ".join(f"{len(keys)} {label}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys)
        if reshaped:
            key = reshaped[0]
            example = f"{key} is {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
        else:
            example = f"{(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'}"
        other = _looks_like(state)
        guess = f"; they look like {other}'s" if other and other != name else ""
        raise UserError(f"{path}: the weights do not fit {name}, the model its run spec names "
                        f"(keys: {counts}; e.g. {example}){guess}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # e.g. a tensor that is not a tensor; torch's first line says which
        raise UserError(f"{path}: the weights do not load into {name}: {str(err).splitlines()[0]}") from None
