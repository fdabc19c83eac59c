"""Method grids: a method whose term options hold lists runs once per combination, as named variants.

In params.yaml a list where a term option (or its weight) takes one value declares a grid axis::

    methods:
      freq:
        freq: {weight: 0.1, ratio: [0.1, 0.2], high: [kd, none]}

expands to four variants, each an ordinary method run over all seeds and folds:
``freq-high=kd-ratio=0.1``, ``freq-high=kd-ratio=0.2``, ``freq-high=none-ratio=0.1`` and
``freq-high=none-ratio=0.2``. A name is the method, then ``-option=value`` per swept option in
alphabetical order (``-term.option=value`` when the method has several terms): not the order written,
which JSON with sorted keys or a rewritten params.yaml would not keep. It depends on the values,
never on their position in a list, so growing an axis adds names and leaves the existing variants
(their run specs, hence their jobs) untouched; a new axis renames them, unless it was declared from
the start as a one-value list. A method without lists is its own single variant.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from segkd.errors import UserError

#: What a variant name may hold: it becomes a directory name and a Snakemake wildcard value.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.=-]*"
NAME = re.compile(rf"^{NAME_PATTERN}$")


@dataclass(frozen=True)
class Variant:
    """One runnable method: `terms` holds single values only; `swept` maps 'term.option' -> value."""

    name: str
    method: str
    terms: dict
    swept: dict = field(default_factory=dict)


def format_value(value) -> str:
    """Short, stable text of an option value: 0.1 -> '0.1', 2.0 and 2 -> '2', 1e-05 -> '1e-05'.

    Floats keep every digit that tells them apart (repr), so distinct values never share a name.
    """
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return repr(value).replace("e+", "e")
    return str(value)


def expand_method(method: str, terms: dict) -> list[Variant]:
    """The variants of one method: axes in name order (the first varies slowest), values as written."""
    axes = sorted((term, option, values) for term, options in terms.items()
                  for option, values in options.items() if isinstance(values, list))
    if not axes:
        return [Variant(method, method, terms)]
    for term, option, values in axes:
        key = f"methods.{method}.{term}.{option}"
        if not values:
            raise UserError(f"{key}: an empty grid axis (give at least one value)")
        texts = [format_value(v) for v in values]
        if len(set(texts)) != len(texts):
            raise UserError(f"{key}: repeated values in the grid {values}")
    several_terms = len(terms) > 1
    variants = []
    for combo in itertools.product(*(values for _, _, values in axes)):
        chosen = {term: dict(options) for term, options in terms.items()}
        swept, parts = {}, [method]
        for (term, option, _), value in zip(axes, combo):
            chosen[term][option] = value
            swept[f"{term}.{option}"] = value
            label = f"{term}.{option}" if several_terms else option
            parts.append(f"{label}={format_value(value)}")
        name = "-".join(parts)
        if not NAME.match(name):
            raise UserError(f"methods.{method}: variant name {name!r} has characters not allowed in a path "
                            "(letters, digits, _ . = - only)")
        variants.append(Variant(name, method, chosen, swept))
    return variants


def expand(methods: dict) -> dict[str, Variant]:
    """Every method's variants by name, in study order; a name given twice is an error naming both methods."""
    out: dict[str, Variant] = {}
    for method, terms in methods.items():
        for variant in expand_method(method, terms):
            if variant.name in out:
                raise UserError(f"methods.{method}: variant {variant.name!r} clashes with a variant of "
                                f"methods.{out[variant.name].method}")
            out[variant.name] = variant
    return out
