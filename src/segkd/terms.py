"""A method's terms as params.yaml spells them, ``term -> {loss?, weight, ...options}``: which loss
each term uses. Free of torch, so that the workflow can plan a study's jobs (which variants draw a
band figure) without loading the losses themselves (segkd.distill)."""

from __future__ import annotations

#: The frequency-band loss's registered name (segkd.distill.frequency).
FREQ_LOSS = "freq"


def loss_of(term: str, options: dict) -> str:
    """The loss a method's term uses: its `loss` option, else the term's own name (``kd: {weight}``)."""
    return options.get("loss", term)


def terms_using(terms: dict[str, dict], loss: str) -> list[str]:
    """The names of a method's terms that use `loss`, in the method's order."""
    return [term for term, options in terms.items() if loss_of(term, options) == loss]


def freq_term(terms: dict) -> str | None:
    """Name of the method's first term that is a frequency-band loss, or None."""
    return next(iter(terms_using(terms, FREQ_LOSS)), None)
