"""Study params: the shipped studies validate, defaults are filled, bad keys are named."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segkd.config import ConfigError, Study, load_study, validate

REPO = Path(__file__).resolve().parents[1]
STUDIES = [REPO / "params.yaml", *sorted((REPO / "studies").glob("*.yaml"))]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    study = load_study(path)
    assert study.seeds and study.teachers and study.folds


def test_defaults_are_filled_and_schema_is_shared_with_snakemake():
    raw = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    params = validate(raw)
    assert params["train"]["head_lr_mult"] == 10.0 and params["train"]["augment"]["flip"] is True
    assert params["folds"]["k"] == 2 and params["teacher_seed"] == 0
    link = REPO / "workflow" / "schemas" / "params.schema.yaml"
    assert link.resolve() == (REPO / "src" / "segkd" / "params.schema.yaml").resolve()


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["train"].update(lr=-1), r"train\.lr"),
    (lambda p: p.update(seeds=[]), r"seeds"),
    (lambda p: p.update(colour="red"), r"colour"),
    (lambda p: p["train"].update(batch_size="8"), r"train\.batch_size"),
    (lambda p: p["methods"].update(x={"nope": {"weight": 1}}), r"methods\.x\.nope: unknown loss 'nope'"),
    (lambda p: p["methods"].update(x={"freq": {"weight": 1, "ratoi": 0.2}}), r"methods\.x\.freq: unknown option 'ratoi'"),
    (lambda p: p["dataset"].update(name="cityscapes"), r"dataset\.name"),
    (lambda p: p["folds"].update(strategy="random"), r"folds\.strategy"),
    (lambda p: p["methods"].update(baseline={"kd": {"weight": 1}}), r"methods"),
])
def test_bad_params_name_the_key(mutate, message):
    params = copy.deepcopy(yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text()))
    mutate(params)
    with pytest.raises(ConfigError, match=message):
        validate(params)


def test_run_specs_carry_exactly_what_a_job_needs():
    study = Study(validate(yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())))
    teacher = study.run_spec("teacher", teacher="segformer_b2", fold=1)
    assert teacher["model"] == "segformer_b2" and teacher["terms"] == {} and teacher["seed"] == study.params["teacher_seed"]
    student = study.run_spec("student", teacher="segformer_b2", method="kd", seed=1, fold=0)
    assert student["model"] == "segformer_b0" and student["terms"] == study.methods["kd"]
    assert student["teacher_checkpoint"] == "runs/teachers/segformer_b2/fold0/checkpoint.pt"
    baseline = study.run_spec("student", method="baseline", seed=1, fold=0)
    assert baseline["teacher"] is None and baseline["terms"] == {}
    with pytest.raises(ConfigError, match="no method named 'nope'"):
        study.run_spec("student", teacher="segformer_b2", method="nope", seed=0, fold=0)


def test_compile_is_in_a_run_spec_only_when_on(repo):
    from segkd.config import Study, load_study, validate_spec

    study = load_study(repo / "studies" / "smoke.yaml")
    eager = study.run_spec("student", method="baseline", seed=0, fold=0)
    assert "compile" not in eager["train"]  # the specs of eager runs are what they were before the key
    params = study.params | {"train": {**study.params["train"], "compile": True}}
    compiled = Study(params).run_spec("student", method="baseline", seed=0, fold=0)
    assert compiled["train"]["compile"] is True and validate_spec(compiled) == compiled
    assert {k: v for k, v in compiled["train"].items() if k != "compile"} == eager["train"]


def test_checked_terms_are_not_built_again_until_they_or_the_code_change(tmp_path, monkeypatch):
    """The workflow's memo (check_method_terms): a study checked once is re-planned without building
    a loss; a changed option, new distillation code or another torch is checked again, and a bad
    value is still named though the memo holds the good study."""
    from segkd import config, fingerprint
    from segkd.distill import registry

    built = []
    monkeypatch.setattr(registry, "check_terms", lambda terms, where: built.append(where) or
                        registry.build_distillation(terms, *[{"logits": 1, "stages": [1] * 4, "decoder": 1}] * 2,
                                                    where=where))
    params = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    memo = tmp_path / "checked-terms"
    validate(params, memo=memo)
    first = sorted(built)
    assert first and len(list(memo.iterdir())) == len(first)
    validate(params, memo=memo)
    assert sorted(built) == first  # nothing built again
    changed = copy.deepcopy(params)
    changed["methods"]["kd"]["kd"]["weight"] = 0.5
    validate(changed, memo=memo)
    assert built[len(first):] == ["methods.kd"]
    changed["methods"]["kd"]["kd"]["temperature"] = "hot"
    with pytest.raises(ConfigError, match=r"methods\.kd\.kd"):
        validate(changed, memo=memo)
    for module, name, value in ((fingerprint, "fingerprint", "new distillation code"), (config, "version", "9.9")):
        monkeypatch.setattr(module, name, lambda *args, value=value, **kwargs: value)
        del built[:]
        validate(params, memo=memo)
        assert sorted(built) == first


def test_a_checked_study_is_re_planned_without_importing_torch(tmp_path):
    code = ("import sys, yaml; from segkd.config import validate; "
            f"validate(yaml.safe_load(open({str(REPO / 'studies' / 'smoke.yaml')!r})), memo={str(tmp_path)!r}); "
            "print('torch' in sys.modules)")
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                     .stdout.strip() for _ in range(2))
    assert (first, second) == ("True", "False")
