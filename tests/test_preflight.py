"""Preflight: every file a study names is checked before any job, one line per problem (the dataset
root and its layout, each pretrained file and whether it loads into its model), and a file that
loaded is not loaded again until it changes."""

import copy
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

import segkd.models.weights as weights
from segkd.config import Study, validate
from segkd.models import create_model, to_nvlabs
from segkd.preflight import CACHE_FILE, check_study

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def study(dataset=None, pretrained=None, teachers=("segformer_b2",)) -> Study:
    params = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    if dataset is not None:
        params["dataset"] = dataset
    params["models"]["teachers"] = list(teachers)
    params["models"]["pretrained"] = pretrained or {}
    return Study(validate(copy.deepcopy(params)))


def camvid(root) -> dict:
    return {"name": "camvid", "root": str(root), "height": 36, "width": 48}


@pytest.fixture(scope="module")
def mit_b0(tmp_path_factory) -> Path:
    """An ImageNet MiT-B0 backbone as NVlabs ships it (mit_b0.pth: flat names, a 1000-class head)."""
    path = tmp_path_factory.mktemp("pretrained") / "mit_b0.pth"
    mit = {k[len("backbone."):]: v for k, v in to_nvlabs(create_model("segformer_b0").state_dict()).items()
           if k.startswith("backbone.")}
    torch.save(mit | {"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}, path)
    return path


@pytest.fixture
def loads(monkeypatch) -> list:
    """The checkpoints preflight actually loads (the real loader, counted)."""
    calls, real = [], weights.load_pretrained

    def counted(model, path):
        calls.append(Path(path).name)
        return real(model, path)

    monkeypatch.setattr(weights, "load_pretrained", counted)
    return calls


def test_a_synthetic_study_without_pretrained_files_has_nothing_to_check(tmp_path):
    assert check_study(study(), tmp_path / "cache") == []


def test_missing_camvid_root(tmp_path):
    assert check_study(study(camvid(tmp_path / "nowhere")), tmp_path / "cache") == [
        f"dataset.root: CamVid folder not found: {tmp_path / 'nowhere'}"]


def test_camvid_root_without_the_layout(tmp_path):
    root = tmp_path / "camvid"
    (root / "images").mkdir(parents=True)
    (root / "images" / "0001TP_006690.png").write_bytes(b"")
    [problem] = check_study(study(camvid(root)), tmp_path / "cache")
    assert problem.startswith(f"dataset.root: {root}: no CamVid layout found: expected train/ + trainannot/")

    (root / "train").mkdir()
    (root / "trainannot").mkdir()
    (root / "train" / "0001TP_006690.jpg").write_bytes(b"")
    [problem] = check_study(study(camvid(root)), tmp_path / "cache")
    assert problem.startswith("dataset.root: ") and "0001TP_006690.jpg: image has no label" in problem


def test_missing_pretrained_file(tmp_path):
    problems = check_study(study(pretrained={"segformer_b2": str(tmp_path / "mit_b2.pth")}), tmp_path / "cache")
    assert problems == [f"models.pretrained.segformer_b2: file not found: {tmp_path / 'mit_b2.pth'}"]


def test_pretrained_file_of_another_model_names_model_and_file(tmp_path, loads):
    path = tmp_path / "b0.pt"
    torch.save(create_model("segformer_b0").state_dict(), path)
    s = study(pretrained={"segformer_b2": str(path)})
    [problem] = check_study(s, tmp_path / "cache")
    assert problem.startswith(f"models.pretrained.segformer_b2: {path} (segkd) does not fit segformer_b2: missing: ")
    assert "shape mismatch" in problem and "\n" not in problem and len(problem) < 3000
    assert check_study(s, tmp_path / "cache") == [problem] and loads == ["b0.pt", "b0.pt"]  # a problem is not cached


def test_unreadable_pretrained_file(tmp_path):
    (tmp_path / "mit_b0.pth").write_bytes(b"<html>404 Not Found</html>")
    [problem] = check_study(study(pretrained={"segformer_b0": str(tmp_path / "mit_b0.pth")}), tmp_path / "cache")
    assert problem.startswith(f"models.pretrained.segformer_b0: cannot read checkpoint {tmp_path / 'mit_b0.pth'}")
    assert "\n" not in problem  # torch's message runs over several paragraphs


def test_a_good_file_loads_once_then_again_only_when_it_changes(tmp_path, mit_b0, loads):
    s = study(pretrained={"segformer_b0": str(mit_b0)})
    cache = tmp_path / "cache"
    assert check_study(s, cache) == [] and loads == ["mit_b0.pth"]
    assert (cache / CACHE_FILE).is_file()
    assert check_study(s, cache) == [] and loads == ["mit_b0.pth"]  # from the cache

    stat = mit_b0.stat()
    os.utime(mit_b0, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # e.g. a new download
    try:
        assert check_study(s, cache) == [] and loads == ["mit_b0.pth"] * 2
        # the same file under another model is another check (and here a problem)
        other = study(pretrained={"segformer_b0": str(mit_b0), "segformer_b2": str(mit_b0)})
        problems = check_study(other, cache)
        assert [p.split(":")[0] for p in problems] == ["models.pretrained.segformer_b2"]
        assert loads == ["mit_b0.pth"] * 3
    finally:
        os.utime(mit_b0, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_cache_that_cannot_be_written_or_read_is_no_error(tmp_path, mit_b0, loads):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    s = study(pretrained={"segformer_b0": str(mit_b0)})
    assert check_study(s, blocked / "cache") == [] and loads == ["mit_b0.pth"]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / CACHE_FILE).write_text("{truncated")
    assert check_study(s, tmp_path / "cache") == [] and loads == ["mit_b0.pth"] * 2
    assert check_study(s, tmp_path / "cache") == [] and loads == ["mit_b0.pth"] * 2


def test_the_camvid_study_without_its_files_lists_every_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "studies" / "camvid.yaml").read_text())
    assert check_study(Study(validate(params))) == [
        "dataset.root: CamVid folder not found: data/raw/camvid",
        "models.pretrained.segformer_b0: file not found: data/pretrained/mit_b0.pth",
        "models.pretrained.segformer_b2: file not found: data/pretrained/mit_b2.pth",
        "models.pretrained.segformer_b4: file not found: data/pretrained/mit_b4.pth",
    ]


@pytest.mark.camvid
def test_the_real_camvid_passes_quickly(camvid_root, tmp_path):
    s = study(camvid(camvid_root))
    start = time.perf_counter()
    assert check_study(s, tmp_path / "cache") == []
    assert time.perf_counter() - start < 2.0  # file names only: no image is decoded
