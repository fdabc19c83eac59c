"""Check every file a study names before any job runs: the dataset root and the pretrained weights.

Without this, a study whose CamVid copy is elsewhere, or whose `models.pretrained` file is missing or
belongs to another model, is planned in full, runs prepare and split, and only then fails in every
training job. `check_study` returns one line per problem, each naming the key, so the workflow can
stop with all of them at once and `segkd status` can show them first.

What is checked:
- `dataset.root` (camvid only): the folder exists and `segkd.data.camvid.find_items` finds a layout
  in it, pairing every image with a label (file names only; prepare decodes the images).
- `models.pretrained.<model>` for the student and each teacher: the file (or Hugging Face directory)
  exists and loads into that model, exactly as training will load it.

Loading a large checkpoint into a freshly built model takes seconds, and the Snakefile runs this at
every invocation, so a successful load is remembered in `<cache_dir>/preflight.json`, keyed by the
model and the resolved path with each file's size and mtime: a changed file is checked again. Only
successes are cached: a problem is checked afresh each time, so that a fixed file clears it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from segkd import layout
from segkd.config import Study
from segkd.errors import UserError
from segkd.jsonfiles import write_json

CACHE_FILE = "preflight.json"
CACHE_VERSION = 1


def check_study(study: Study, cache_dir: Path = layout.WORKFLOW_MEMO, *, prepared: bool = False) -> list[str]:
    """Every problem with the files the study names, one line each (empty: nothing to fix).

    `prepared`: the study's prepared data already exists (e.g. pulled with DVC), so the raw dataset is
    not needed unless the data code changes, and its root is not checked.
    """
    problems = [] if prepared else check_dataset(study.dataset)
    cache = LoadCache(Path(cache_dir) / CACHE_FILE)
    pretrained = study.params["models"]["pretrained"]
    for model in dict.fromkeys([study.student, *study.teachers]):  # in study order, each once
        if pretrained.get(model):
            problems += check_pretrained(model, pretrained[model], cache)
    cache.save()
    return problems


def check_dataset(dataset: dict) -> list[str]:
    """The dataset root and its layout; the synthetic dataset has no files to check."""
    if dataset["name"] != "camvid":
        return []
    from segkd.data.camvid import find_items

    try:
        find_items(dataset["root"])
    except UserError as err:
        message = one_line(err)
        return [message if message.startswith("dataset.root") else f"dataset.root: {message}"]
    return []


def check_pretrained(model: str, path: str | Path, cache: LoadCache | None = None) -> list[str]:
    """The pretrained file of `model`: it exists and loads into the model (unless `cache` saw it load)."""
    key, path = f"models.pretrained.{model}", Path(path)
    if not path.exists():
        return [f"{key}: file not found: {path}"]
    files = file_fingerprint(path)
    if cache is not None and cache.loaded(model, path, files):
        return []
    from segkd.classes import NUM_CLASSES
    from segkd.models import create_model
    from segkd.models.weights import load_pretrained

    try:
        with warnings.catch_warnings():  # a re-initialised classifier is expected; training says so itself
            warnings.simplefilter("ignore")
            load_pretrained(create_model(model, num_classes=NUM_CLASSES), path)
    except UserError as err:
        return [f"{key}: {one_line(err)}"]
    if cache is not None:
        cache.remember(model, path, files)
    return []


def one_line(err: Exception) -> str:
    """An error as one problem line: its first line (torch's unpickling errors append paragraphs of
    advice), or all of them joined when the first only introduces the rest."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return " ".join(lines) if lines[0].endswith(":") else lines[0]


def file_fingerprint(path: Path) -> list[list]:
    """[name, size, mtime_ns] of the file, or of each file of a Hugging Face model directory."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, st.st_size, st.st_mtime_ns] for p in files for st in [p.stat()]]


class LoadCache:
    """The checkpoints that loaded into their model, by model and resolved path, with their fingerprint.

    One entry per (model, path): a changed file replaces its entry, so the file does not grow. An
    unreadable or foreign cache file is ignored, and a cache that cannot be written is not an error:
    it only costs a reload next time.
    """

    def __init__(self, path: Path):
        self.path, self.changed = path, False
        try:
            data = json.loads(path.read_text())
            ok = isinstance(data, dict) and data.get("version") == CACHE_VERSION
            self.entries: dict = data["loaded"] if ok and isinstance(data.get("loaded"), dict) else {}
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _key(model: str, path: Path) -> str:
        return f"{model} {path.resolve()}"

    def loaded(self, model: str, path: Path, files: list[list]) -> bool:
        return self.entries.get(self._key(model, path)) == files

    def remember(self, model: str, path: Path, files: list[list]) -> None:
        self.entries[self._key(model, path)] = files
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:  # concurrent writers (SLURM jobs parse the workflow too): the last one wins, whole
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"version": CACHE_VERSION, "loaded": self.entries})
        except OSError:
            pass  # a cache that cannot be written only costs a load next time
