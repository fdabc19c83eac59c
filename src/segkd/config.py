"""The study definition (params.yaml): loaded, validated against the schema, defaults filled.

One source of truth: `src/segkd/params.schema.yaml`, shipped inside the package so an installed segkd
validates without the repository; `workflow/schemas/params.schema.yaml` links to it for Snakemake. Errors name the
offending key, e.g. ``train.lr: -1 is less than or equal to the minimum of 0``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from segkd.errors import UserError
from segkd.sweep import Variant, expand

STUDENT_ROLE, TEACHER_ROLE = "student", "teacher"
BASELINE = "baseline"
# train.share_teacher: cohort training (engine/train.py). Not part of any run spec: a student trained in
# a cohort is bitwise the run trained alone (tests/test_cohort.py), so the key decides how jobs are
# grouped, never what a run computes.
SHARE_TEACHER = "share_teacher"
# train.compile: torch.compile of student and teacher. Part of a run spec when true (compiled kernels
# round differently from eager ones); left out when false, so the specs of eager runs are what they were.
COMPILE = "compile"


class ConfigError(UserError):
    """An invalid study definition; the message names the key."""


def _schema() -> dict:
    return yaml.safe_load(resources.files("segkd").joinpath("params.schema.yaml").read_text())


def _with_defaults(validator_cls):
    """A jsonschema validator that also fills `default` values in place (as Snakemake's validate does)."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def validate(raw: dict, *, check_methods: bool = True, memo: Path | None = None) -> dict:
    """Validate a params mapping, fill defaults, and check what the schema cannot express.

    `check_methods` also checks every method's loss options (check_method_terms, with `memo`); a
    reader of the study that runs nothing (`segkd status`, `segkd aggregate`) may skip it: the check
    changes no value.
    """
    if not isinstance(raw, dict):
        raise ConfigError("params: expected a mapping at the top level")
    params = copy.deepcopy(raw)
    validator = _with_defaults(jsonschema.Draft202012Validator)(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{_key(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError("invalid study parameters:\n  " + "\n  ".join(lines))
    if params["dataset"]["name"] == "camvid" and not params["dataset"].get("root"):
        raise ConfigError("dataset.root: required for the camvid dataset (folder in the SegNet layout)")
    if check_methods:
        check_method_terms(params["methods"], memo)
    return params


def check_method_terms(methods: dict, memo: Path | None = None) -> None:
    """Every variant of every method (each value of a grid) built as its losses, so that an unknown
    loss or option, or a bad value anywhere in a list, is named before any job runs.

    Building the losses imports torch, seconds of every `snakemake -n`. With `memo` (a folder), a
    variant once found good is not built again while its terms, the distillation code
    (fingerprint.DISTILL_CODE) and torch's version are unchanged: the folder holds one empty file per
    good combination, named by its SHA-256. A failing check writes nothing.
    """
    variants = list(expand(methods).values())
    if memo is not None:
        from segkd import fingerprint

        code = {"distill": fingerprint.fingerprint(fingerprint.DISTILL_CODE), "torch": version("torch")}
        keys = [hashlib.sha256(json.dumps({"terms": v.terms, **code}, sort_keys=True).encode()).hexdigest()
                for v in variants]
        variants = [v for v, key in zip(variants, keys) if not (Path(memo) / key).is_file()]
    if not variants:
        return
    from segkd.distill.registry import check_terms

    try:
        for variant in variants:
            check_terms(variant.terms, where=f"methods.{variant.method}")
    except UserError as err:
        raise ConfigError(str(err)) from None
    if memo is not None:
        Path(memo).mkdir(parents=True, exist_ok=True)
        for key in keys:
            (Path(memo) / key).touch()


@functools.lru_cache(maxsize=None)  # read-only once built; a workflow checks one spec per run
def _spec_schema() -> dict:
    """The JSON schema of a run spec (what `Study.run_spec` returns), cut from the study schema.

    The sections a spec copies from the study (train, the dataset's name and size, tracking) reuse the
    study's own definitions, so the two schemas cannot drift apart: a spec that a hand edit or another
    segkd version wrote fails here with the key named, not as a KeyError halfway through a job.
    """
    study = _schema()
    p = study["properties"]
    train = copy.deepcopy(p["train"])  # a spec's iterations are the role's own, at the top level
    iterations = train["properties"].pop("iterations")["properties"]["student"]
    train["properties"].pop(SHARE_TEACHER)  # how jobs are grouped, not what a run computes
    train["properties"][COMPILE].pop("default")  # absent from the specs of eager runs (see COMPILE)
    train["required"] = [k for k in train["required"] if k != "iterations"]
    dataset = p["dataset"]
    model = p["models"]["properties"]["teachers"]["items"]  # a SegFormer name, student or teacher
    path = {"type": "string", "minLength": 1}
    terms = copy.deepcopy(p["methods"]["additionalProperties"])  # one method's terms
    terms.pop("minProperties")  # teachers and the baseline have none
    properties = {
        "study": p["study"],
        "role": {"enum": [TEACHER_ROLE, STUDENT_ROLE]},
        "model": model,
        "teacher": {**model, "type": ["string", "null"]},  # a pattern applies to strings only
        "teacher_checkpoint": {**path, "type": ["string", "null"]},
        "method": {"type": ["string", "null"]},
        "terms": terms,
        "seed": p["teacher_seed"],
        "fold": {"type": "integer", "minimum": 0},
        "dataset": {"type": "object", "additionalProperties": False, "required": dataset["required"],
                    "properties": {k: dataset["properties"][k] for k in dataset["required"]}},
        "prepared": path,
        "folds_file": path,
        "pretrained": {**p["models"]["properties"]["pretrained"]["additionalProperties"],
                       "type": ["string", "null"]},
        "iterations": iterations,
        "train": train,
        "tracking_uri": p["tracking"]["properties"]["uri"],
        "tracking": {"type": "object", "additionalProperties": False,
                     "properties": {"enabled": p["tracking"]["properties"]["enabled"]}},
    }
    return {"$schema": study["$schema"], "type": "object", "additionalProperties": False,
            "required": list(properties), "properties": properties}


def validate_spec(spec: Any, source: str = "run spec") -> dict:
    """Check a run spec before a job uses it; returns a copy with the train defaults filled.

    Errors are one line, each key named (``--spec: train.batch_size: 'eight' is not of type
    'integer'``), `source` first; the distillation terms are checked like a study's methods.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(spec).__name__}")
    spec = copy.deepcopy(spec)
    validator = _with_defaults(jsonschema.Draft202012Validator)(_spec_schema())
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(f"{_key(e.absolute_path)}: {e.message}" for e in errors))
    from segkd.distill.registry import check_terms

    try:
        check_terms(spec["terms"], where="terms")
    except UserError as err:
        raise ConfigError(f"{source}: {err}") from None
    return spec


def load_study(path: str | Path, *, check_methods: bool = True) -> "Study":
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return Study(validate(raw, check_methods=check_methods), source=path)


@dataclass(frozen=True)
class Study:
    """A validated study; `params` is the plain dict (defaults filled), the rest are views on it."""

    params: dict
    source: Path | None = None

    @property
    def name(self) -> str:
        return self.params["study"]

    @property
    def dataset(self) -> dict:
        return self.params["dataset"]

    @property
    def student(self) -> str:
        return self.params["models"]["student"]

    @property
    def teachers(self) -> list[str]:
        return list(self.params["models"]["teachers"])

    @cached_property
    def variants(self) -> dict[str, Variant]:
        """Runnable methods by name, grids expanded (see segkd.sweep); expanded once per study."""
        return expand(self.params["methods"])

    @property
    def methods(self) -> dict[str, dict]:
        """Runnable method name -> its terms (single values; a grid's variants appear one by one)."""
        return {name: v.terms for name, v in self.variants.items()}

    @property
    def seeds(self) -> list[int]:
        return list(self.params["seeds"])

    @property
    def folds(self) -> list[int]:
        f = self.params["folds"]
        return [0] if f["strategy"] == "official" else list(range(f["k"]))

    def run_spec(self, role: str, *, fold: int, teacher: str | None = None, method: str | None = None,
                 seed: int | None = None) -> dict[str, Any]:
        """Everything one training job needs, as plain JSON (what Snakemake passes and tracks)."""
        from segkd import layout

        ds = self.dataset
        train = {k: v for k, v in self.params["train"].items()
                 if k not in ("iterations", SHARE_TEACHER) and not (k == COMPILE and not v)}
        if role == TEACHER_ROLE:
            if teacher not in self.teachers:
                raise ConfigError(f"models.teachers: {teacher!r} is not a teacher of this study")
            model, seed, method, terms = teacher, self.params["teacher_seed"], None, {}
            iterations = self.params["train"]["iterations"]["teacher"]
            teacher_ckpt = None
        elif role == STUDENT_ROLE:
            model = self.student
            iterations = self.params["train"]["iterations"]["student"]
            if method == BASELINE:
                teacher, terms, teacher_ckpt = None, {}, None
            else:
                if method not in self.methods:
                    raise ConfigError(f"methods: no method named {method!r}")
                if teacher not in self.teachers:
                    raise ConfigError(f"models.teachers: {teacher!r} is not a teacher of this study")
                terms = self.methods[method]
                teacher_ckpt = str(layout.teacher_dir(teacher, fold) / layout.CHECKPOINT)
            if seed is None:
                raise ConfigError("seed: a student run needs a seed")
        else:
            raise ConfigError(f"role: expected 'teacher' or 'student', got {role!r}")
        return {
            "study": self.name,
            "role": role,
            "model": model,
            "teacher": teacher,
            "teacher_checkpoint": teacher_ckpt,
            "method": method,
            "terms": terms,
            "seed": int(seed),
            "fold": int(fold),
            "dataset": {"name": ds["name"], "height": ds["height"], "width": ds["width"]},
            "prepared": str(layout.prepared_dir(ds["name"])),
            "folds_file": str(layout.folds_file(ds["name"])),
            "pretrained": self.params["models"]["pretrained"].get(model),
            "iterations": iterations,
            "train": train,
            "tracking_uri": self.params["tracking"]["uri"],
            "tracking": {"enabled": self.params["tracking"]["enabled"]},
        }


def spec_json(spec: dict) -> str:
    """Canonical JSON of a run spec (sorted keys), so equal specs compare equal as strings."""
    return json.dumps(spec, sort_keys=True)


def spec_hash(spec: dict) -> str:
    """Short content hash of a run spec (12 hex digits of the SHA-256 of its canonical JSON)."""
    return hashlib.sha256(spec_json(spec).encode()).hexdigest()[:12]


class _Absent:
    """A key one of two specs does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()
SHOWN_VALUE = 60  # characters of a differing value shown in a message


@dataclass(frozen=True)
class SpecChange:
    """One key whose value differs between a run's recorded spec and the study's."""

    key: str  # dotted, e.g. terms.kd.weight
    run: Any
    study: Any

    @staticmethod
    def shown(value: Any) -> str:
        text = "(absent)" if value is ABSENT else json.dumps(value, sort_keys=True)
        return text if len(text) <= SHOWN_VALUE else text[:SHOWN_VALUE - 3] + "..."

    def __str__(self) -> str:
        return f"{self.key}: {self.shown(self.run)} vs {self.shown(self.study)}"


def spec_changes(run_spec: Any, study_spec: Any, prefix: str = "") -> list[SpecChange]:
    """Every leaf key whose value differs between two specs (compared as canonical JSON), in key order:
    what `segkd aggregate` and `segkd status` say of a run trained under another spec than the study's."""
    if isinstance(run_spec, dict) and isinstance(study_spec, dict):
        changes = []
        for key in sorted(set(run_spec) | set(study_spec), key=str):
            changes += spec_changes(run_spec.get(key, ABSENT), study_spec.get(key, ABSENT), f"{prefix}{key}.")
        return changes
    if run_spec is not ABSENT and study_spec is not ABSENT and spec_json(run_spec) == spec_json(study_spec):
        return []
    return [SpecChange(prefix.rstrip(".") or "<spec>", run_spec, study_spec)]
