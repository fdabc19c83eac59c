"""Distillation losses by name, and the weighted set of terms a student run trains with.

A method in params.yaml is a set of terms, ``term -> {loss: <registered name, default the term>,
weight: <float>, ...loss options}``. `build_distillation` turns it into one `Distillation`
module; the training loop only sums and logs what it returns, so it never knows which losses
exist. Loss modules register themselves with `@register("name")` (torchdistill's pattern).

Every loss reads *taps*, the fields of the models' ``SegOutput`` (``logits``, ``stages``,
``decoder``), and is checked against the models' ``feature_dims`` before training starts, so a
tap a model does not produce, or channel counts that cannot match, fail as a `UserError` that
names the term (e.g. ``methods.freq.freq: unknown option 'ratoi'``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from segkd.errors import UserError
from segkd.terms import loss_of

#: loss name -> loss class (a `DistillLoss` subclass); filled by `register`.
LOSSES: dict[str, type["DistillLoss"]] = {}

#: SegOutput fields a loss may tap.
TAPS = frozenset({"logits", "stages", "decoder"})

#: Term keys that belong to the term, not to the loss.
TERM_KEYS = frozenset({"loss", "weight"})


def register(name: str):
    """Class decorator: make a loss buildable from params under `name`."""

    def add(cls: type[DistillLoss]) -> type[DistillLoss]:
        if name in LOSSES:
            raise ValueError(f"distillation loss {name!r} is registered twice")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return add


class DistillLoss(nn.Module):
    """A distillation loss: ``forward(student, teacher, labels) -> unweighted float32 scalar``.

    Subclasses declare `taps` (SegOutput fields read), `default_weight` and `defaults` (their
    options and default values; an option's type is its default's type), and take the options
    as keyword arguments after ``student_dims, teacher_dims``. Bad option values raise
    ValueError in ``__init__``; `from_options` reports them as a UserError naming the term.
    Teacher tensors may be inference tensors: a loss never saves them for backward.
    """

    name: ClassVar[str] = ""
    taps: frozenset[str] = frozenset()
    default_weight: ClassVar[float] = 1.0
    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_options(cls, options: dict, student_dims: dict, teacher_dims: dict, *,
                     where: str = "distillation") -> "DistillLoss":
        """Build from a term's options (`loss` and `weight` are ignored here; `where` prefixes errors)."""
        opts = parse_options(cls, options, where)
        try:
            return cls(student_dims, teacher_dims, **opts)
        except ValueError as err:
            raise UserError(f"{where}: {err}") from err

    def check_dims(self, student_dims: dict, teacher_dims: dict) -> None:
        """Raise ValueError if the models cannot provide this loss's taps with compatible shapes."""
        for tap in sorted(self.taps):
            for role, dims in (("student", student_dims), ("teacher", teacher_dims)):
                if dims.get(tap) in (None, [], 0):
                    raise ValueError(f"needs the {role}'s {tap!r} output, which the model does not produce "
                                     f"(feature dims: {dims})")
        if "logits" in self.taps and student_dims["logits"] != teacher_dims["logits"]:
            raise ValueError(f"student and teacher predict different class counts "
                             f"({student_dims['logits']} vs {teacher_dims['logits']})")


def parse_options(cls: type[DistillLoss], options: dict, where: str) -> dict[str, Any]:
    """The loss options of a term with defaults filled; unknown keys and wrong types -> UserError."""
    if not isinstance(options, dict):
        raise UserError(f"{where}: expected a mapping of options, got {options!r}")
    opts = dict(cls.defaults)
    for key, value in options.items():
        if key in TERM_KEYS:
            continue
        if key not in cls.defaults:
            known = ", ".join(sorted(set(cls.defaults) | TERM_KEYS))
            raise UserError(f"{where}: unknown option {key!r} for loss {cls.name!r} (known: {known})")
        opts[key] = _typed(value, cls.defaults[key], f"{where}.{key}")
    return opts


def _typed(value: Any, default: Any, key: str) -> Any:
    """`value` converted to the type of `default` (int -> float allowed, bool never a number)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = type(default)(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{key}: expected a {type(default).__name__}, got {value!r}")
    return value


def _weight(options: dict, cls: type[DistillLoss], where: str) -> float:
    weight = _typed(options.get("weight", cls.default_weight), 1.0, f"{where}.weight")
    if weight < 0:
        raise UserError(f"{where}.weight: must be >= 0, got {weight}")
    return weight


class Distillation(nn.Module):
    """The distillation terms of one student run: weighted losses, one per term name.

    Holds the terms' own parameters (fitnet/freq 1x1 adapters): they train with the student
    (give ``distillation.parameters()`` to the optimiser) but are not part of the student.
    """

    def __init__(self, terms: dict[str, DistillLoss], weights: dict[str, float],
                 where: dict[str, str] | None = None):
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError("every term needs a weight")
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.where = {name: (where or {}).get(name, name) for name in terms}

    @property
    def taps(self) -> set[str]:
        """SegOutput fields the terms read (both from the student and the teacher)."""
        return set().union(*(loss.taps for loss in self.terms.values()))

    def check_taps(self, student_dims: dict, teacher_dims: dict) -> None:
        """UserError naming the term if a model lacks a tap or its shapes do not fit."""
        for name, loss in self.terms.items():
            try:
                loss.check_dims(student_dims, teacher_dims)
            except ValueError as err:
                raise UserError(f"{self.where[name]}: {err}") from err

    def forward(self, student, teacher, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Weighted float32 loss of each term, by term name (the caller sums and logs them)."""
        return {name: self.weights[name] * loss(student, teacher, labels).float()
                for name, loss in self.terms.items()}


def check_same_shape(student: tuple, teacher: tuple, what: str) -> None:
    """ValueError unless the student's map (after its adapter, if any) has the teacher's shape."""
    if tuple(student) != tuple(teacher):
        raise ValueError(f"{what}: student {tuple(student)} and teacher {tuple(teacher)} differ")


def build_distillation(terms: dict[str, dict], student_dims: dict, teacher_dims: dict, *,
                       where: str = "methods") -> Distillation:
    """A `Distillation` from a method's terms (``{term: {loss?, weight, ...options}}``).

    `student_dims`/`teacher_dims` are the models' ``feature_dims``; `where` prefixes error keys
    (pass ``f"methods.{method}"``). Every term is checked before anything trains.
    """
    losses, weights, keys = {}, {}, {}
    for term, options in terms.items():
        key = f"{where}.{term}"
        if not isinstance(options, dict):
            raise UserError(f"{key}: expected a mapping of options, got {options!r}")
        loss_name = loss_of(term, options)
        if loss_name not in LOSSES:
            raise UserError(f"{key}: unknown loss {loss_name!r}; known: {', '.join(sorted(LOSSES))}")
        cls = LOSSES[loss_name]
        weights[term] = _weight(options, cls, key)
        losses[term] = cls.from_options(options, student_dims, teacher_dims, where=key)
        keys[term] = key
    distillation = Distillation(losses, weights, keys)
    distillation.check_taps(student_dims, teacher_dims)
    return distillation


def check_terms(terms: dict[str, dict], where: str = "methods") -> None:
    """Validate term options without models (unknown options, types, values): for params checks.

    Builds each loss against stand-in dims of matching shapes, so only the options are judged.
    """
    dims = {"logits": 1, "stages": [1, 1, 1, 1], "decoder": 1}
    build_distillation(terms, dims, dims, where=where)
