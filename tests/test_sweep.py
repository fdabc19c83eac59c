"""Method grids: variant names are deterministic and stable as a grid grows; bad grids name the key."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from segkd.config import ConfigError, Study, load_study, validate
from segkd.errors import UserError
from segkd.sweep import NAME, expand, format_value

REPO = Path(__file__).resolve().parents[1]


def grid(**options):
    return {"freq": {"freq": {"weight": 0.1, **options}}}


def test_names_and_order_are_deterministic():
    variants = expand(grid(ratio=[0.1, 0.2], high=["kd", "none"]))
    assert list(variants) == ["freq-high=kd-ratio=0.1", "freq-high=kd-ratio=0.2",
                              "freq-high=none-ratio=0.1", "freq-high=none-ratio=0.2"]
    v = variants["freq-high=none-ratio=0.2"]
    assert v.method == "freq" and list(v.swept.items()) == [("freq.high", "none"), ("freq.ratio", 0.2)]
    assert v.terms == {"freq": {"weight": 0.1, "ratio": 0.2, "high": "none"}}
    assert all(NAME.match(name) for name in variants)


def test_names_do_not_depend_on_key_order():
    """params go through key-sorted JSON and YAML (the aggregate rule, yaml.safe_dump): same variants."""
    written = expand(grid(ratio=[0.1, 0.2], high=["kd", "none"]))
    resorted = expand(json.loads(json.dumps(grid(ratio=[0.1, 0.2], high=["kd", "none"]), sort_keys=True)))
    assert list(written) == list(resorted) and written == resorted


def test_growing_a_grid_keeps_existing_variants():
    small = expand(grid(ratio=[0.1, 0.2], high=["kd"]))
    grown = expand(grid(ratio=[0.4, 0.1, 0.2], high=["kd", "none"]))  # new values anywhere in the lists
    assert set(small) < set(grown) and len(grown) == 6
    assert all(grown[name] == variant for name, variant in small.items())


def test_weight_and_several_terms_are_named_by_term():
    variants = expand({"mix": {"kd": {"weight": [0.01, 0.02]}, "sp": {"weight": 1.0}}})
    assert list(variants) == ["mix-kd.weight=0.01", "mix-kd.weight=0.02"]
    assert variants["mix-kd.weight=0.02"].terms == {"kd": {"weight": 0.02}, "sp": {"weight": 1.0}}


def test_a_method_without_lists_is_its_own_variant():
    methods = {"kd": {"kd": {"weight": 0.01}}, "sp": {"sp": {"weight": 1.0}}}
    variants = expand(methods)
    assert list(variants) == ["kd", "sp"]
    assert variants["kd"].method == "kd" and variants["kd"].terms == methods["kd"] and variants["kd"].swept == {}


@pytest.mark.parametrize("value, text", [(0.1, "0.1"), (2.0, "2"), (2, "2"), (1e-05, "1e-05"), (1e20, "1e20"),
                                         (1234567.5, "1234567.5"), (True, "true"), ("kd", "kd")])
def test_values_format_short_and_distinct(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("methods, message", [
    (grid(ratio=[]), r"methods\.freq\.freq\.ratio: an empty grid axis"),
    (grid(ratio=[0.1, 0.10]), r"methods\.freq\.freq\.ratio: repeated values"),
    (grid(high=["kd", "a/b"]), r"methods\.freq: variant name 'freq-high=a/b'"),
    ({"kd-weight=1": {"kd": {"weight": 1}}, "kd": {"kd": {"weight": [1, 2]}}},
     r"methods\.kd: variant 'kd-weight=1' clashes with a variant of methods\.kd-weight=1"),
])
def test_bad_grids_name_the_key(methods, message):
    with pytest.raises(UserError, match=message):
        expand(methods)


def smoke():
    return yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())


@pytest.mark.parametrize("terms, message", [
    ({"weight": []}, r"methods\.g\.kd\.weight: \[\] should be non-empty"),
    ({"weight": [0.1, 0.1]}, r"methods\.g\.kd\.weight: .* non-unique"),
    ({"weight": [0.1, "x"]}, r"methods\.g\.kd\.weight\.1: 'x' is not of type 'number'"),
    ({"weight": 0.1, "temperature": []}, r"methods\.g\.kd\.temperature: \[\] should be non-empty"),
    ({"weight": 0.1, "temperature": [1.0, 1]}, r"methods\.g\.kd\.temperature: .* non-unique"),
    ({"weight": 0.1, "temperature": [1.0, "hot"]}, r"methods\.g\.kd\.temperature: expected a float, got 'hot'"),
    ({"weight": 0.1, "temperature": [1.0, [2.0]]}, r"methods\.g\.kd\.temperature\.1: \[2\.0\] is not of type"),
])
def test_study_validation_names_the_grid_key(terms, message):
    params = smoke()
    params["methods"] = {"g": {"kd": terms}}
    with pytest.raises(ConfigError, match=message):
        validate(params)


def test_study_runs_every_variant_with_single_valued_terms():
    params = smoke()
    params["methods"]["freq"]["freq"].update(ratio=[0.1, 0.2])
    study = Study(validate(params))
    assert list(study.methods) == ["kd", "freq-ratio=0.1", "freq-ratio=0.2"]
    spec = study.run_spec("student", teacher="segformer_b2", method="freq-ratio=0.2", seed=0, fold=1)
    assert spec["method"] == "freq-ratio=0.2" and spec["terms"]["freq"]["ratio"] == 0.2
    assert spec["terms"]["freq"]["high"] == "regularize"
    with pytest.raises(ConfigError, match="no method named 'freq'"):
        study.run_spec("student", teacher="segformer_b2", method="freq", seed=0, fold=0)


def test_growing_a_grid_keeps_every_existing_run_spec():
    params = smoke()
    params["methods"]["freq"]["freq"].update(ratio=[0.1, 0.2], high=["kd", "none"])
    before = Study(validate(params))
    params["methods"]["freq"]["freq"].update(ratio=[0.1, 0.2, 0.4])
    after = Study(validate(params))
    assert len(after.methods) == len(before.methods) + 2
    for method in before.methods:
        assert (before.run_spec("student", teacher="segformer_b2", method=method, seed=1, fold=0)
                == after.run_spec("student", teacher="segformer_b2", method=method, seed=1, fold=0))


def test_freq_sweep_reuses_the_default_studys_teachers_and_baseline():
    default, sweep = load_study(REPO / "params.yaml"), load_study(REPO / "studies" / "freq_sweep.yaml")
    assert len(sweep.methods) == 9 and len(sweep.seeds) == 3
    assert {v.method for v in sweep.variants.values()} == {"freq"}
    for t in default.teachers:
        assert default.run_spec("teacher", teacher=t, fold=0) == sweep.run_spec("teacher", teacher=t, fold=0)
    assert (default.run_spec("student", method="baseline", seed=2, fold=1)
            == sweep.run_spec("student", method="baseline", seed=2, fold=1))
    unchanged = copy.deepcopy(sweep.params)
    unchanged["methods"] = default.params["methods"]
    assert unchanged == default.params  # only the methods differ
